/**
 * What a test's containers leave on the host, scoped to ONE data dir and the container ids found in
 * it (other engineers run containers on this machine at the same time: nothing outside the data
 * dir and its ids is ever touched).
 *
 *   removeContainers(dir)  the teardown path: deletes every container under the data dir's runc
 *                          roots through the runtime (runc --root <root> delete --force), kills
 *                          the conmon processes named by the pid files in the data dir and
 *                          unmounts those containers' rootfs mounts.
 *   leftovers(dir)         what is still there: processes (conmon, or a container's init, whose
 *                          bundle/--root is under the dir or that sit in the ids' cgroups, and
 *                          hook helpers named by pid files under the dir), cgroups
 *                          /sys/fs/cgroup/<controller>/loom/<name with an id>, mounts under the
 *                          dir, and loop devices backed by files under it.
 *   cleanLeftovers(l)      kills, unmounts, detaches and removes them.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const UUID_RE = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;
const CGROUP_ROOT = '/sys/fs/cgroup';

export interface Leftovers {
  processes: { pid: number; cmd: string }[];
  cgroups: string[];
  mounts: string[];
  loops: { device: string; file: string }[];
}

export const isEmpty = (l: Leftovers) => !l.processes.length && !l.cgroups.length && !l.mounts.length && !l.loops.length;

export function describe(l: Leftovers): string {
  const parts: string[] = [];
  if (l.processes.length) parts.push(`processes: ${l.processes.map((p) => `${p.pid} (${p.cmd.slice(0, 160)})`).join('; ')}`);
  if (l.cgroups.length) parts.push(`cgroups: ${l.cgroups.join(', ')}`);
  if (l.mounts.length) parts.push(`mounts: ${l.mounts.join(', ')}`);
  if (l.loops.length) parts.push(`loop devices: ${l.loops.map((x) => `${x.device} → ${x.file}`).join(', ')}`);
  return parts.join('\n');
}

/** Files and dirs under dir up to `depth` levels (rootfs trees are deep; what we look for is not). */
function walk(dir: string, depth: number, visit: (path: string, name: string, isDir: boolean) => void): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    const p = join(dir, name);
    let isDir = false;
    try {
      const st = statSync(p, { throwIfNoEntry: false });
      isDir = !!st?.isDirectory();
    } catch {
      continue;
    }
    visit(p, name, isDir);
    if (isDir && depth > 1 && name !== 'rootfs' && name !== 'upper' && name !== 'work') walk(p, depth - 1, visit);
  }
}

/** runc state roots under the data dir: directories holding <id>/state.json. */
export function runcRoots(dataDir: string): string[] {
  const roots = new Set<string>();
  walk(dataDir, 4, (p, name) => {
    if (name === 'state.json') roots.add(join(p, '..', '..'));
  });
  // A root whose containers are all gone still counts when it is named like one.
  walk(dataDir, 3, (p, name, isDir) => {
    if (isDir && (name === 'runc' || name === 'crun')) roots.add(p);
  });
  return [...roots].map((r) => join(r));
}

/** Container / weaver ids known to the data dir: uuid-named entries near its top. */
export function idsIn(dataDir: string): string[] {
  const ids = new Set<string>();
  walk(dataDir, 4, (_p, name) => {
    const m = UUID_RE.exec(name);
    if (m) ids.add(m[0]);
  });
  return [...ids];
}

function cmdline(pid: number): string | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
  } catch {
    return null;
  }
}

/** Deletes the data dir's containers through the runtime and kills its conmons; returns what it removed. */
export function removeContainers(dataDir: string): string[] {
  const done: string[] = [];
  for (const root of runcRoots(dataDir)) {
    const r = spawnSync('runc', ['--root', root, 'list', '-q'], { encoding: 'utf8' });
    for (const id of (r.stdout ?? '').split('\n').filter(Boolean)) {
      spawnSync('runc', ['--root', root, 'delete', '--force', id], { stdio: 'ignore' });
      done.push(`runc container ${id} (root ${root})`);
    }
  }
  // conmon writes its pid to <bundle>/conmon.pid (-P); only a conmon whose command line names this
  // data dir is ours (a pid may have been reused).
  walk(dataDir, 6, (p, name) => {
    if (name !== 'conmon.pid') return;
    const pid = Number(readFileSync(p, 'utf8').trim());
    const cmd = pid > 0 ? cmdline(pid) : null;
    if (cmd && cmd.includes('conmon') && cmd.includes(dataDir)) {
      try {
        process.kill(pid, 'SIGKILL');
        done.push(`conmon ${pid}`);
      } catch {
        /* already gone */
      }
    }
  });
  // Helpers a RuntimeHook started beside a container (the tunnel's wireguard-go in the weaver's
  // netns) outlive a bare `runc delete`; the provisioner's delete stops them, so do it here too.
  for (const pid of hookProcesses(dataDir)) {
    try {
      process.kill(pid, 'SIGKILL');
      done.push(`hook process ${pid}`);
    } catch {
      /* already gone */
    }
  }
  // The removed containers' own mounts (their rootfs) go with them, as a delete would do.
  const ids = done.map((d) => UUID_RE.exec(d)?.[0]).filter((x): x is string => !!x);
  for (const m of mountsUnder(dataDir).sort((a, b) => b.length - a.length)) {
    if (ids.some((id) => m.includes(id)) && spawnSync('umount', ['-l', m]).status === 0) done.push(`mount ${m}`);
  }
  return done;
}

function cgroupsOf(ids: string[]): string[] {
  if (!ids.length) return [];
  const out: string[] = [];
  let controllers: string[] = [];
  try {
    controllers = readdirSync(CGROUP_ROOT);
  } catch {
    return [];
  }
  // cgroup v1 controllers (and the hybrid's unified tree) or a pure v2 root.
  const bases = [...controllers.map((c) => join(CGROUP_ROOT, c, 'loom')), join(CGROUP_ROOT, 'loom')];
  for (const base of bases) {
    let names: string[] = [];
    try {
      names = readdirSync(base);
    } catch {
      continue;
    }
    for (const n of names) if (ids.some((id) => n.includes(id)) && statSync(join(base, n)).isDirectory()) out.push(join(base, n));
  }
  return out;
}

function cgroupProcs(dir: string): number[] {
  try {
    return readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Mount points at or below dir (from /proc/self/mountinfo; octal escapes decoded). */
export function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => (l.split(' ')[4] ?? '').replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((m) => m === dir || m.startsWith(dir + '/'));
}

/** Loop devices whose backing file is under dir. */
export function loopsUnder(dir: string): { device: string; file: string }[] {
  const out: { device: string; file: string }[] = [];
  let names: string[] = [];
  try {
    names = readdirSync('/sys/block').filter((n) => n.startsWith('loop'));
  } catch {
    return out;
  }
  for (const n of names) {
    try {
      const file = readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim().replace(/ \(deleted\)$/, '');
      if (file === dir || file.startsWith(dir + '/')) out.push({ device: `/dev/${n}`, file });
    } catch {
      /* not bound */
    }
  }
  return out;
}

/** Everything of the data dir's containers still on the host. `ids` adds ids known from elsewhere. */
export function leftovers(dataDir: string, extraIds: string[] = []): Leftovers {
  const ids = [...new Set([...idsIn(dataDir), ...extraIds])];
  const cgroups = cgroupsOf(ids);
  const pids = new Set<number>();
  for (const cg of cgroups) for (const pid of cgroupProcs(cg)) pids.add(pid);
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    const cmd = cmdline(Number(d));
    // conmon names its bundle (-b) and the runtime's --root, both under the data dir.
    if (cmd && cmd.includes(dataDir) && /(^|\/)conmon\s/.test(cmd)) pids.add(Number(d));
    if (cmd && cmd.includes(dataDir) && /(^|\/)(runc|crun)\s/.test(cmd)) pids.add(Number(d));
  }
  for (const pid of hookProcesses(dataDir)) pids.add(pid);
  const processes = [...pids].map((pid) => ({ pid, cmd: cmdline(pid) ?? '?' })).filter((p) => p.cmd !== '?' && !isZombie(p.pid));
  return { processes, cgroups, mounts: mountsUnder(dataDir), loops: loopsUnder(dataDir) };
}

/** Live processes started by runtime hooks, found by the pid files they keep under the data dir (wireguard-go.pid). */
function hookProcesses(dataDir: string): number[] {
  const found: number[] = [];
  // <dataDir>/local/weavers/<id>/hooks/tunnel/wireguard-go.pid
  walk(dataDir, 6, (p, name) => {
    if (name !== 'wireguard-go.pid') return;
    const pid = Number(readFileSync(p, 'utf8').trim());
    const cmd = pid > 0 ? cmdline(pid) : null;
    if (cmd && cmd.includes('wireguard-go') && !isZombie(pid)) found.push(pid);
  });
  return found;
}

function isZombie(pid: number): boolean {
  try {
    return / Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\)/, ''));
  } catch {
    return true;
  }
}

/** Removes what leftovers() found; returns what could not be removed. */
export function cleanLeftovers(dataDir: string, l: Leftovers): Leftovers {
  for (const p of l.processes) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  // Processes left in the cgroups (a container's children) go too, before the cgroups.
  for (const cg of l.cgroups) {
    const freezer = cg.includes('/freezer/') ? join(cg, 'freezer.state') : null;
    if (freezer && existsSync(freezer)) spawnSync('sh', ['-c', 'echo THAWED > "$1"', 'sh', freezer]);
    for (const pid of cgroupProcs(cg)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  waitGone(l.processes.map((p) => p.pid));
  for (const m of [...l.mounts].sort((a, b) => b.length - a.length)) spawnSync('umount', ['-l', m]);
  for (const x of l.loops) spawnSync('losetup', ['-d', x.device]);
  for (const cg of [...l.cgroups].sort((a, b) => b.length - a.length)) {
    try {
      rmdirSync(cg);
    } catch {
      /* still busy: reported below */
    }
  }
  const after = leftovers(dataDir, l.cgroups.map((c) => UUID_RE.exec(c)?.[0]).filter((x): x is string => !!x));
  return after;
}

function waitGone(pids: number[]): void {
  const alive = () => pids.filter((p) => existsSync(`/proc/${p}`) && !isZombie(p));
  for (let i = 0; i < 200 && alive().length; i++) spawnSync('sleep', ['0.01']);
}
