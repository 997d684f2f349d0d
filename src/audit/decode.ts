/**
 * Decodes the records ebpf/audit.bpf.c writes to its ring buffer (layout in ebpf/audit.h) into
 * kernel events: the envelope's process fields plus kind-specific details. The sidecar adds the
 * weaver identity, boot id and sequence numbers.
 */

/** Order matches enum ev_kind in ebpf/audit.h. */
export const EVENT_KINDS = [
  'process_exec', 'process_fork', 'process_exit',
  'file_open', 'file_write', 'file_metadata',
  'network_connect', 'network_listen', 'network_accept',
  'privilege_change', 'sandbox_escape', 'memory_exec',
] as const;
export type KernelEventType = (typeof EVENT_KINDS)[number];
export const EVENT_TYPES = [...EVENT_KINDS, 'audit_gap'] as const;
export type AuditEventType = (typeof EVENT_TYPES)[number];

/** Order matches enum sc_code in ebpf/audit.h. */
export const SYSCALLS = [
  '', 'execve', 'execveat',
  'open', 'openat', 'openat2', 'creat',
  'unlink', 'unlinkat', 'rename', 'renameat', 'renameat2', 'truncate',
  'chmod', 'fchmod', 'fchmodat', 'fchmodat2', 'chown', 'fchown', 'lchown', 'fchownat',
  'connect', 'listen', 'accept', 'accept4',
  'setuid', 'setgid', 'setreuid', 'setregid', 'setresuid', 'setresgid', 'setfsuid', 'setfsgid', 'capset',
  'setns', 'unshare', 'mount', 'ptrace', 'bpf', 'init_module', 'finit_module', 'perf_event_open',
  'memfd_create', 'mmap', 'mprotect',
] as const;

export interface KernelEvent {
  tsBootNs: bigint;
  cgroupId: bigint;
  weaverIdx: number;
  event_type: KernelEventType;
  pid: number;
  tid: number;
  ppid: number;
  uid: number;
  comm: string;
  exec_id: string;
  parent_exec_id: string;
  ret: number;
  details: Record<string, unknown>;
}

const HDR = 88;
const GEN_ARGS = 88;
const GEN_ADDR = 136;
const GEN_LEN1 = 176;
const GEN_STR = 184;
const EXEC_FILENAME = 104;
const EXEC_ARGV = 360;
const EXEC_CWD = 1384;
const CWD_NAME = 64;

const O_WRONLY = 0o1, O_RDWR = 0o2, O_CREAT = 0o100, O_TRUNC = 0o1000, O_APPEND = 0o2000;
const AF_INET = 2, AF_INET6 = 10;

function cstr(b: Buffer, start: number, max: number): string {
  const end = Math.min(b.length, start + max);
  let z = b.indexOf(0, start);
  if (z < 0 || z > end) z = end;
  return b.toString('utf8', start, z);
}

function ip(b: Buffer, off: number, family: number): string {
  if (family === AF_INET) return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(b.readUInt16BE(off + i).toString(16));
  // compress the longest zero run (RFC 5952 enough for display and comparison)
  const s = parts.join(':');
  const m = s.match(/(^|:)0(:0)+(:|$)/g);
  if (!m) return s;
  const longest = m.reduce((a, c) => (c.length > a.length ? c : a));
  return s.replace(longest, '::').replace(/:{3,}/, '::');
}

/** Splits a batch buffer from the addon into records (each carries its own length at offset 84). */
export function* records(batch: Buffer): Generator<Buffer> {
  let off = 0;
  while (off + HDR <= batch.length) {
    const len = batch.readUInt32LE(off + 84);
    if (len < HDR || off + len > batch.length) return; // malformed: stop rather than misread
    yield batch.subarray(off, off + len);
    off += len;
  }
}

export function decodeRecord(r: Buffer): KernelEvent | null {
  const kindIdx = r.readUInt32LE(40);
  const event_type = EVENT_KINDS[kindIdx];
  if (!event_type) return null;
  const sc = SYSCALLS[r.readUInt32LE(44)] ?? '';
  const ev: KernelEvent = {
    tsBootNs: r.readBigUInt64LE(0),
    cgroupId: r.readBigUInt64LE(8),
    exec_id: r.readBigUInt64LE(16).toString(),
    parent_exec_id: r.readBigUInt64LE(24).toString(),
    ret: Number(r.readBigInt64LE(32)),
    event_type,
    pid: r.readUInt32LE(48),
    tid: r.readUInt32LE(52),
    ppid: r.readUInt32LE(56),
    uid: r.readUInt32LE(60),
    comm: cstr(r, 64, 16),
    weaverIdx: r.readUInt32LE(80),
    details: {},
  };
  if (event_type === 'process_exec' && sc === 'execve' && r.length >= EXEC_CWD && ev.ret === 0) {
    const filenameLen = r.readUInt32LE(88);
    const argvLen = r.readUInt32LE(92);
    const depth = Math.min(r.readUInt32LE(96), 12);
    const argv = r.subarray(EXEC_ARGV, EXEC_ARGV + argvLen).toString('utf8').split('\0');
    if (argv.length && argv[argv.length - 1] === '') argv.pop();
    const comps: string[] = [];
    for (let i = depth - 1; i >= 0; i--) comps.push(cstr(r, EXEC_CWD + i * CWD_NAME, CWD_NAME));
    ev.details = {
      filename: cstr(r, EXEC_FILENAME, filenameLen || 256),
      argv,
      argv_truncated: argvLen >= 1024,
      cwd: '/' + comps.join('/'),
    };
    return ev;
  }
  const a = (i: number) => r.readBigUInt64LE(GEN_ARGS + i * 8);
  const ai = (i: number) => Number(BigInt.asIntN(32, a(i)));
  const len1 = r.length >= GEN_STR ? r.readUInt16LE(GEN_LEN1) : 0;
  const len2 = r.length >= GEN_STR ? r.readUInt16LE(GEN_LEN1 + 2) : 0;
  const s1 = len1 ? cstr(r, GEN_STR, len1) : undefined;
  const s2 = len2 ? cstr(r, GEN_STR + len1, len2) : undefined;
  const d: Record<string, unknown> = sc ? { syscall: sc } : {};
  switch (event_type) {
    case 'process_exec': // a failed exec (reported at syscall exit)
      d.filename = s1;
      break;
    case 'process_fork':
      d.child_pid = Number(a(0));
      d.child_exec_id = a(1).toString();
      break;
    case 'process_exit': {
      const status = ev.ret;
      d.status = status;
      d.signal = status & 0x7f;
      d.code = (status >> 8) & 0xff;
      ev.ret = d.signal ? 128 + (d.signal as number) : (d.code as number);
      break;
    }
    case 'file_open': {
      const flags = Number(a(5));
      d.path = s1;
      d.flags = flags;
      d.write = (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND)) !== 0;
      d.create = (flags & O_CREAT) !== 0;
      if (sc === 'openat' || sc === 'openat2') d.dirfd = ai(0);
      break;
    }
    case 'file_write':
      d.path = s1;
      if (s2 !== undefined) d.new_path = s2;
      break;
    case 'file_metadata':
      if (s1 !== undefined) d.path = s1;
      if (sc === 'fchmod' || sc === 'fchown') d.fd = ai(0);
      if (sc.includes('chmod')) d.mode = Number(a(sc === 'chmod' || sc === 'fchmod' ? 1 : 2)) & 0o7777;
      else {
        const base = sc === 'fchownat' ? 2 : 1;
        d.owner = ai(base);
        d.group = ai(base + 1);
      }
      break;
    case 'network_connect':
    case 'network_listen':
    case 'network_accept': {
      const fam = r.readUInt16LE(GEN_ADDR);
      d.family = fam === AF_INET ? 'inet' : fam === AF_INET6 ? 'inet6' : fam;
      d.fd = event_type === 'network_accept' ? ev.ret : ai(0);
      if (fam === AF_INET || fam === AF_INET6) {
        d.local_addr = ip(r, GEN_ADDR + 8, fam);
        d.local_port = r.readUInt16LE(GEN_ADDR + 2);
        if (event_type !== 'network_listen') {
          d.remote_addr = ip(r, GEN_ADDR + 24, fam);
          d.remote_port = r.readUInt16LE(GEN_ADDR + 4);
        }
      }
      if (event_type === 'network_listen') d.backlog = ai(1);
      break;
    }
    case 'privilege_change':
      if (sc === 'capset') {
        d.header = `0x${a(0).toString(16)}`;
      } else {
        const n = sc.startsWith('setres') ? 3 : sc.startsWith('setre') ? 2 : 1;
        d.ids = Array.from({ length: n }, (_, i) => ai(i));
      }
      break;
    case 'sandbox_escape':
      if (sc === 'mount') {
        d.source = s1;
        d.target = s2;
        d.flags = Number(a(3));
      } else if (sc === 'unshare') d.flags = `0x${a(0).toString(16)}`;
      else if (sc === 'setns') {
        d.fd = ai(0);
        d.nstype = `0x${a(1).toString(16)}`;
      } else if (sc === 'ptrace') {
        d.request = Number(a(0));
        d.target_pid = ai(1);
      } else if (sc === 'bpf') d.cmd = Number(a(0));
      else if (sc === 'perf_event_open') {
        d.target_pid = ai(1);
        d.cpu = ai(2);
      } else if (sc === 'finit_module') d.fd = ai(0);
      break;
    case 'memory_exec':
      if (sc === 'memfd_create') {
        d.name = s1;
        d.flags = Number(a(1));
      } else {
        d.addr = `0x${a(0).toString(16)}`;
        d.length = Number(a(1));
        d.prot = Number(a(2));
        if (sc === 'mmap') d.map_flags = Number(a(3));
      }
      break;
  }
  ev.details = d;
  return ev;
}
