/**
 * Weaver networking. Every weaver gets a private network namespace; the runtime brings up
 * `lo` (runc/crun configure the loopback interface for a new netns), and nothing else exists
 * unless the server runs with network = 'slirp4netns': then slirp4netns gives the namespace a
 * tap0 with NAT to the outside (10.0.2.0/24, DNS 10.0.2.3), best effort.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { which } from './runtime.js';
import { pidAlive } from './util.js';

export type NetworkMode = 'loopback' | 'slirp4netns';

export const SLIRP_RESOLV_CONF = 'nameserver 10.0.2.3\n';

/** Starts slirp4netns for a container's netns; returns its pid, or null when unavailable. */
export async function startSlirp(containerPid: number, pidFile: string): Promise<number | null> {
  const bin = which('slirp4netns');
  if (!bin) return null;
  const child = spawn(bin, ['--configure', '--mtu=65520', '--disable-host-loopback', String(containerPid), 'tap0'], {
    stdio: 'ignore',
    detached: true,
  });
  child.unref();
  if (!child.pid) return null;
  await fsp.writeFile(pidFile, String(child.pid));
  return child.pid;
}

export async function stopSlirp(pidFile: string): Promise<void> {
  let pid: number;
  try {
    pid = Number((await fsp.readFile(pidFile, 'utf8')).trim());
  } catch {
    return;
  }
  if (!(pid > 0) || !(await pidAlive(pid))) return;
  try {
    const comm = (await fsp.readFile(`/proc/${pid}/comm`, 'utf8')).trim();
    if (comm === 'slirp4netns') process.kill(pid, 'SIGTERM');
  } catch {
    /* gone */
  }
}
