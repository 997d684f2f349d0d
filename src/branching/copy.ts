/**
 * The copy primitive of Loom: clone a directory tree with the fastest strategy the filesystem
 * allows, off the JS thread, in the native addon (native/src/copytree.cc):
 *
 *  - `subvolume`: a btrfs snapshot when the source is a subvolume root (one ioctl, whole tree);
 *  - `reflink`:   a FICLONE per file (btrfs, XFS, …), metadata copied per entry;
 *  - `copy`:      copy_file_range (read/write fallback), holes kept with SEEK_DATA/SEEK_HOLE.
 *
 * Modes, owners, nanosecond timestamps, xattrs, symlinks (never followed), hardlinks, fifos,
 * device nodes and sparse files are preserved. Directories on another device than the source
 * root (mount points, nested btrfs subvolumes) are copied as empty directories, which is what a
 * snapshot gives, so all strategies yield the same tree. On failure or cancel everything written
 * is removed again. Every other part of Loom copies trees through this module and nothing else.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { getSystemErrorName } from 'node:util';

import { LoomError } from '../common/errors.js';
import { packageRoot } from '../common/package-root.js';

export type CopyStrategy = 'subvolume' | 'reflink' | 'copy';

export interface CopyProgress {
  files: number;
  bytes: number;
}

export interface CopyOptions {
  /** 'auto' (default) picks subvolume → reflink → copy; forcing one fails if it is not possible. */
  strategy?: 'auto' | CopyStrategy;
  /** Aborting rejects with a LoomError code 'copy_cancelled' (name 'AbortError') and leaves no dest. */
  signal?: AbortSignal;
  /** Called with running totals, at most every `progressMs` (not called for a subvolume snapshot). */
  onProgress?: (p: CopyProgress) => void;
  /** Progress interval in ms (default 100). */
  progressMs?: number;
  /** Worker threads of the walk (default: CPUs for reflink, 4 × CPUs for copy; clamped to 16). */
  threads?: number;
}

interface NativeCopyResult {
  strategy: CopyStrategy;
  /** Counts of what was written; all zero for a subvolume snapshot (the tree is not walked). */
  files: number;
  dirs: number;
  bytes: number;
  symlinks: number;
  hardlinks: number;
  specials: number;
}

export interface CopyResult extends NativeCopyResult {
  elapsedMs: number;
}

interface NativeError extends Error {
  kind?: 'refused' | 'io' | 'cancelled';
  errno?: number;
  syscall?: string;
  path?: string;
}

interface NativeAddon {
  fsInfo(path: string): { type: string; magic: number };
  copyTree(
    src: string,
    dest: string,
    opts: { strategy: number; threads: number; progressMs: number },
    cancel: Int32Array,
    onProgress?: (files: number, bytes: number) => void,
  ): Promise<NativeCopyResult>;
  removeTree(path: string): Promise<void>;
  createSubvolume(path: string): Promise<void>;
  isSubvolume(path: string): boolean;
  /** A close-on-exec pipe whose buffer is grown to `size` bytes where allowed (native/src/pipe.cc). */
  pipe(size: number): { read: number; write: number; size: number };
}

const STRATEGY_CODE: Record<'auto' | CopyStrategy, number> = { auto: 0, subvolume: 1, reflink: 2, copy: 3 };

let addon: NativeAddon | undefined;

/** The native addon (loaded once, lazily). */
export function nativeAddon(): NativeAddon {
  if (addon) return addon;
  const file = join(packageRoot(), 'native', 'build', 'Release', 'loom_native.node');
  if (!existsSync(file)) {
    throw new LoomError(500, 'native_missing', `native addon not built: ${file} (run: npx node-gyp rebuild --directory native)`);
  }
  addon = createRequire(import.meta.url)(file) as NativeAddon;
  return addon;
}

function errnoName(n: number | undefined): string {
  if (!n) return '';
  try {
    return getSystemErrorName(-n);
  } catch {
    return `errno ${n}`;
  }
}

function cancelledError(dest: string, cause?: unknown): LoomError {
  const e = new LoomError(409, 'copy_cancelled', `copy to ${dest} cancelled`, { errno: 'ECANCELED' });
  e.name = 'AbortError';
  if (cause !== undefined) (e as Error).cause = cause;
  return e;
}

/** Turns a native error into the project's error type. */
function toLoomError(e: unknown, what: string): LoomError {
  const ne = e as NativeError;
  if (!(e instanceof Error) || !ne.kind) return new LoomError(500, 'copy_failed', `${what}: ${String(e)}`);
  const details: Record<string, unknown> = {};
  if (ne.errno) details.errno = errnoName(ne.errno);
  if (ne.syscall) details.syscall = ne.syscall;
  if (ne.path) details.path = ne.path;
  let err: LoomError;
  if (ne.kind === 'cancelled') return cancelledError(ne.path ?? '', e);
  if (ne.kind === 'refused') err = new LoomError(400, 'copy_refused', ne.message, details);
  else err = new LoomError(500, 'copy_failed', `${what}: ${ne.message} (${errnoName(ne.errno)})`, details);
  (err as Error).cause = e;
  return err;
}

/**
 * Clones the directory tree `src` to `dest` (which must not exist; its parent must). Refuses
 * (LoomError 400 'copy_refused') a source that is a symlink or not a directory, an existing dest,
 * a missing dest parent, and dest inside source or source inside dest (by real paths).
 */
export async function copyTree(src: string, dest: string, opts: CopyOptions = {}): Promise<CopyResult> {
  const strategy = opts.strategy ?? 'auto';
  if (!(strategy in STRATEGY_CODE)) throw new LoomError(400, 'copy_refused', `unknown copy strategy ${String(strategy)}`);
  const s = resolve(src);
  const d = resolve(dest);
  if (opts.signal?.aborted) throw cancelledError(d);
  const native = nativeAddon();
  const cancel = new Int32Array(new SharedArrayBuffer(4));
  const onAbort = () => Atomics.store(cancel, 0, 1);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const progress = opts.onProgress;
  const t0 = performance.now();
  try {
    const r = await native.copyTree(
      s,
      d,
      { strategy: STRATEGY_CODE[strategy], threads: opts.threads ?? 0, progressMs: opts.progressMs ?? 100 },
      cancel,
      progress
        ? (files, bytes) => {
            try {
              progress({ files, bytes });
            } catch {
              /* a failing progress callback does not stop the copy */
            }
          }
        : undefined,
    );
    return { ...r, elapsedMs: performance.now() - t0 };
  } catch (e) {
    throw toLoomError(e, `copy ${s} to ${d}`);
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * Deletes a tree made by copyTree, including a btrfs subvolume (snapshot) and subvolumes nested
 * in it. A missing path is not an error; a symlink is removed itself, never what it points to.
 * It never descends into a mount point: a tree holding one is refused (400 'copy_refused').
 */
export async function removeTree(path: string): Promise<void> {
  try {
    await nativeAddon().removeTree(resolve(path));
  } catch (e) {
    throw toLoomError(e, `remove ${path}`);
  }
}

/** Makes an empty btrfs subvolume at path (refused with 400 'copy_refused' if the parent is not btrfs). */
export async function createSubvolume(path: string): Promise<void> {
  try {
    await nativeAddon().createSubvolume(resolve(path));
  } catch (e) {
    throw toLoomError(e, `create subvolume ${path}`);
  }
}

/** True if path is the root of a btrfs subvolume (so copyTree can snapshot it). */
export function isSubvolume(path: string): boolean {
  try {
    return nativeAddon().isSubvolume(resolve(path));
  } catch (e) {
    throw toLoomError(e, `inspect ${path}`);
  }
}

/** The filesystem type at path: 'btrfs' | 'xfs' | 'ext4' | 'tmpfs' | 'overlayfs' | 'other'. */
export function fsType(path: string): string {
  try {
    return nativeAddon().fsInfo(path).type;
  } catch (e) {
    const ne = e as NativeError;
    throw new LoomError(500, 'copy_failed', ne.message ?? String(e), { errno: errnoName(ne.errno) });
  }
}
