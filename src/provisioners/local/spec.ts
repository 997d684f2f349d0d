/**
 * OCI runtime config.json generation for weavers and for plain (branching) containers.
 * Own pid, mount, ipc, uts, network and cgroup namespaces (and a user namespace when given a base); a non-root user by default;
 * cgroup cpu/memory/pids limits; masked and read-only /proc paths; no new privileges;
 * a small capability set; rlimits.
 */
import { readFileSync } from 'node:fs';
import { LoomError } from '../../common/errors.js';
import { USERNS_SIZE } from './idmap.js';

export interface OciMount {
  destination: string;
  type?: string;
  source: string;
  options?: string[];
}

export interface OciSpec {
  ociVersion: string;
  process: {
    terminal: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    args: string[];
    env: string[];
    cwd: string;
    capabilities: Record<'bounding' | 'effective' | 'permitted' | 'inheritable' | 'ambient', string[]>;
    rlimits: { type: string; hard: number; soft: number }[];
    noNewPrivileges: boolean;
    consoleSize?: { height: number; width: number };
  };
  root: { path: string; readonly: boolean };
  hostname: string;
  mounts: OciMount[];
  linux: {
    namespaces: { type: string; path?: string }[];
    uidMappings?: { containerID: number; hostID: number; size: number }[];
    gidMappings?: { containerID: number; hostID: number; size: number }[];
    cgroupsPath: string;
    resources: {
      devices: { allow: boolean; access: string; type?: string; major?: number; minor?: number }[];
      memory?: { limit: number; swap?: number };
      cpu?: { quota: number; period: number };
      pids?: { limit: number };
    };
    maskedPaths: string[];
    readonlyPaths: string[];
  };
}

/** CPU quantity ("500m", "2", "1.5") → cores. */
export function parseCpuQuantity(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(m?)$/.exec(q.trim());
  if (!m) throw new LoomError(400, 'bad_resources', `invalid cpu quantity ${JSON.stringify(q)} (e.g. 500m or 2)`);
  const n = Number(m[1]) / (m[2] === 'm' ? 1000 : 1);
  if (!(n > 0)) throw new LoomError(400, 'bad_resources', `cpu quantity must be positive: ${JSON.stringify(q)}`);
  return n;
}

const MEM_UNITS: Record<string, number> = {
  '': 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4,
};

/** Memory quantity ("512Mi", "1Gi", "1000000") → bytes. */
export function parseMemoryQuantity(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$/.exec(q.trim());
  if (!m) throw new LoomError(400, 'bad_resources', `invalid memory quantity ${JSON.stringify(q)} (e.g. 512Mi)`);
  const bytes = Math.floor(Number(m[1]) * MEM_UNITS[m[2] ?? '']!);
  if (bytes < 4 * 1024 * 1024) throw new LoomError(400, 'bad_resources', `memory quantity ${JSON.stringify(q)} is below 4Mi`);
  return bytes;
}

export const CPU_PERIOD_US = 100_000;

/** 65536 open files, or the host's hard limit when lower (raising it needs CAP_SYS_RESOURCE in the init ns). */
const NOFILE = (() => {
  try {
    const m = /^Max open files\s+\S+\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    const hard = m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity;
    return Math.min(65536, Number.isFinite(hard) && hard > 0 ? hard : 65536);
  } catch {
    return 1024;
  }
})();

/** Docker's default set minus a few; enough for a dev shell, nothing that reaches the host. */
export const DEFAULT_CAPABILITIES = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID',
  'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_SETFCAP',
];

export interface ContainerSpecInput {
  /** Absolute path of the root filesystem (the bundle's rootfs). */
  rootfs: string;
  args: string[];
  env: Record<string, string>;
  cwd: string;
  uid: number;
  gid: number;
  terminal: boolean;
  hostname: string;
  /** cgroup path relative to the hierarchy root, e.g. "/loom/<id>". */
  cgroupsPath: string;
  cpu?: string;
  memory?: string;
  pidsLimit?: number;
  readonlyRootfs?: boolean;
  /** Extra bind mounts (e.g. the workspace at /workspace). */
  binds?: { source: string; destination: string; readonly?: boolean }[];
  /** Give the container a private network namespace (default true). */
  privateNetwork?: boolean;
  consoleSize?: { cols: number; rows: number };
  /** Run in a user namespace mapping ids 0..65535 inside to usernsBase.. on the host (0/absent: none). */
  usernsBase?: number;
}

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export function buildOciSpec(i: ContainerSpecInput): OciSpec {
  const caps = [...DEFAULT_CAPABILITIES];
  // Non-root processes get no effective capabilities (bounding keeps the set for setuid-less su etc.).
  const nonRoot = i.uid !== 0;
  const env: Record<string, string> = { PATH: DEFAULT_PATH, HOSTNAME: i.hostname, ...(i.terminal ? { TERM: 'xterm-256color' } : {}), ...i.env };
  const namespaces = [{ type: 'pid' }, { type: 'mount' }, { type: 'ipc' }, { type: 'uts' }, { type: 'cgroup' }];
  if (i.privateNetwork !== false) namespaces.push({ type: 'network' });
  const userns = (i.usernsBase ?? 0) > 0;
  if (userns) namespaces.push({ type: 'user' });
  const resources: OciSpec['linux']['resources'] = {
    devices: [{ allow: false, access: 'rwm' }],
    pids: { limit: i.pidsLimit ?? 1024 },
  };
  if (i.memory) {
    const limit = parseMemoryQuantity(i.memory);
    resources.memory = { limit, swap: limit };
  }
  if (i.cpu) resources.cpu = { quota: Math.max(1000, Math.round(parseCpuQuantity(i.cpu) * CPU_PERIOD_US)), period: CPU_PERIOD_US };
  const spec: OciSpec = {
    ociVersion: '1.0.2',
    process: {
      terminal: i.terminal,
      user: { uid: i.uid, gid: i.gid },
      args: i.args,
      env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      cwd: i.cwd,
      capabilities: {
        bounding: caps,
        effective: nonRoot ? [] : caps,
        permitted: nonRoot ? [] : caps,
        inheritable: [],
        ambient: [],
      },
      rlimits: [
        { type: 'RLIMIT_NOFILE', hard: NOFILE, soft: NOFILE },
        { type: 'RLIMIT_CORE', hard: 0, soft: 0 },
      ],
      noNewPrivileges: true,
    },
    root: { path: i.rootfs, readonly: i.readonlyRootfs ?? false },
    hostname: i.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      // sysfs can only be mounted by the owner of the network namespace: a user-namespaced
      // container on the host network gets a read-only bind of the host's /sys instead.
      userns && i.privateNetwork === false
        ? { destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] }
        : { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/sys/fs/cgroup', type: 'cgroup', source: 'cgroup', options: ['nosuid', 'noexec', 'nodev', 'relatime', 'ro'] },
      ...(i.binds ?? []).map((b) => ({
        destination: b.destination,
        type: 'bind',
        source: b.source,
        options: ['rbind', 'nosuid', 'nodev', b.readonly ? 'ro' : 'rw'],
      })),
    ],
    linux: {
      namespaces,
      cgroupsPath: i.cgroupsPath,
      resources,
      maskedPaths: [
        '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
        '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/devices/virtual/powercap',
      ],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
  if (userns) {
    const map = [{ containerID: 0, hostID: i.usernsBase!, size: USERNS_SIZE }];
    spec.linux.uidMappings = map;
    spec.linux.gidMappings = map.map((m) => ({ ...m }));
  }
  if (i.terminal && i.consoleSize) spec.process.consoleSize = { height: i.consoleSize.rows, width: i.consoleSize.cols };
  return spec;
}
