// The copy primitive on real filesystems (loop-mounted btrfs, XFS and ext4, made per test).
// Needs root and the packages btrfs-progs and xfsprogs (e2fsprogs for ext4); python3 for xattrs.
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';

import { LoomError } from '../../src/common/errors.js';
import { copyTree, createSubvolume, isSubvolume, removeTree, type CopyResult } from '../../src/branching/copy.js';
import { buildFixture, buildManyFiles, diffTrees, prerequisites, listing, loopFs, MKFS, tempDir, tmpfsMount, type FsKind } from './helpers.js';

function expectedCounts(t: Tap, r: CopyResult): void {
  // the fixture: files small, empty, mid, big, deep, sparse, hard1(+hard2), setuid, private, exec, owned/file
  t.equal(r.files, 11, 'files');
  t.equal(r.hardlinks, 1, 'hardlinks');
  t.equal(r.symlinks, 6, 'symlinks');
  t.equal(r.specials, 2, 'specials');
  t.equal(r.dirs, 8, 'dirs (root included)');
}
type Tap = Test;

/** The rejection of p (fails the test if p resolves). */
async function rejection(t: Tap, p: Promise<unknown>): Promise<LoomError> {
  try {
    await p;
  } catch (e) {
    t.ok(e instanceof LoomError, 'rejects with a LoomError');
    return e as LoomError;
  }
  t.fail('expected a rejection');
  return new LoomError(0, 'none', 'none');
}

async function cloneCase(t: Tap, kind: FsKind, opts: { subvolume?: boolean; expect: string }) {
  if (!prerequisites(t, { root: true, tools: [MKFS[kind]] })) return;
  const mnt = loopFs(t, kind);
  const outside = join(mnt, 'outside-target');
  writeFileSync(outside, 'outside\n');
  const src = join(mnt, 'src');
  if (opts.subvolume) await createSubvolume(src);
  else mkdirSync(src);
  t.equal(isSubvolume(src), !!opts.subvolume, 'isSubvolume');
  buildFixture(src, outside);
  const dest = join(mnt, 'dest');
  const r = await copyTree(src, dest);
  t.equal(r.strategy, opts.expect, `strategy ${opts.expect}`);
  if (opts.expect !== 'subvolume') expectedCounts(t, r);
  t.same(diffTrees(src, dest), [], 'dest identical to source in content and metadata');
  // sparse file stays sparse
  const sb = lstatSync(join(src, 'sparse.img')).blocks;
  const db = lstatSync(join(dest, 'sparse.img')).blocks;
  t.ok(db <= sb * 2 + 64, `sparse dest blocks ${db} close to source blocks ${sb}`);
  // the link pointing outside is a link, and the outside file is untouched
  t.ok(lstatSync(join(dest, 'link-out')).isSymbolicLink(), 'outside link copied as link');
  // copying the copy works too, and removal deletes it (a snapshot subvolume included)
  await removeTree(dest);
  t.notOk(existsSync(dest), 'removeTree deleted the copy');
  t.same(listing(mnt).sort(), ['outside-target', 'src', ...(kind === 'ext4' ? ['lost+found'] : [])].sort(), 'nothing else left');
}

t.test('btrfs: a subvolume source is snapshotted', (t) => cloneCase(t, 'btrfs', { subvolume: true, expect: 'subvolume' }));
t.test('btrfs: a plain directory is reflinked', (t) => cloneCase(t, 'btrfs', { expect: 'reflink' }));
t.test('xfs: reflink', (t) => cloneCase(t, 'xfs', { expect: 'reflink' }));
t.test('ext4: copy', (t) => cloneCase(t, 'ext4', { expect: 'copy' }));

t.test('forced strategies', async (t) => {
  if (!prerequisites(t, { root: true, tools: ['mkfs.btrfs'] })) return;
  const mnt = loopFs(t, 'btrfs', 512);
  const src = join(mnt, 'src');
  await createSubvolume(src);
  buildFixture(src, '/etc/hostname');
  const r1 = await copyTree(src, join(mnt, 'as-reflink'), { strategy: 'reflink' });
  t.equal(r1.strategy, 'reflink');
  t.same(diffTrees(src, join(mnt, 'as-reflink')), []);
  const r2 = await copyTree(src, join(mnt, 'as-copy'), { strategy: 'copy' });
  t.equal(r2.strategy, 'copy');
  t.same(diffTrees(src, join(mnt, 'as-copy')), []);
  // a snapshot of a snapshot, and removing a tree holding a nested subvolume
  const r3 = await copyTree(src, join(mnt, 'snap'), { strategy: 'subvolume' });
  t.equal(r3.strategy, 'subvolume');
  t.ok(isSubvolume(join(mnt, 'snap')));
  await createSubvolume(join(mnt, 'as-copy', 'nested'));
  await removeTree(join(mnt, 'as-copy'));
  await removeTree(join(mnt, 'snap'));
  await removeTree(join(mnt, 'as-reflink'));
  t.same(listing(mnt), ['src']);
  // forcing a snapshot of a plain directory is refused
  mkdirSync(join(mnt, 'plain'));
  await t.rejects(copyTree(join(mnt, 'plain'), join(mnt, 'x'), { strategy: 'subvolume' }), { code: 'copy_refused', status: 400 });
  t.notOk(existsSync(join(mnt, 'x')));
});

t.test('mount points and nested subvolumes are copied as empty directories', async (t) => {
  if (!prerequisites(t, { root: true, tools: ['mkfs.btrfs'] })) return;
  const mnt = loopFs(t, 'btrfs', 512);
  const src = join(mnt, 'src');
  mkdirSync(src);
  writeFileSync(join(src, 'top'), 'x');
  await createSubvolume(join(src, 'nested'));
  writeFileSync(join(src, 'nested', 'inner'), 'y');
  mkdirSync(join(src, 'm'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', join(src, 'm')]);
  try {
    writeFileSync(join(src, 'm', 'mounted'), 'z');
    const r = await copyTree(src, join(mnt, 'dest'));
    t.equal(r.strategy, 'reflink');
    t.same(listing(join(mnt, 'dest')), ['m', 'nested', 'top']);
    t.same(listing(join(mnt, 'dest', 'nested')), [], 'nested subvolume: empty dir (as in a snapshot)');
    t.same(listing(join(mnt, 'dest', 'm')), [], 'mount point: empty dir');
    await t.rejects(removeTree(src), { code: 'copy_refused' }, 'removal does not cross a mount point');
    t.ok(existsSync(join(src, 'm', 'mounted')), 'the mounted filesystem is untouched');
  } finally {
    execFileSync('umount', [join(src, 'm')]);
  }
});

t.test('forced reflink on ext4 fails and leaves no dest', async (t) => {
  if (!prerequisites(t, { root: true })) return;
  const mnt = loopFs(t, 'ext4', 256);
  const src = join(mnt, 'src');
  mkdirSync(join(src, 'a'), { recursive: true });
  writeFileSync(join(src, 'a', 'f'), 'data');
  const le = await rejection(t, copyTree(src, join(mnt, 'dest'), { strategy: 'reflink' }));
  t.equal(le.code, 'copy_failed');
  t.equal(le.status, 500);
  t.match(le.message, /EOPNOTSUPP|ENOTSUP/);
  t.notOk(existsSync(join(mnt, 'dest')));
});

t.test('a copy that fails midway (destination full) leaves no dest', async (t) => {
  if (!prerequisites(t, { root: true })) return;
  const base = tempDir(t);
  const src = join(base, 'src');
  mkdirSync(join(src, 'x', 'y'), { recursive: true });
  for (let i = 0; i < 20; i++) writeFileSync(join(src, 'x', `f${i}`), Buffer.alloc(200 * 1024, i + 1));
  writeFileSync(join(src, 'x', 'y', 'big'), Buffer.alloc(4 * 1024 * 1024, 7));
  const full = tmpfsMount(t, 2048);
  const le = await rejection(t, copyTree(src, join(full, 'dest')));
  t.equal(le.code, 'copy_failed');
  t.match(le.message, /ENOSPC/);
  t.equal(le.details?.errno, 'ENOSPC');
  t.same(listing(full), [], 'nothing left on the full filesystem');
});

t.test('cancellation', async (t) => {
  if (!prerequisites(t, { root: true })) return;
  const mnt = loopFs(t, 'ext4', 256);
  const src = join(mnt, 'src');
  buildManyFiles(src, 3000);

  const ac = new AbortController();
  const p = copyTree(src, join(mnt, 'dest'), { signal: ac.signal, progressMs: 1, threads: 1, onProgress: () => ac.abort() });
  const le = await rejection(t, p);
  t.equal(le.code, 'copy_cancelled');
  t.equal(le.name, 'AbortError');
  t.notOk(existsSync(join(mnt, 'dest')), 'no dest after cancel');

  const ac2 = new AbortController();
  ac2.abort();
  const le2 = await rejection(t, copyTree(src, join(mnt, 'dest2'), { signal: ac2.signal }));
  t.equal(le2.code, 'copy_cancelled');
  t.equal(le2.name, 'AbortError');
  t.notOk(existsSync(join(mnt, 'dest2')), 'already-aborted signal writes nothing');

  // progress: increasing counts, never above the final totals
  const seen: Array<{ files: number; bytes: number }> = [];
  const r = await copyTree(src, join(mnt, 'dest3'), { progressMs: 2, threads: 1, onProgress: (p) => seen.push(p) });
  t.ok(seen.length >= 1, `progress called (${seen.length} times)`);
  for (let i = 1; i < seen.length; i++) {
    t.ok(seen[i]!.files >= seen[i - 1]!.files && seen[i]!.bytes >= seen[i - 1]!.bytes, 'non-decreasing');
  }
  t.ok(seen.every((s) => s.files <= r.files && s.bytes <= r.bytes), 'within totals');
  t.equal(r.files, 3000);
  t.same(diffTrees(src, join(mnt, 'dest3')), []);
});

t.test('hostile inputs are refused and write nothing', async (t) => {
  const base = tempDir(t);
  const src = join(base, 'src');
  mkdirSync(join(src, 'sub'), { recursive: true });
  writeFileSync(join(src, 'sub', 'f'), 'x');
  symlinkSync(src, join(base, 'src-link'));
  writeFileSync(join(base, 'file'), 'not a dir');
  mkdirSync(join(base, 'exists'));
  const before = listing(base);
  const beforeSrc = listing(join(src, 'sub'));
  const cases: Array<[string, string, string]> = [
    ['source is a symlink', join(base, 'src-link'), join(base, 'd1')],
    ['source is not a directory', join(base, 'file'), join(base, 'd2')],
    ['source missing', join(base, 'nope'), join(base, 'd3')],
    ['dest inside source', src, join(src, 'sub', 'inner')],
    ['dest inside source through a symlinked parent', src, join(base, 'src-link', 'inner')],
    ['dest is the source', src, src],
    ['source inside dest', join(src, 'sub'), src],
    ['dest exists', src, join(base, 'exists')],
    ['dest is an existing file', src, join(base, 'file')],
    ['dest parent missing', src, join(base, 'no', 'such', 'parent')],
  ];
  for (const [what, s, d] of cases) {
    await t.rejects(copyTree(s, d), { code: 'copy_refused', status: 400 }, what);
  }
  t.same(listing(base), before, 'nothing written beside the source');
  t.same(listing(join(src, 'sub')), beforeSrc, 'nothing written inside the source');
  await t.rejects(copyTree(src, join(base, 'x'), { strategy: 'bogus' as 'copy' }), { code: 'copy_refused' });
  // removeTree of a symlink removes the link only
  await removeTree(join(base, 'src-link'));
  t.ok(existsSync(join(src, 'sub', 'f')), 'symlink target untouched');
  await removeTree(join(base, 'never-existed'));
});
