/**
 * The user namespace of `loom run --local` container jobs. `loom run` has no server, so the id
 * range is the CLI's own: ids 0..65535 inside map to base..base+65535 on the host, base from
 * LOOM_RUN_USERNS_BASE (default 100000, the same default as the weavers' range). Uid 0 inside is
 * then an unprivileged host uid, and a process that escapes the container is not root.
 *
 * Files the container must use are owned inside that range (image root: the image store's
 * shifted unpack, as for weavers; workspace: shiftInto before the first step), and a
 * bind-mounted workspace is handed back to the invoking user afterwards (shiftBack).
 */
import { promises as fsp, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { USERNS_SIZE, type IdMap } from '../provisioners/local/idmap.js';

export const DEFAULT_RUN_USERNS_BASE = 100000;
/** Below this the range would overlap ordinary host users (and host root at 0). */
const MIN_BASE = 65536;
const MAX_BASE = 2 ** 32 - 1 - USERNS_SIZE;

/** The id map from LOOM_RUN_USERNS_BASE; throws a one-line error on a bad value. */
export function runIdMap(value: string | undefined = process.env['LOOM_RUN_USERNS_BASE']): IdMap {
  if (value === undefined || value === '') return { base: DEFAULT_RUN_USERNS_BASE };
  if (!/^\d+$/.test(value.trim())) throw new Error(`LOOM_RUN_USERNS_BASE must be a whole number, got ${JSON.stringify(value)}`);
  const base = Number(value.trim());
  if (base < MIN_BASE || base > MAX_BASE) {
    throw new Error(`LOOM_RUN_USERNS_BASE must be between ${MIN_BASE} and ${MAX_BASE} (container jobs always run in a user namespace; the range may not overlap host root or ordinary users), got ${base}`);
  }
  return { base };
}

/** Refuses, with what is missing, when this host cannot run a container in a user namespace. */
export function checkUsernsHost(readProc: (p: string) => string = (p) => readFileSync(p, 'utf8')): void {
  let max: string;
  try {
    max = readProc('/proc/sys/user/max_user_namespaces').trim();
  } catch {
    throw new Error('container jobs run in a user namespace, and this kernel has none (/proc/sys/user/max_user_namespaces is missing)');
  }
  if (Number(max) <= 0) throw new Error('container jobs run in a user namespace, and user namespaces are disabled on this host (sysctl user.max_user_namespaces=0)');
}

const inRange = (id: number, base: number) => id >= base && id < base + USERNS_SIZE;

/** Walks dir (not following links), skipping the paths in skip. */
async function walk(dir: string, skip: Set<string>, fn: (p: string, st: import('node:fs').Stats) => Promise<void>): Promise<void> {
  const st = await fsp.lstat(dir);
  await fn(dir, st);
  if (!st.isDirectory()) return;
  for (const name of await fsp.readdir(dir)) {
    const p = join(dir, name);
    if (!skip.has(p)) await walk(p, skip, fn);
  }
}

/**
 * Moves every entry under dir not yet owned inside the range into it (host id n → base+n; ids
 * ≥ 65536 → nobody inside). Entries already in the range are left alone, so it can run again
 * after the cache restore added files. setuid/setgid bits (cleared by chown) are put back:
 * they only ever act inside the namespace.
 */
export async function shiftInto(dir: string, base: number, skip: string[] = []): Promise<void> {
  const shift = (id: number) => (inRange(id, base) ? id : base + (id < USERNS_SIZE ? id : USERNS_SIZE - 2));
  await walk(dir, new Set(skip), async (p, st) => {
    if (inRange(st.uid, base) && inRange(st.gid, base)) return;
    await fsp.lchown(p, shift(st.uid), shift(st.gid));
    if (!st.isSymbolicLink() && st.mode & 0o6000) await fsp.chmod(p, st.mode & 0o7777);
  });
}

/**
 * Hands every entry under dir owned inside the range back to uid:gid (the invoking user),
 * whatever id it had inside. setuid/setgid bits are dropped for good: a job must not leave a
 * set-id program owned by the invoking user on the host.
 */
export async function shiftBack(dir: string, base: number, uid: number, gid: number, skip: string[] = []): Promise<void> {
  await walk(dir, new Set(skip), async (p, st) => {
    if (!inRange(st.uid, base) && !inRange(st.gid, base)) return;
    await fsp.lchown(p, inRange(st.uid, base) ? uid : st.uid, inRange(st.gid, base) ? gid : st.gid);
    if (!st.isSymbolicLink() && st.mode & 0o6000) await fsp.chmod(p, st.mode & 0o1777);
  });
}

/**
 * A bind-mounted workspace is shared by the container jobs of a stage running in parallel: it is
 * shifted into the range by the first of them and handed back when the last one is done.
 */
const leases = new Map<string, { count: number; ready: Promise<void> }>();

export function leaseWorkspace(dir: string, base: number, skip: string[]): Promise<void> {
  const l = leases.get(dir);
  if (l) {
    l.count++;
    l.ready = l.ready.then(() => shiftInto(dir, base, skip));
    return l.ready;
  }
  const fresh = { count: 1, ready: shiftInto(dir, base, skip) };
  leases.set(dir, fresh);
  return fresh.ready;
}

/** Returns true when this was the last lease (the workspace was handed back). */
export async function releaseWorkspace(dir: string, base: number, uid: number, gid: number, skip: string[]): Promise<boolean> {
  const l = leases.get(dir);
  if (!l) return false;
  await l.ready.catch(() => undefined);
  if (--l.count > 0) return false;
  leases.delete(dir);
  await shiftBack(dir, base, uid, gid, skip);
  return true;
}
