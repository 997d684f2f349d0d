/**
 * The user namespace every local weaver runs in: ids 0..65535 inside map to
 * base..base+65535 on the host (one range shared by all weavers). Host-side code that
 * writes files a weaver will see (workspace, clone, /etc edits) turns container ids into
 * host ids through hostId(), and nothing else adds the base.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';

export const USERNS_SIZE = 65536;

export interface IdMap {
  /** Host id that id 0 inside maps to; 0 means no user namespace (ids are host ids). */
  base: number;
}

/** The host uid/gid of an id inside the container. */
export function hostId(map: IdMap, id: number): number {
  if (map.base === 0) return id;
  if (!Number.isInteger(id) || id < 0 || id >= USERNS_SIZE) throw new RangeError(`id ${id} is outside the weaver's user namespace (0..${USERNS_SIZE - 1})`);
  return map.base + id;
}

/**
 * Shifts the ownership of every entry under dir by +base (ids already ≥ USERNS_SIZE become
 * the overflow id inside, i.e. host base+65534 = nobody). chown clears setuid/setgid bits, so the
 * mode is put back afterwards: the image's setuid binaries stay setuid *inside* the namespace,
 * where they can only gain ids of the range.
 */
export async function shiftOwnership(dir: string, base: number): Promise<void> {
  if (base === 0) return;
  const shift = (id: number) => base + (id < USERNS_SIZE ? id : USERNS_SIZE - 2);
  const one = async (p: string) => {
    const st = await fsp.lstat(p);
    await fsp.lchown(p, shift(st.uid), shift(st.gid));
    if (!st.isSymbolicLink() && st.mode & 0o6000) await fsp.chmod(p, st.mode & 0o7777);
    if (st.isDirectory()) {
      for (const name of await fsp.readdir(p)) await one(join(p, name));
    }
  };
  await one(dir);
}

/**
 * Lets group gid search (not list) dir: chgrp to gid and g+x, keeping the other bits (group
 * read/write are dropped: the group is the namespace's root, not a set of host users). runc's
 * init runs as the namespace's root when it enters the rootfs and needs this on every directory
 * above it. A directory already searchable by others is left alone.
 */
export async function grantSearch(dir: string, gid: number): Promise<void> {
  const st = await fsp.stat(dir);
  if (st.mode & 0o001) return;
  if (st.gid !== gid) await fsp.chown(dir, st.uid, gid);
  await fsp.chmod(dir, (st.mode & 0o7707) | 0o010);
}
