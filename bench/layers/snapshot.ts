/**
 * Snapshot of a weaver's layer on ext4, XFS and btrfs loop filesystems, beside the baselines
 * measured in the same run. Run as root:
 *   npx tsx bench/layers/snapshot.ts [--reps 7] [--baseline-reps 3] [--image /usr/share] [--fs ext4,xfs,btrfs]
 *
 * The "image" is a big tree (default /usr/share: ~54k files, ~676 MB) imported once into the
 * snapshotter as a base layer; an active layer is prepared on it and mounted with overlayfs like
 * a weaver's root filesystem. Then, per filesystem:
 *   - snapshot of the unchanged layer; after writing 1 MB; after writing 100 MB (ours: the
 *     snapshotter's snapshot() = the copy primitive on the upper only), p50 of --reps;
 *   - baselines: `cp -a --reflink=auto` of the merged root filesystem (what a snapshot cost before
 *     layers) and of the changed files alone; p50 of 3 (the merged copy takes seconds);
 *   - disk per snapshot: the snapshot layer's allocated bytes against the bytes written.
 * Page cache is warm for both sides (the files were just written). Nothing is left behind.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { OverlaySnapshotter } from '../../src/provisioners/local/snapshotter/overlay.js';
import { makeLoopFs, type BenchFs } from '../clone/fixture.js';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '7' }, image: { type: 'string', default: '/usr/share' }, fs: { type: 'string', default: 'ext4,xfs,btrfs' }, 'baseline-reps': { type: 'string', default: '3' } } });
const BASE_REPS = Number(values['baseline-reps']);
const REPS = Number(values.reps);
const IMAGE = values.image!;
const FILESYSTEMS = values.fs!.split(',') as BenchFs[];

const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (ms: number) => `${ms.toFixed(1)} ms`;

function cp(src: string, dest: string): number {
  const t0 = performance.now();
  const r = spawnSync('cp', ['-a', '--reflink=auto', src, dest], { stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`cp failed: ${r.stderr}`);
  return ms;
}

function rm(path: string): void {
  spawnSync('rm', ['-rf', path]);
}

interface Row { fs: string; what: string; ours: number; baseline: string; base: number }
const rows: Row[] = [];
const disk: string[] = [];

for (const kind of FILESYSTEMS) {
  const lfs = makeLoopFs(kind, 4);
  const root = join(lfs.mnt, 'root');
  let s: OverlaySnapshotter | null = null;
  try {
    s = (await OverlaySnapshotter.open(join(lfs.mnt, 'store'))).snapshotter;
    const t0 = performance.now();
    const img = await s.importTree('image', IMAGE);
    console.error(`${kind}: imported ${IMAGE} (${img.usage?.inodes} inodes, ${((img.usage?.bytes ?? 0) / 2 ** 20).toFixed(0)} MiB) in ${fmt(performance.now() - t0)} (${img.strategy})`);
    await s.prepare('weaver/w', 'image');
    mkdirSync(root);
    await s.mount('weaver/w', root);
    const upper = s.path('weaver/w');
    const changed = join(lfs.mnt, 'changed');
    mkdirSync(changed);
    let n = 0;
    let written = 0; // the layer holds everything written so far (1 MB, then 1 MB + 100 MB)
    for (const [label, bytes] of [['unchanged', 0], ['after 1 MB', 1 << 20], ['after 100 MB', 100 << 20]] as const) {
      if (bytes) {
        const f = `data-${bytes}.bin`;
        writeFileSync(join(root, f), Buffer.alloc(bytes, 0x5a));
        writeFileSync(join(changed, f), Buffer.alloc(bytes, 0x5a)); // the changed files, for the baseline
        spawnSync('sync');
        written += bytes;
      }
      const ours: number[] = [];
      let used = 0;
      for (let i = 0; i < REPS; i++) {
        const key = `snap/${n++}`;
        const t = performance.now();
        const info = await s.snapshot(key, 'weaver/w');
        ours.push(performance.now() - t);
        used = info.usage?.bytes ?? 0;
        await s.remove(key);
      }
      if (kind === 'btrfs') spawnSync('btrfs', ['subvolume', 'sync', lfs.mnt]);
      const merged: number[] = [];
      const only: number[] = [];
      for (let i = 0; i < BASE_REPS; i++) {
        const d = join(lfs.mnt, `cp-${i}`);
        merged.push(cp(root, d));
        rm(d);
        const e = join(lfs.mnt, `cpc-${i}`);
        only.push(cp(bytes ? changed : upper, e));
        rm(e);
      }
      rows.push({ fs: kind, what: `snapshot ${label}`, ours: p50(ours), baseline: 'cp -a --reflink=auto merged rootfs', base: p50(merged) });
      rows.push({ fs: kind, what: `snapshot ${label}`, ours: p50(ours), baseline: 'cp -a --reflink=auto changed files only', base: p50(only) });
      disk.push(`${kind.padEnd(6)} ${label.padEnd(13)} snapshot uses ${(used / 2 ** 20).toFixed(2)} MiB for ${(written / 2 ** 20).toFixed(2)} MiB changed in the layer (target <= changed + 1 MiB: ${used <= written + (1 << 20) ? 'met' : 'NOT met'})`);
    }
  } finally {
    if (s) {
      await s.unmount(root).catch(() => undefined);
    }
    lfs.cleanup();
  }
}

console.log(`\nsnapshot of a weaver layer over a ${IMAGE} image (p50; ours ${REPS} reps, baselines ${BASE_REPS})`);
console.log(`${'fs'.padEnd(6)} ${'what'.padEnd(24)} ${'ours'.padStart(10)}  ${'baseline'.padEnd(40)} ${'baseline'.padStart(10)}  ratio`);
for (const r of rows) console.log(`${r.fs.padEnd(6)} ${r.what.padEnd(24)} ${fmt(r.ours).padStart(10)}  ${r.baseline.padEnd(40)} ${fmt(r.base).padStart(10)}  ${(r.ours / r.base).toFixed(3)}x`);
console.log('\ndisk per snapshot');
for (const d of disk) console.log(d);
