/**
 * Where a branching container's first root filesystem comes from, checked as hostile input:
 *
 * - a host directory (server admins only), resolved to its real path and accepted only when it is
 *   a real directory under one of the operator's import roots and not in a system tree; every
 *   refusal is the same message, so the API is not an oracle for what exists on the host;
 * - an image of the local image store (unpacked once per digest, then copied);
 * - an uploaded tar archive (optionally gzip), streamed and size-capped both as sent and as
 *   unpacked, unpacked without following symlinks, with no absolute paths, no "..", no device
 *   nodes or FIFOs, hard links inside the tree, and no setuid/setgid bits kept.
 */
import { promises as fsp, realpathSync, statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { x as extract, type ReadEntry } from 'tar';
import { LoomError } from '../common/errors.js';
import { formatBytes } from '../common/quantity.js';

/** Never registered, whatever the import roots say. */
export const SYSTEM_TREES = ['/etc', '/dev', '/proc', '/sys', '/boot', '/run'];

const under = (p: string, root: string) => p === root || p.startsWith(root === '/' ? '/' : `${root}/`);

export interface ImportedPath {
  /** The real path to copy from. */
  path: string;
  dev: number;
  ino: number;
}

/**
 * Resolves a rootfs_path against the import roots. One message for missing, forbidden, not a
 * directory and outside the roots. The caller re-checks identity() around the copy.
 */
export function resolveImportPath(p: string, roots: readonly string[], dataDir: string): ImportedPath {
  const refuse = () => new LoomError(400, 'INVALID_ROOTFS_PATH', `rootfs_path ${JSON.stringify(p.slice(0, 256))} is not a directory under an import root (LOOM_BRANCHING_IMPORT_ROOTS)`);
  if (!isAbsolute(p) || resolve(p) !== p || p.includes('\0')) throw refuse();
  const realRoots = roots.flatMap((r) => {
    try {
      return [realpathSync(r)];
    } catch {
      return [];
    }
  });
  let real: string;
  let data = resolve(dataDir);
  try {
    real = realpathSync(p);
    data = realpathSync(data);
  } catch {
    throw refuse();
  }
  if (!realRoots.some((r) => under(real, r))) throw refuse();
  if (real === '/' || SYSTEM_TREES.some((s) => under(real, s))) throw refuse();
  if (under(real, data) || under(data, real)) throw refuse();
  const id = identity(real);
  if (!id) throw refuse();
  return { path: real, ...id };
}

/** dev/ino of a real directory (not following a final symlink), or null. */
export function identity(path: string): { dev: number; ino: number } | null {
  try {
    const st = statSync(path, { throwIfNoEntry: false });
    if (!st || !st.isDirectory() || realpathSync(path) !== path) return null;
    return { dev: st.dev, ino: st.ino };
  } catch {
    return null;
  }
}

/** Throws unless the path still names the directory that was checked (a swapped path is refused). */
export function requireSameDirectory(checked: ImportedPath): void {
  const now = identity(checked.path);
  if (!now || now.dev !== checked.dev || now.ino !== checked.ino) {
    throw new LoomError(409, 'ROOTFS_PATH_CHANGED', 'rootfs_path changed while it was being registered; try again');
  }
}

const ALLOWED_TYPES = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink', 'Link']);

/**
 * Streams a tar (or tar.gz) from `body` into the empty directory `dest`. Throws 413 past
 * maxBytes (sent or unpacked) and 400 naming the first unsafe entry; the caller removes `dest`.
 */
export async function unpackArchive(body: Readable, dest: string, maxBytes: number): Promise<{ files: number; bytes: number }> {
  await fsp.mkdir(dest, { recursive: true });
  let refusal: LoomError | null = null;
  let sent = 0;
  let unpacked = 0;
  let files = 0;
  const tooBig = () => new LoomError(413, 'ARCHIVE_TOO_LARGE', `the archive is larger than the limit of ${formatBytes(maxBytes)} (LOOM_BRANCHING_ARCHIVE_MAX_BYTES)`);
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      sent += chunk.length;
      if (sent > maxBytes) return cb(tooBig());
      cb(null, chunk);
    },
  });
  // Symlinks are made last, by us: absolute targets (normal in a rootfs: bin/sh -> /bin/busybox)
  // stay as they are, and no entry can be written through a link made earlier in the stream.
  const symlinks: { path: string; target: string; uid: number; gid: number }[] = [];
  const unpack = extract({
    cwd: dest,
    strict: false,
    onwarn: (code: string, message: string | Error) => {
      if (refusal || code === 'TAR_ENTRY_INFO') return;
      refusal = new LoomError(400, 'INVALID_ARCHIVE', `the archive could not be unpacked: ${String(message instanceof Error ? message.message : message).replace(/\s+/g, ' ').slice(0, 200)}`);
    },
    preserveOwner: true,
    unlink: true,
    maxDepth: 256,
    filter: (_path: string, e: unknown) => {
      const entry = e as ReadEntry;
      if (refusal) return false;
      const p = String(entry.path);
      const bad = (why: string, status = 400, code = 'INVALID_ARCHIVE') => {
        refusal = new LoomError(status, code, `archive entry ${JSON.stringify(p.slice(0, 200))} ${why}`);
        unpack.abort(refusal);
        return false;
      };
      if (p.startsWith('/') || p.split('/').includes('..')) return bad('has an absolute path or ".."; paths must stay inside the root filesystem');
      if (!ALLOWED_TYPES.has(entry.type)) return bad(`is a ${entry.type}; device nodes, FIFOs and other special files are not allowed`);
      if (entry.type === 'Link') {
        const l = String(entry.linkpath ?? '');
        if (l.startsWith('/') || l.split('/').includes('..')) return bad('is a hard link that points outside the archive');
      }
      if (entry.type === 'SymbolicLink') {
        const target = String(entry.linkpath ?? '');
        if (!target || target.includes('\0')) return bad('is a symlink without a target');
        symlinks.push({ path: p.replace(/\/+$/, ''), target, uid: entry.uid ?? 0, gid: entry.gid ?? 0 });
        files++;
        return false;
      }
      unpacked += entry.size ?? 0;
      if (unpacked > maxBytes) {
        refusal = tooBig();
        unpack.abort(refusal);
        return false;
      }
      // setuid/setgid never survive an upload.
      if (typeof entry.mode === 'number') entry.mode &= 0o1777;
      files++;
      return true;
    },
  });
  // The request stream is piped, not pipelined: a refusal must not destroy the socket, so the
  // caller can drain what is left and the client reads the answer.
  body.on('error', (e) => counter.destroy(e));
  body.pipe(counter);
  try {
    await pipeline(counter, unpack);
  } catch (e) {
    body.unpipe(counter);
    if (refusal) throw refusal;
    if (e instanceof LoomError) throw e;
    const msg = (e as Error).message ?? String(e);
    throw new LoomError(400, 'INVALID_ARCHIVE', `the archive could not be unpacked: ${msg.replace(/\s+/g, ' ').slice(0, 200)}`);
  }
  if (refusal) throw refusal;
  if (files === 0) throw new LoomError(400, 'INVALID_ARCHIVE', 'the archive holds no files');
  for (const l of symlinks) await makeSymlink(dest, l);
  // Belt and braces: nothing setuid/setgid, whatever path the mode took.
  await stripSetid(dest);
  return { files, bytes: unpacked };
}

async function stripSetid(dir: string): Promise<void> {
  const ents = await fsp.readdir(dir, { withFileTypes: true });
  for (const e of ents) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory()) await stripSetid(p);
    if (e.isSymbolicLink()) continue;
    const st = await fsp.lstat(p);
    if (st.mode & 0o6000) await fsp.chmod(p, st.mode & 0o1777);
  }
}

/** Creates one deferred symlink; every directory on its way must be a real directory inside dest. */
async function makeSymlink(dest: string, l: { path: string; target: string; uid: number; gid: number }): Promise<void> {
  const parts = l.path.split('/').filter((x) => x && x !== '.');
  if (parts.length === 0) throw new LoomError(400, 'INVALID_ARCHIVE', `archive symlink ${JSON.stringify(l.path.slice(0, 200))} has no name`);
  let dir = dest;
  for (const part of parts.slice(0, -1)) {
    dir = `${dir}/${part}`;
    const st = await fsp.lstat(dir).catch(() => null);
    if (!st) await fsp.mkdir(dir);
    else if (!st.isDirectory()) throw new LoomError(400, 'INVALID_ARCHIVE', `archive entry ${JSON.stringify(l.path.slice(0, 200))} is written through a symlink`);
  }
  const at = `${dir}/${parts[parts.length - 1]}`;
  if (await fsp.lstat(at).then(() => true, () => false)) {
    throw new LoomError(400, 'INVALID_ARCHIVE', `archive symlink ${JSON.stringify(l.path.slice(0, 200))} collides with another entry (entries may not be written through a symlink)`);
  }
  await fsp.symlink(l.target, at);
  await fsp.lchown(at, l.uid, l.gid).catch(() => undefined);
}
