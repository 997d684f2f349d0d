// Shared helpers of the native tests: loop filesystems, a fixture tree with the odd cases, and a
// comparator that checks two trees are identical in content and metadata.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';

export type FsKind = 'btrfs' | 'xfs' | 'ext4';

export interface TeardownHost {
  teardown(fn: () => unknown): void;
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function tryRun(cmd: string, args: string[]): void {
  try {
    run(cmd, args);
  } catch {
    /* best effort in cleanup */
  }
}

export function haveTool(name: string): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v "$1"', 'sh', name], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether a test's prerequisites (root, mkfs tools) are present. When one is missing the test
 * is skipped with the reason printed, except in CI (CI=true), where a missing prerequisite is a
 * failure: CI must run what these tests check, not pass with nothing checked.
 */
export function prerequisites(t: Test, needs: { root?: boolean; tools?: string[] }): boolean {
  const missing: string[] = [];
  if (needs.root && process.getuid?.() !== 0) missing.push('root');
  for (const tool of needs.tools ?? []) if (!haveTool(tool)) missing.push(tool);
  if (missing.length === 0) return true;
  const why = `needs ${missing.join(' and ')} (missing here)`;
  if (process.env.CI === 'true') {
    t.fail(`CI=true: prerequisites missing, refusing to skip: ${why}`);
  } else {
    t.comment(`skipped: ${why}`);
    t.plan(0, `skipped: ${why}`);
  }
  return false;
}

export const MKFS: Record<FsKind, string> = { btrfs: 'mkfs.btrfs', xfs: 'mkfs.xfs', ext4: 'mkfs.ext4' };

/** A temp dir removed on teardown. */
export function tempDir(t: TeardownHost, prefix = 'loom-native-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Makes a sparse image, mkfs, loop-mounts it; unmounts, detaches and deletes on teardown. */
export function loopFs(t: TeardownHost, kind: FsKind, sizeMiB = 1024): string {
  const base = mkdtempSync(join(tmpdir(), `loom-${kind}-`));
  const img = join(base, 'img');
  const mnt = join(base, 'mnt');
  fs.mkdirSync(mnt);
  t.teardown(() => {
    tryRun('umount', [mnt]);
    try {
      const lingering = run('losetup', ['-j', img]).split('\n').map((l) => l.split(':')[0]).filter(Boolean);
      for (const dev of lingering) tryRun('losetup', ['-d', dev]);
    } catch {
      /* no loop device */
    }
    fs.rmSync(base, { recursive: true, force: true });
  });
  run('truncate', ['-s', `${sizeMiB}M`, img]);
  if (kind === 'btrfs') run('mkfs.btrfs', ['-q', img]);
  else if (kind === 'xfs') run('mkfs.xfs', ['-q', '-m', 'reflink=1', img]);
  else run('mkfs.ext4', ['-q', '-F', img]);
  run('mount', ['-o', 'loop', img, mnt]);
  return mnt;
}

/** A tmpfs of the given size (for "destination is full" failures). */
export function tmpfsMount(t: TeardownHost, sizeKiB: number): string {
  const base = mkdtempSync(join(tmpdir(), 'loom-tmpfs-'));
  t.teardown(() => {
    tryRun('umount', [base]);
    fs.rmSync(base, { recursive: true, force: true });
  });
  run('mount', ['-t', 'tmpfs', '-o', `size=${sizeKiB}k`, 'tmpfs', base]);
  return base;
}

const PY_SETXATTR = 'import os,sys\na=sys.argv[1:]\nfor i in range(0,len(a),3): os.setxattr(a[i],a[i+1],a[i+2].encode(),follow_symlinks=False)';
const PY_DUMPXATTR = `import os,sys,json
root=sys.argv[1]; out={}
def one(p):
    try: names=os.listxattr(p,follow_symlinks=False)
    except OSError: return
    if names: out[os.path.relpath(p,root)]={n:os.getxattr(p,n,follow_symlinks=False).hex() for n in sorted(names)}
one(root)
for d,dirs,files in os.walk(root):
    for n in dirs+files: one(os.path.join(d,n))
print(json.dumps(out,sort_keys=True))`;

export function setXattrs(list: Array<[path: string, name: string, value: string]>): void {
  if (list.length) run('python3', ['-c', PY_SETXATTR, ...list.flat()]);
}

export function dumpXattrs(root: string): Record<string, Record<string, string>> {
  return JSON.parse(run('python3', ['-c', PY_DUMPXATTR, root])) as Record<string, Record<string, string>>;
}

function writeRandom(path: string, size: number): void {
  const buf = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4096) buf.writeUInt32LE((i * 2654435761) >>> 0, i);
  fs.writeFileSync(path, buf);
}

/**
 * Builds the odd-case fixture in the existing directory root: files of several sizes, a sparse
 * file, nested dirs, symlinks (inside, dangling, pointing outside), hardlinks, a fifo, a char
 * device, setuid/sticky/0600/0755 modes, foreign owners, xattrs, nanosecond past timestamps.
 */
export function buildFixture(root: string, outside: string): void {
  const p = (...s: string[]) => join(root, ...s);
  fs.mkdirSync(p('a', 'b', 'c', 'd'), { recursive: true });
  fs.mkdirSync(p('sticky'));
  fs.mkdirSync(p('owned'));
  fs.mkdirSync(p('empty-dir'));
  fs.writeFileSync(p('a', 'small.txt'), 'hello loom\n');
  fs.writeFileSync(p('a', 'empty'), '');
  writeRandom(p('a', 'mid.bin'), 100 * 1024 + 7);
  writeRandom(p('a', 'b', 'big.bin'), 3 * 1024 * 1024 + 123);
  fs.writeFileSync(p('a', 'b', 'c', 'd', 'deep.txt'), 'deep\n');
  // sparse: 64 MiB with two 4 KiB islands of data
  const fd = fs.openSync(p('sparse.img'), 'w');
  fs.writeSync(fd, Buffer.alloc(4096, 0x61), 0, 4096, 0);
  fs.writeSync(fd, Buffer.alloc(4096, 0x62), 0, 4096, 32 * 1024 * 1024);
  fs.ftruncateSync(fd, 64 * 1024 * 1024);
  fs.closeSync(fd);
  fs.symlinkSync('a/small.txt', p('link-in'));
  fs.symlinkSync('../b/c', p('a', 'link-dir'));
  fs.symlinkSync('does/not/exist', p('dangling'));
  fs.symlinkSync(outside, p('link-out'));
  fs.symlinkSync('../../../etc/passwd', p('a', 'link-up'));
  fs.writeFileSync(p('hard1'), 'shared inode\n');
  fs.linkSync(p('hard1'), p('a', 'hard2'));
  run('mkfifo', [p('fifo')]);
  run('mknod', [p('null-dev'), 'c', '1', '3']);
  fs.writeFileSync(p('setuid'), '#!/bin/sh\n');
  fs.writeFileSync(p('private'), 'secret\n');
  fs.writeFileSync(p('exec'), '#!/bin/sh\necho hi\n');
  fs.writeFileSync(p('owned', 'file'), 'owned\n');
  fs.symlinkSync('file', p('owned', 'link'));
  fs.chownSync(p('owned', 'file'), 1234, 5678);
  fs.chownSync(p('owned'), 1234, 5678);
  fs.lchownSync(p('owned', 'link'), 1234, 5678);
  fs.chownSync(p('setuid'), 1234, 5678);
  fs.chmodSync(p('setuid'), 0o4755);
  fs.chmodSync(p('sticky'), 0o1777);
  fs.chmodSync(p('private'), 0o600);
  fs.chmodSync(p('exec'), 0o755);
  fs.chmodSync(p('a', 'b', 'c'), 0o2750);
  fs.chmodSync(p('empty-dir'), 0o500);
  setXattrs([
    [p('a', 'small.txt'), 'user.loom', 'small'],
    [p('a'), 'user.loom.dir', 'dir-attr'],
    [p('private'), 'trusted.loom', 'trusted-value'],
    [p('private'), 'security.loom', 'security-value'],
    [p('a', 'b', 'big.bin'), 'user.big', 'x'.repeat(3000)],
    [p('link-in'), 'trusted.onlink', 'link-attr'],
    [p('hard1'), 'user.hard', 'h'],
  ]);
  // timestamps last (children before their directories; touch does not change the parent)
  const all: string[] = [];
  const walk = (d: string) => {
    for (const n of fs.readdirSync(d)) {
      const c = join(d, n);
      if (fs.lstatSync(c).isDirectory()) walk(c);
      all.push(c);
    }
  };
  walk(root);
  all.push(root);
  run('touch', ['-h', '-d', '@981173106.123456789', ...all.filter((_, i) => i % 2 === 0)]);
  run('touch', ['-h', '-d', '@1234567890.987654321', ...all.filter((_, i) => i % 2 === 1)]);
}

/** A flat-ish tree of many small files (for progress and cancellation). */
export function buildManyFiles(root: string, count: number): void {
  for (let d = 0; d < Math.ceil(count / 100); d++) {
    const dir = join(root, `d${d}`);
    fs.mkdirSync(dir, { recursive: true });
    for (let f = 0; f < 100 && d * 100 + f < count; f++) fs.writeFileSync(join(dir, `f${f}`), `file ${d}/${f}\n`.repeat(50));
  }
}

export interface Entry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: bigint;
  mtimeNs: bigint;
  nlink: number;
  rdev?: bigint;
  target?: string;
  sha256?: string;
  ino: bigint;
  blocks: bigint;
}

function typeOf(st: fs.BigIntStats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'chr';
  if (st.isBlockDevice()) return 'blk';
  if (st.isSocket()) return 'sock';
  return 'other';
}

/** Every entry of the tree by relative path ('' is the root), read with lstat only. */
export function scanTree(root: string): Map<string, Entry> {
  const out = new Map<string, Entry>();
  const visit = (rel: string) => {
    const abs = rel ? join(root, rel) : root;
    const st = fs.lstatSync(abs, { bigint: true });
    const type = typeOf(st);
    const e: Entry = {
      type,
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtimeNs: st.mtimeNs,
      nlink: Number(st.nlink),
      ino: st.ino,
      blocks: st.blocks,
    };
    if (type === 'file' || type === 'symlink') e.size = st.size;
    if (type === 'chr' || type === 'blk') e.rdev = st.rdev;
    if (type === 'symlink') e.target = fs.readlinkSync(abs);
    if (type === 'file') e.sha256 = createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
    out.set(rel, e);
    if (type === 'dir') for (const n of fs.readdirSync(abs).sort()) visit(rel ? join(rel, n) : n);
  };
  visit('');
  return out;
}

/** Differences between two trees (empty when identical in content and metadata). */
export function diffTrees(src: string, dest: string): string[] {
  const a = scanTree(src);
  const b = scanTree(dest);
  const diffs: string[] = [];
  for (const k of a.keys()) if (!b.has(k)) diffs.push(`missing in dest: ${k}`);
  for (const k of b.keys()) if (!a.has(k)) diffs.push(`extra in dest: ${k}`);
  const fields = ['type', 'mode', 'uid', 'gid', 'size', 'mtimeNs', 'nlink', 'rdev', 'target', 'sha256'] as const;
  for (const [k, ea] of a) {
    const eb = b.get(k);
    if (!eb) continue;
    for (const f of fields) {
      if (ea[f] !== eb[f]) diffs.push(`${k || '.'}: ${f} ${String(ea[f])} != ${String(eb[f])}`);
    }
  }
  // hardlink grouping: names sharing an inode in src share one (and only one) in dest
  const groups = new Map<bigint, string[]>();
  for (const [k, e] of a) if (e.type !== 'dir' && e.nlink > 1) groups.set(e.ino, [...(groups.get(e.ino) ?? []), k]);
  const seen = new Set<bigint>();
  for (const names of groups.values()) {
    const inos = new Set(names.map((n) => b.get(n)?.ino));
    if (inos.size !== 1) diffs.push(`hardlink group split in dest: ${names.join(', ')}`);
    const ino = [...inos][0];
    if (ino !== undefined) {
      if (seen.has(ino)) diffs.push(`hardlink groups merged in dest: ${names.join(', ')}`);
      seen.add(ino);
    }
  }
  const xa = dumpXattrs(src);
  const xb = dumpXattrs(dest);
  for (const k of new Set([...Object.keys(xa), ...Object.keys(xb)])) {
    const va = JSON.stringify(xa[k] ?? {});
    const vb = JSON.stringify(xb[k] ?? {});
    if (va !== vb) diffs.push(`${k}: xattrs ${va.slice(0, 200)} != ${vb.slice(0, 200)}`);
  }
  return diffs;
}

/** Names in a directory (to assert that a refused or failed call wrote nothing). */
export function listing(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}
