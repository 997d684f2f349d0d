// fsInfo / fsType and isSubvolume on loop filesystems made here (needs root, btrfs-progs, xfsprogs).
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';

import { LoomError } from '../../src/common/errors.js';
import { createSubvolume, fsType, isSubvolume, nativeAddon } from '../../src/branching/copy.js';
import { prerequisites, loopFs, MKFS, tempDir, tmpfsMount, type FsKind } from './helpers.js';

const isRoot = process.getuid?.() === 0;

for (const kind of ['btrfs', 'xfs', 'ext4'] as FsKind[]) {
  t.test(`fsType on ${kind}`, async (t) => {
    if (!prerequisites(t, { root: true, tools: [MKFS[kind]] })) return;
    const mnt = loopFs(t, kind, kind === 'xfs' ? 320 : 256);
    t.equal(fsType(mnt), kind);
    t.equal(nativeAddon().fsInfo(mnt).type, kind);
    mkdirSync(join(mnt, 'plain'));
    t.equal(isSubvolume(join(mnt, 'plain')), false);
    if (kind === 'btrfs') {
      t.equal(isSubvolume(mnt), true, 'the top-level mount is a subvolume root');
      await createSubvolume(join(mnt, 'vol'));
      t.equal(isSubvolume(join(mnt, 'vol')), true);
      t.equal(fsType(join(mnt, 'vol')), 'btrfs');
    } else {
      await t.rejects(createSubvolume(join(mnt, 'vol')), { code: 'copy_refused', status: 400 });
    }
  });
}

t.test('fsType on tmpfs and errors', async (t) => {
  // Mounting tmpfs needs root; in CI it must run (and fails without root), elsewhere it says why not.
  if (isRoot || process.env.CI === 'true') t.equal(fsType(tmpfsMount(t, 1024)), 'tmpfs');
  else t.comment('tmpfs case skipped: needs root');
  const dir = tempDir(t);
  let err: unknown;
  try {
    fsType(join(dir, 'missing'));
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof LoomError, 'throws a LoomError');
  t.equal((err as LoomError).details?.errno, 'ENOENT');
});
