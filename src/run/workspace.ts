/**
 * The isolated workspace: a clone of the repository at HEAD (detached) that borrows its objects
 * (`git clone --shared`, an alternates file — no object is copied), plus the working tree's
 * uncommitted state: modified, staged, renamed and deleted tracked files and untracked files that
 * are not ignored. Ignored files stay out; symlinks are recreated as links; special files are
 * skipped with a warning. Single files are cloned with FICLONE (a reflink where the filesystem
 * allows, a plain copy otherwise) — the per-file form of the copy primitive.
 */
import { execFile } from 'node:child_process';
import { constants as fsc } from 'node:fs';
import { appendFile, chmod, copyFile, lstat, mkdir, mkdtemp, readlink, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { safeRelative } from './workflow.js';

const run = promisify(execFile);

export async function git(cwd: string, args: string[]): Promise<string> {
  const { stdout } = await run('git', args, { cwd, maxBuffer: 1 << 30, encoding: 'utf8', env: { ...process.env, GIT_TERMINAL_PROMPT: '0', LC_ALL: 'C' } });
  return stdout;
}

export interface WorkspaceResult {
  path: string;
  headSha: string;
  copied: number;
  deleted: number;
  symlinks: number;
  skipped: string[];
}

const CHECKOUT_WORKERS = 8;

/** Paths the runner itself writes; never carried over from the checkout. */
const RUNTIME_PREFIX = '.loom/.runtime/';

/** Lists the working tree's changes relative to HEAD: paths to bring over and paths to remove. */
async function dirtyPaths(root: string): Promise<{ changed: Set<string>; untracked: string[] }> {
  const changed = new Set<string>();
  const diff = (await git(root, ['diff', '--name-status', '-z', '--no-renames', 'HEAD', '--'])).split('\0');
  // With renames off a rename is a delete plus an add; both paths are resolved against the working tree.
  for (let i = 0; i + 1 < diff.length; i += 2) changed.add(diff[i + 1]!);
  const untracked = (await git(root, ['ls-files', '-z', '--others', '--exclude-standard'])).split('\0').filter(Boolean);
  return { changed, untracked };
}

/**
 * Makes every parent of `rel` inside the workspace a real directory. A parent that is a symlink
 * or a file (HEAD's version of a path the working tree turned into a directory) is replaced, so a
 * write never follows a link out of the workspace. With `create` false, answers whether the
 * parents are already real directories, changing nothing.
 */
async function realParents(ws: string, rel: string, create: boolean): Promise<boolean> {
  const parts = rel.split('/').slice(0, -1);
  let cur = ws;
  for (const part of parts) {
    cur = join(cur, part);
    let st;
    try {
      st = await lstat(cur);
    } catch {
      if (!create) return false;
      await mkdir(cur, { recursive: true });
      continue;
    }
    if (st.isDirectory()) continue;
    if (!create) return false;
    await rm(cur, { force: true });
    await mkdir(cur, { recursive: true });
  }
  return true;
}

async function bring(root: string, ws: string, rel: string, r: WorkspaceResult, warn: (m: string) => void): Promise<void> {
  if (!safeRelative(rel) || rel.startsWith(RUNTIME_PREFIX) || rel === '.git' || rel.startsWith('.git/')) return;
  const src = join(root, rel);
  const dest = join(ws, rel);
  let st;
  try {
    st = await lstat(src);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT' && (e as NodeJS.ErrnoException).code !== 'ENOTDIR') throw e;
    // Gone from the working tree: deleted (or renamed away).
    if (await realParents(ws, rel, false)) await rm(dest, { force: true, recursive: false }).catch(() => undefined);
    r.deleted++;
    return;
  }
  if (st.isDirectory()) {
    // A tracked symlink or file that became a directory: drop HEAD's version; the directory's
    // untracked contents are brought over one by one.
    const have = await realParents(ws, rel, false) ? await lstat(dest).catch(() => undefined) : undefined;
    if (have && !have.isDirectory()) {
      await rm(dest, { force: true });
      return;
    }
    // A gitlink (submodule) shows up as a directory: its contents are another repository's.
    r.skipped.push(rel);
    warn(`skipped ${rel}: submodules are not copied into the isolated workspace`);
    return;
  }
  if (!st.isFile() && !st.isSymbolicLink()) {
    r.skipped.push(rel);
    warn(`skipped ${rel}: special files (devices, sockets, fifos) are not supported`);
    return;
  }
  await realParents(ws, rel, true);
  await rm(dest, { force: true });
  if (st.isSymbolicLink()) {
    await symlink(await readlink(src), dest);
    r.symlinks++;
  } else {
    await copyFile(src, dest, fsc.COPYFILE_FICLONE);
    await chmod(dest, st.mode & 0o7777);
    r.copied++;
  }
}

/**
 * Creates the workspace under the OS temp dir as `loom-run-local-<runId>-XXXXXX`. On any failure
 * the directory is removed and the error rethrown.
 */
export async function prepareWorkspace(repoRoot: string, runId: string, warn: (m: string) => void): Promise<WorkspaceResult> {
  const headSha = (await git(repoRoot, ['rev-parse', '--verify', 'HEAD'])).trim();
  const ws = await mkdtemp(join(tmpdir(), `loom-run-local-${runId}-`));
  const r: WorkspaceResult = { path: ws, headSha, copied: 0, deleted: 0, symlinks: 0, skipped: [] };
  try {
    await git(repoRoot, ['clone', '-q', '--shared', '--no-checkout', '--', repoRoot, ws]);
    // Writing the tree is I/O-bound (open/write/close per file), so more workers than cores pay:
    // measured on a 50k-file tree, 8 workers beat one per core (see bench/run-local).
    await git(ws, ['-c', 'advice.detachedHead=false', '-c', `checkout.workers=${CHECKOUT_WORKERS}`, 'checkout', '-q', '--detach', headSha]);
    // The run's own logs and receipts never show up as changes in the workspace.
    await mkdir(join(ws, '.git', 'info'), { recursive: true });
    await appendFile(join(ws, '.git', 'info', 'exclude'), `\n/${RUNTIME_PREFIX}\n`);
    const { changed, untracked } = await dirtyPaths(repoRoot);
    // Tracked changes first (they may turn HEAD's links into directories), then untracked files.
    // Small batches keep the number of open files bounded while still overlapping I/O.
    for (const list of [[...changed], untracked]) {
      for (let i = 0; i < list.length; i += 32) {
        await Promise.all(list.slice(i, i + 32).map((rel) => bring(repoRoot, ws, rel, r, warn)));
      }
    }
    return r;
  } catch (e) {
    await rm(ws, { recursive: true, force: true });
    throw e;
  }
}
