// Building blocks of the clone benchmark, exported for other benches (e.g. the API-overhead one):
// loop filesystems, a realistic fixture tree, cache dropping and timing.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type BenchFs = 'btrfs' | 'xfs' | 'ext4';

export interface LoopFs {
  kind: BenchFs;
  mnt: string;
  cleanup(): void;
}

function run(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A sparse image of sizeGiB with a fresh filesystem, loop-mounted under os.tmpdir(). */
export function makeLoopFs(kind: BenchFs, sizeGiB = 3): LoopFs {
  const base = fs.mkdtempSync(join(tmpdir(), `loom-bench-${kind}-`));
  const img = join(base, 'img');
  const mnt = join(base, 'mnt');
  fs.mkdirSync(mnt);
  const cleanup = () => {
    spawnSync('umount', [mnt], { stdio: 'ignore' });
    const r = spawnSync('losetup', ['-j', img], { encoding: 'utf8' });
    for (const line of (r.stdout ?? '').split('\n')) {
      const dev = line.split(':')[0];
      if (dev) spawnSync('losetup', ['-d', dev], { stdio: 'ignore' });
    }
    fs.rmSync(base, { recursive: true, force: true });
  };
  try {
    run('truncate', ['-s', `${sizeGiB}G`, img]);
    if (kind === 'btrfs') run('mkfs.btrfs', ['-q', img]);
    else if (kind === 'xfs') run('mkfs.xfs', ['-q', '-m', 'reflink=1', img]);
    else run('mkfs.ext4', ['-q', '-F', img]);
    run('mount', ['-o', 'loop', img, mnt]);
  } catch (e) {
    cleanup();
    throw e;
  }
  return { kind, mnt, cleanup };
}

/** A small deterministic PRNG (mulberry32). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface FixtureOptions {
  /** Number of regular files (default 50,000). */
  files?: number;
  /** Median file size in bytes (default 2,000); sizes are log-normal with sigma 2 (mean ≈ 7.4 × median). */
  medianBytes?: number;
  /** Files per directory on average (default 15). */
  filesPerDir?: number;
  seed?: number;
}

export interface FixtureStats {
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  bytes: number;
}

/**
 * Fills the existing directory root with a tree shaped like a system's /usr/share: ~50,000 files,
 * ~700 MiB (log-normal sizes: many small files, a long tail of big ones), ~3,300 directories up
 * to 7 deep, ~2% symlinks, a few hardlinks, varied modes and timestamps.
 */
export function buildCloneFixture(root: string, opts: FixtureOptions = {}): FixtureStats {
  const nfiles = opts.files ?? 50_000;
  const median = opts.medianBytes ?? 2000;
  const perDir = opts.filesPerDir ?? 15;
  const rnd = prng(opts.seed ?? 42);
  const normal = () => Math.sqrt(-2 * Math.log(rnd() || 1e-12)) * Math.cos(2 * Math.PI * rnd());
  const chunk = Buffer.alloc(4 << 20);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE(Math.floor(rnd() * 0xffffffff), i);

  const dirs: string[] = [''];
  const ndirs = Math.max(1, Math.round(nfiles / perDir));
  for (let i = 1; i < ndirs; i++) {
    // parents picked among recent dirs: gives depth without a single long chain
    let parent = dirs[Math.floor(rnd() * dirs.length)]!;
    if (parent.split('/').length >= 7) parent = '';
    const d = parent ? `${parent}/d${i}` : `d${i}`;
    fs.mkdirSync(join(root, d));
    dirs.push(d);
  }
  const st: FixtureStats = { files: 0, dirs: dirs.length, symlinks: 0, hardlinks: 0, bytes: 0 };
  const made: string[] = [];
  for (let i = 0; i < nfiles; i++) {
    const dir = dirs[Math.floor(rnd() * dirs.length)]!;
    const rel = dir ? `${dir}/f${i}` : `f${i}`;
    const p = join(root, rel);
    const r = rnd();
    if (r < 0.02 && made.length) {
      fs.symlinkSync(`/usr/share/${made[Math.floor(rnd() * made.length)]}`, p);
      st.symlinks++;
      continue;
    }
    if (r < 0.021 && made.length) {
      fs.linkSync(join(root, made[Math.floor(rnd() * made.length)]!), p);
      st.hardlinks++;
      continue;
    }
    const size = Math.min(64 << 20, Math.round(median * Math.exp(2 * normal())));
    const fd = fs.openSync(p, 'w', rnd() < 0.1 ? 0o755 : 0o644);
    for (let off = 0; off < size; ) {
      const n = Math.min(chunk.length, size - off);
      const start = Math.floor(rnd() * (chunk.length - n + 1));
      fs.writeSync(fd, chunk, start, n);
      off += n;
    }
    fs.closeSync(fd);
    const when = 1.5e9 + Math.floor(rnd() * 2e8);
    fs.utimesSync(p, when, when);
    made.push(rel);
    st.files++;
    st.bytes += size;
  }
  return st;
}

/** Flushes dirty data and drops the page, dentry and inode caches (root only; no-op otherwise). */
export function dropCaches(): boolean {
  spawnSync('sync');
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3\n');
    return true;
  } catch {
    return false;
  }
}

/** Milliseconds an async function takes. */
export async function timeMs(fn: () => unknown): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** Milliseconds a command takes (argv, never a shell); throws on a nonzero exit. */
export function timeCmd(cmd: string, args: string[]): number {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return ms;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
