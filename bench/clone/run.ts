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
      const cpReflink = kind === 'ext4' ? 0 : await reps(n, lfs, dest, () => timeCmd('cp', ['-a', '--reflink=always', src, dest]));
      const cpPlain = await reps(n, lfs, dest, () => timeCmd('cp', ['-a', '--reflink=never', src, dest]));
      let strategy = '';
      const auto = await reps(n, lfs, dest, async () => {
        strategy = (await copyTree(src, dest, ours())).strategy;
      });
      log(`${kind}: ours(auto → ${strategy}) ${auto.toFixed(1)} ms, cp -a --reflink=always ${cpReflink.toFixed(0)} ms, cp -a ${cpPlain.toFixed(0)} ms`);
      if (kind === 'btrfs') {
        rows.push({ fs: kind, what: `copyTree auto (${strategy})`, oursMs: auto, baseline: 'cp -a --reflink=always', baselineMs: cpReflink, target: '≤ 20 ms' });
        const rl = await reps(n, lfs, dest, () => copyTree(src, dest, ours({ strategy: 'reflink' })));
        log(`${kind}: ours(reflink) ${rl.toFixed(1)} ms`);
        rows.push({ fs: kind, what: 'copyTree reflink', oursMs: rl, baseline: 'cp -a --reflink=always', baselineMs: cpReflink, target: '(comparison)' });
        rows.push({ fs: kind, what: 'copyTree auto (subvolume)', oursMs: auto, baseline: 'cp -a', baselineMs: cpPlain, target: '(comparison)' });
      } else if (kind === 'xfs') {
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
