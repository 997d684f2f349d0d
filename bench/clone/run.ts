// Clone benchmark: the copy primitive against cp on loop filesystems it makes (btrfs, XFS, ext4).
//   npx tsx bench/clone/run.ts [--reps N] [--files N] [--threads N] [--fs btrfs,xfs,ext4]
// Needs root (mount, drop_caches) and btrfs-progs, xfsprogs. Prints medians of N cold-cache runs.
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import { copyTree, createSubvolume, removeTree, type CopyOptions } from '../../src/branching/copy.js';
import { buildCloneFixture, dropCaches, makeLoopFs, median, timeCmd, timeMs, type BenchFs, type LoopFs } from './fixture.js';

export interface Row {
  fs: BenchFs;
  what: string;
  oursMs: number;
  baseline: string;
  baselineMs: number;
  target: string;
}

export interface CloneBenchOptions {
  reps?: number;
  files?: number;
  threads?: number;
  filesystems?: BenchFs[];
  log?: (s: string) => void;
}

/** Lets the filesystem settle: waits for btrfs's cleaner to drop deleted subvolumes, then drops caches. */
function settle(lfs: LoopFs): void {
  if (lfs.kind === 'btrfs') spawnSync('btrfs', ['subvolume', 'sync', lfs.mnt], { stdio: 'ignore' });
  dropCaches();
}

async function reps(n: number, lfs: LoopFs, dest: string, op: () => unknown): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < n; i++) {
    settle(lfs);
    times.push(await timeMs(op));
    await removeTree(dest);
  }
  return median(times);
}

/** Runs the benchmark and returns its rows (used by run.ts's main and by other benches). */
export async function runCloneBench(o: CloneBenchOptions = {}): Promise<Row[]> {
  const n = o.reps ?? 3;
  const log = o.log ?? ((s: string) => process.stderr.write(`${s}\n`));
  const rows: Row[] = [];
  const ours = (extra: CopyOptions = {}): CopyOptions => ({ ...extra, ...(o.threads ? { threads: o.threads } : {}) });
  for (const kind of o.filesystems ?? (['btrfs', 'xfs', 'ext4'] as BenchFs[])) {
    let lfs: LoopFs | undefined;
    try {
      lfs = makeLoopFs(kind, 3);
      const src = join(lfs.mnt, 'src');
      const dest = join(lfs.mnt, 'dest');
      if (kind === 'btrfs') await createSubvolume(src);
      else mkdirSync(src);
      const t0 = performance.now();
      const st = buildCloneFixture(src, o.files ? { files: o.files } : {});
      log(`${kind}: fixture ${st.files} files, ${st.dirs} dirs, ${st.symlinks} symlinks, ${st.hardlinks} hardlinks, ${(st.bytes / 2 ** 20).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      // Phase 1, interleaved (each rep runs every op once) so no op inherits another's aftermath
      // (e.g. btrfs's async discard after deleting a full copy): the pairs the targets are about.
      const cpReflinkArgs = ['-a', '--reflink=always', src, dest];
      const cpPlainArgs = ['-a', '--reflink=never', src, dest];
      let strategy = '';
      const ops: Array<[string, () => unknown]> = [];
      if (kind === 'ext4') ops.push(['cp -a', () => timeCmd('cp', cpPlainArgs)]);
      else ops.push(['cp -a --reflink=always', () => timeCmd('cp', cpReflinkArgs)]);
      ops.push(['auto', async () => (strategy = (await copyTree(src, dest, ours())).strategy)]);
      if (kind === 'btrfs') ops.push(['reflink', () => copyTree(src, dest, ours({ strategy: 'reflink' }))]);
      const times = new Map<string, number[]>(ops.map(([k]) => [k, []]));
      for (let i = 0; i < n; i++) {
        for (const [k, op] of ops) times.get(k)!.push(await reps(1, lfs, dest, op));
      }
      const med = (k: string) => median(times.get(k)!);
      // Phase 2: plain cp as a further comparison where the target is about reflinks.
      const cpPlain = kind === 'ext4' ? med('cp -a') : await reps(n, lfs, dest, () => timeCmd('cp', cpPlainArgs));
      const auto = med('auto');
      for (const [k] of ops) log(`${kind}: ${k}: ${times.get(k)!.map((x) => x.toFixed(1)).join(', ')} ms`);
      if (kind !== 'ext4') log(`${kind}: cp -a: ${cpPlain.toFixed(0)} ms (median)`);
      if (kind === 'btrfs') {
        const cpReflink = med('cp -a --reflink=always');
        rows.push({ fs: kind, what: `copyTree auto (${strategy})`, oursMs: auto, baseline: 'cp -a --reflink=always', baselineMs: cpReflink, target: '≤ 20 ms' });
        rows.push({ fs: kind, what: 'copyTree reflink', oursMs: med('reflink'), baseline: 'cp -a --reflink=always', baselineMs: cpReflink, target: '(comparison)' });
        rows.push({ fs: kind, what: `copyTree auto (${strategy})`, oursMs: auto, baseline: 'cp -a', baselineMs: cpPlain, target: '(comparison)' });
      } else if (kind === 'xfs') {
        const cpReflink = med('cp -a --reflink=always');
        rows.push({ fs: kind, what: `copyTree auto (${strategy})`, oursMs: auto, baseline: 'cp -a --reflink=always', baselineMs: cpReflink, target: '≤ 0.7x' });
        rows.push({ fs: kind, what: `copyTree auto (${strategy})`, oursMs: auto, baseline: 'cp -a', baselineMs: cpPlain, target: '(comparison)' });
      } else {
        rows.push({ fs: kind, what: `copyTree auto (${strategy})`, oursMs: auto, baseline: 'cp -a', baselineMs: cpPlain, target: '≤ 1.0x' });
      }
    } finally {
      lfs?.cleanup();
    }
  }
  return rows;
}

export function formatRows(rows: Row[]): string {
  const head = ['fs', 'ours', 'ours (ms)', 'baseline', 'baseline (ms)', 'ratio', 'target'];
  const body = rows.map((r) => [
    r.fs,
    r.what,
    r.oursMs.toFixed(1),
    r.baseline,
    r.baselineMs.toFixed(0),
    `${(r.oursMs / r.baselineMs).toFixed(3)}x`,
    r.target,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(w[i]!)).join('  ');
  return [line(head), line(w.map((x) => '-'.repeat(x))), ...body.map(line)].join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values } = parseArgs({
    options: { reps: { type: 'string' }, files: { type: 'string' }, threads: { type: 'string' }, fs: { type: 'string' } },
  });
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench/clone needs root (loop mounts, drop_caches)\n');
    process.exit(2);
  }
  const rows = await runCloneBench({
    ...(values.reps ? { reps: Number(values.reps) } : {}),
    ...(values.files ? { files: Number(values.files) } : {}),
    ...(values.threads ? { threads: Number(values.threads) } : {}),
    ...(values.fs ? { filesystems: values.fs.split(',') as BenchFs[] } : {}),
  });
  process.stdout.write(`${formatRows(rows)}\n`);
}
