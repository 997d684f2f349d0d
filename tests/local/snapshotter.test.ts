/**
 * The overlayfs snapshotter on real overlay mounts, on ext4 (the default data dir), XFS and btrfs
 * loop filesystems: prepare/mount/write, snapshot of a mounted active layer (only the upper is
 * copied, through the copy primitive), forks stacked on snapshots, whiteouts, commit, views,
 * SNAPSHOT_IN_USE, usage, long chains with a long root path, flatten, and a SIGKILL mid-copy.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OverlaySnapshotter, MAX_CHAIN, FLATTEN_AT } from '../../src/provisioners/local/snapshotter/overlay.js';
import { haveTool, loopFs, tempDir, type FsKind, type TeardownHost } from '../native/helpers.js';

const CI = process.env.CI === 'true';

function mountTarget(t: TeardownHost, base: string, name: string, s: OverlaySnapshotter): string {
  const dir = join(base, 'mnt', name);
  mkdirSync(dir, { recursive: true });
  t.teardown(() => s.unmount(dir));
  return dir;
}


const expectedStrategy: Record<FsKind, string> = { ext4: 'copy', xfs: 'reflink', btrfs: 'subvolume' };

for (const kind of ['ext4', 'xfs', 'btrfs'] as const) {
  // Missing mkfs tools skip locally and fail in CI (scripts/apt-packages.txt has them).
  const skip = !CI && !haveTool(`mkfs.${kind}`) ? `mkfs.${kind} missing (install ${kind === 'btrfs' ? 'btrfs-progs' : 'xfsprogs'})` : false;
  t.test(`layers on ${kind}`, { skip }, async (t) => {
    const base = loopFs(t, kind, 512);
    const { snapshotter: s, report } = await OverlaySnapshotter.open(join(base, 'store'));
    t.same(report.removed, [], 'a fresh store has nothing to clean');

    // A base layer (an image) imported once.
    const img = join(base, 'image');
    mkdirSync(join(img, 'etc'), { recursive: true });
    writeFileSync(join(img, 'etc', 'os'), 'loom-test\n');
    writeFileSync(join(img, 'big.bin'), Buffer.alloc(4 << 20, 7));
    writeFileSync(join(img, 'gone.txt'), 'delete me\n');
    const baseInfo = await s.importTree('image/a', img);
    t.equal(baseInfo.kind, 'committed');
    t.equal(baseInfo.parent, null);

    // A weaver's active layer on it, mounted.
    await s.prepare('weaver/w1', 'image/a');
    const w1 = mountTarget(t, base, 'w1', s);
    await s.mount('weaver/w1', w1);
    t.equal(readFileSync(join(w1, 'etc', 'os'), 'utf8'), 'loom-test\n', 'image files visible through the overlay');
    writeFileSync(join(w1, 'note.txt'), 'one\n');
    rmSync(join(w1, 'gone.txt'));
    writeFileSync(join(w1, 'mb.bin'), Buffer.alloc(1 << 20, 1));

    // Snapshot while mounted: only the upper (what changed) is copied.
    const snap = await s.snapshot('snap/s1', 'weaver/w1');
    t.equal(snap.parent, 'image/a', "the snapshot's parent is the weaver's parent");
    t.equal(snap.strategy, expectedStrategy[kind], `copy primitive strategy on ${kind}`);
    const u = await s.usage('snap/s1');
    t.ok(u.bytes >= 1 << 20, `snapshot holds the 1 MiB written (${u.bytes})`);
    t.ok(u.bytes < (1 << 20) + (1 << 20), `snapshot holds no image bytes (${u.bytes} < changed + 1 MiB)`);

    // The weaver keeps writing; the snapshot does not change.
    writeFileSync(join(w1, 'note.txt'), 'two\n');
    t.equal(readFileSync(join(s.path('snap/s1'), 'note.txt'), 'utf8'), 'one\n');

    // A fork: an active layer on the snapshot.
    await s.prepare('weaver/w2', 'snap/s1');
    const w2 = mountTarget(t, base, 'w2', s);
    await s.mount('weaver/w2', w2);
    t.equal(readFileSync(join(w2, 'note.txt'), 'utf8'), 'one\n', 'the fork sees the state of the snapshot');
    t.notOk(existsSync(join(w2, 'gone.txt')), 'a deletion (whiteout) carries into the fork');
    t.equal(readFileSync(join(w2, 'etc', 'os'), 'utf8'), 'loom-test\n', 'image files through two lowers');
    writeFileSync(join(w2, 'fork-only.txt'), 'x');
    t.notOk(existsSync(join(w1, 'fork-only.txt')), 'the parent is untouched by the fork');
    t.equal(readFileSync(join(w1, 'note.txt'), 'utf8'), 'two\n');
    t.same(s.chain('weaver/w2').map((i) => i.key), ['snap/s1', 'image/a']);

    // A read-only view.
    await s.view('view/s1', 'snap/s1');
    const v = mountTarget(t, base, 'v', s);
    await s.mount('view/s1', v);
    t.equal(readFileSync(join(v, 'note.txt'), 'utf8'), 'one\n');
    t.throws(() => writeFileSync(join(v, 'x'), 'x'), /EROFS|read-only/i, 'a view is read-only');
    await s.unmount(v);
    await s.remove('view/s1');

    // In use: a parent is not removed while a layer stacks on it.
    await t.rejects(s.remove('snap/s1'), { code: 'SNAPSHOT_IN_USE', status: 409 });
    await t.rejects(s.remove('image/a'), { code: 'SNAPSHOT_IN_USE' });
    await t.rejects(s.prepare('weaver/w3', 'weaver/w1'), { code: 'LAYER_NOT_COMMITTED' }, 'no stacking on an active layer');
    await t.rejects(s.prepare('weaver/w1', 'image/a'), { code: 'LAYER_EXISTS' });
    await t.rejects(s.prepare('../x', 'image/a'), { code: 'INVALID_KEY' });
    await t.rejects(s.prepare('weaver/w9', 'nope'), { code: 'LAYER_NOT_FOUND', status: 404 });

    // containerd's commit: an unmounted active layer becomes committed in place.
    await s.unmount(w2);
    const c = await s.commit('snap/w2-final', 'weaver/w2');
    t.equal(c.strategy, 'rename');
    t.equal(s.stat('weaver/w2'), null);
    t.equal(readFileSync(join(s.path('snap/w2-final'), 'fork-only.txt'), 'utf8'), 'x');

    // Reopening sees the same entries.
    const again = (await OverlaySnapshotter.open(join(base, 'store'))).snapshotter;
    t.same(again.list().map((i) => i.key).sort(), s.list().map((i) => i.key).sort());
    t.same(again.list().map((i) => i.key).indexOf('image/a') < again.list().map((i) => i.key).indexOf('snap/s1'), true, 'parents listed first');

    // Teardown in dependency order.
    await s.remove('snap/w2-final');
    await s.remove('snap/s1');
    await s.unmount(w1);
    await s.remove('weaver/w1');
    await s.remove('image/a');
    t.same(readdirSync(join(base, 'store', 'l')), [], 'no layer directory left');
  });
}

t.test('a long chain under a long path mounts within the mount-option limit, and flattens', async (t) => {
  const dir = tempDir(t, 'loom-snapshotter-');
  const root = join(dir, 'a'.repeat(120), 'b'.repeat(120), 'store');
  const { snapshotter: s } = await OverlaySnapshotter.open(root);
  const layerSrc = join(dir, 'src');
  mkdirSync(layerSrc);
  writeFileSync(join(layerSrc, 'f0'), '0');
  await s.importTree('l/0', layerSrc);
  const target = join(dir, 'mnt');
  mkdirSync(target);
  t.teardown(() => s.unmount(target));
  let parent = 'l/0';
  const depth = MAX_CHAIN;
  for (let i = 1; i < depth; i++) {
    await s.prepare(`a/${i}`, parent);
    await s.mount(`a/${i}`, target);
    writeFileSync(join(target, `f${i}`), String(i));
    await s.unmount(target);
    await s.commit(`l/${i}`, `a/${i}`);
    parent = `l/${i}`;
  }
  t.equal(s.chain(parent).length, depth - 1);
  // absolute lowerdirs would need > 4096 bytes here
  t.ok(depth * (root.length + 20) > 4096, 'absolute paths would not fit one page');
  // The deepest layer allowed: MAX_CHAIN lowers.
  await s.prepare('top', parent);
  await s.mount('top', target);
  for (const i of [0, 1, depth - 1]) t.equal(readFileSync(join(target, `f${i}`), 'utf8'), String(i), `layer ${i} visible`);
  await s.unmount(target);
  await s.commit('l/last', 'top');

  // Past the bound: stacking is refused until the chain is flattened.
  await t.rejects(s.prepare('too-deep', 'l/last'), { code: 'CHAIN_TOO_LONG' });
  const flat = await s.flatten('flat', 'l/last');
  t.equal(flat.parent, null);
  await s.prepare('on-flat', 'flat');
  await s.mount('on-flat', target);
  for (const i of [0, 1, depth - 1]) t.equal(readFileSync(join(target, `f${i}`), 'utf8'), String(i), `layer ${i} in the flattened layer`);
  await s.unmount(target);
  t.notOk(s.list().some((i) => i.kind === 'view'), 'the flatten view is gone');
});

t.test('fork chains past the bound are flattened in the background; layers mounted on the old chain keep it', async (t) => {
  const dir = tempDir(t, 'loom-snapshotter-flatten-');
  const { snapshotter: s } = await OverlaySnapshotter.open(join(dir, 'store'));
  const failures: unknown[] = [];
  s.onBackgroundError = (_k, e) => failures.push(e);
  const src = join(dir, 'src');
  mkdirSync(src);
  writeFileSync(join(src, 'base'), 'base');
  await s.importTree('image/x', src);
  // Each generation forks the last: an active layer on the previous snapshot, mounted, written,
  // snapshotted while mounted (as a weaver fork does). More generations than MAX_CHAIN: without
  // flattening the prepare at generation MAX_CHAIN+1 would be refused.
  const generations = MAX_CHAIN + 6;
  const keep = 10; // stays mounted on its (old, deep) chain throughout
  let parent = 'image/x';
  let deepest = 0;
  const targets: string[] = [];
  for (let i = 1; i <= generations; i++) {
    await s.prepare(`w/${i}`, parent);
    const target = mountTarget(t, dir, `g${i}`, s);
    targets[i] = target;
    await s.mount(`w/${i}`, target);
    writeFileSync(join(target, `f${i}`), String(i));
    if (i > 1) rmSync(join(target, `f${i - 1}`)); // a whiteout on every layer
    await s.snapshot(`snap/${i}`, `w/${i}`);
    await s.idle(); // background work done, so the next generation sees its result (no timing)
    deepest = Math.max(deepest, s.chain(`snap/${i}`).length);
    if (i > 1 && i - 1 !== keep) {
      await s.unmount(targets[i - 1]!);
      await s.remove(`w/${i - 1}`);
    }
    parent = `snap/${i}`;
  }
  t.same(failures, [], 'no background failure');
  t.ok(deepest <= FLATTEN_AT, `no snapshot chain deeper than ${FLATTEN_AT} (deepest ${deepest})`);
  t.equal(s.stat(`snap/${FLATTEN_AT}`)?.labels['loom.flattened'], 'true', 'the first snapshot at the bound was flattened');
  const last = targets[generations]!;
  t.equal(readFileSync(join(last, 'base'), 'utf8'), 'base', 'the image file through the flattened chain');
  t.equal(readFileSync(join(last, `f${generations}`), 'utf8'), String(generations));
  t.notOk(existsSync(join(last, `f${generations - 1}`)), 'whiteouts survive flattening');
  const opts = s.mounts(`w/${generations}`)[0]!.options.join(',');
  t.ok(opts.length < 4096, `mount options within one page (${opts.length} bytes)`);
  // The layer mounted before the flattening still reads its own chain, kept as retired entries.
  const old = targets[keep]!;
  t.equal(readFileSync(join(old, `f${keep}`), 'utf8'), String(keep), 'the old mount still works');
  t.equal(readFileSync(join(old, 'base'), 'utf8'), 'base');
  t.equal(s.list().filter((i) => i.key.startsWith('retired/')).length, 0, 'nothing retired: the keeper\'s chain (depth 9) was never flattened');
  // A layer mounted on a snapshot that is then flattened (a fork started before the background work ran).
  await s.prepare('deep', `snap/${generations}`);
  const deepT = mountTarget(t, dir, 'deep', s);
  await s.mount('deep', deepT);
  const before = s.chain('deep').length;
  await s.rebase(`snap/${generations}`);
  t.ok(s.list().some((i) => i.key.startsWith('retired/')), 'the rebased tree is retired while a layer is mounted on it');
  t.equal(s.chain('deep').length, 1, `a remount would use the flattened layer (was ${before} lowers)`);
  t.equal(readFileSync(join(deepT, `f${generations}`), 'utf8'), String(generations), 'the mounted layer still reads its old chain');
  await t.rejects(s.remove(`snap/${generations - 1}`), { code: 'SNAPSHOT_IN_USE' }, 'the retired tree pins its parent');
  await s.unmount(deepT);
  await s.remove('deep');
  t.equal(s.list().filter((i) => i.key.startsWith('retired/')).length, 0, 'the retired tree went with the last layer mounted on it');
  // Everything down: no layer directory is left that no entry names.
  for (const i of [keep, generations]) {
    await s.unmount(targets[i]!);
    await s.remove(`w/${i}`);
  }
  for (const info of s.list().reverse()) await s.remove(info.key);
  t.same(readdirSync(join(dir, 'store', 'l')), [], 'every layer directory removed');
});

t.test('a process killed mid-copy leaves no half-written layer after reopening', async (t) => {
  const dir = tempDir(t, 'loom-snapshotter-crash-');
  const src = join(dir, 'src');
  mkdirSync(src);
  for (let i = 0; i < 200; i++) writeFileSync(join(src, `f${i}`), Buffer.alloc(256 << 10, i)); // 50 MB in 200 files
  const root = join(dir, 'store');
  const child = spawn(process.execPath, ['--import=tsx', fileURLToPath(new URL('./fixtures/snapshotter-child.ts', import.meta.url)), root, src, 'import'], { stdio: 'ignore' });
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  t.teardown(() => child.kill('SIGKILL'));
  const layers = join(root, 'l');
  // wait for the copy to be under way: a .tmp directory with some files in it
  for (;;) {
    const tmp = existsSync(layers) ? readdirSync(layers).find((d) => d.endsWith('.tmp')) : undefined;
    if (tmp && existsSync(join(layers, tmp, 'fs')) && readdirSync(join(layers, tmp, 'fs')).length > 0) break;
    if (child.exitCode !== null) {
      t.fail('the child finished before it could be killed');
      return;
    }
    await new Promise((r) => setImmediate(r));
  }
  child.kill('SIGKILL');
  await exited;
  const meta = JSON.parse(readFileSync(join(root, 'metadata.json'), 'utf8')) as { intents: Record<string, unknown> };
  t.equal(Object.keys(meta.intents).length, 1, 'the intent was recorded before the copy');
  const { snapshotter: s, report } = await OverlaySnapshotter.open(root);
  t.equal(report.interrupted.length, 1);
  t.equal(report.interrupted[0]!.key, 'base/crash');
  t.ok(report.removed.some((d) => d.endsWith('.tmp')), 'the half-written layer was removed');
  t.same(readdirSync(layers), [], 'nothing left under l/');
  t.equal(s.stat('base/crash'), null, 'no entry for the interrupted layer');
  // and the name is free again
  const info = await s.importTree('base/crash', src);
  t.equal(info.kind, 'committed');
  t.equal(readdirSync(s.path('base/crash')).length, 200);
});
