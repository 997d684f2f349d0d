/**
 * The libbpf addon (native/src/audit_addon.cc), typed. Loaded only by loom-audit-sidecar: a
 * verifier failure or a crash in here cannot take loom-server down.
 */
import { createRequire } from 'node:module';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { packageRoot } from '../common/package-root.js';

export interface AuditBpfOptions {
  /** Ring buffer size in bytes: a power of two, at least one page. */
  ringBytes?: number;
  /** > 0: a registered ancestor cgroup (up to this many levels) also matches (a pod's cgroup). */
  ancestorLevels?: number;
  /** Path prefixes whose read-only opens are reported (at most 16, 64 bytes each). */
  sensitive?: string[];
}

export interface AuditBpf {
  readonly attached: string[];
  readonly failed: { program: string; error: string }[];
  readonly skipped: string[];
  addCgroup(cgroupId: bigint, weaverIdx: number): void;
  removeCgroup(cgroupId: bigint): void;
  start(onBatch: (batch: Buffer) => void): void;
  pause(): void;
  resume(): void;
  /** Nonzero kernel-side losses: [weaverIdx, kindIdx, count] (cumulative). */
  lost(maxWeavers?: number): [number, number, number][];
  ringUtilization(): number | null;
  close(): void;
}

export interface Families {
  tracepoint: true;
  /** true, or why the kernel refused a probe program */
  fentry: true | string;
  lsm: true | string;
}

interface Addon {
  AuditBpf: new (opts: AuditBpfOptions) => AuditBpf;
  probeFamilies(): Families;
  clocks(): [bigint, bigint];
}

let addon: Addon | null = null;

export function loadAuditAddon(): Addon {
  if (addon) return addon;
  const file = join(packageRoot(), 'native', 'build', 'Release', 'loom_audit.node');
  if (!existsSync(file)) throw new Error(`the audit addon is not built (${file}); run npm ci (needs clang, bpftool, libbpf-dev)`);
  addon = createRequire(import.meta.url)(file) as Addon;
  return addon;
}

export const DEFAULT_SENSITIVE = ['/etc/shadow', '/etc/gshadow', '/etc/sudoers', '/root/.ssh/', '/proc/kcore', '/etc/ssh/', '/var/run/secrets/', '/run/secrets/'];

/** Per-syscall tracepoints need tracefs; mount it when it is not (the sidecar runs as root). */
export function ensureTracefs(): void {
  if (existsSync('/sys/kernel/tracing/events/syscalls')) return;
  mkdirSync('/sys/kernel/tracing', { recursive: true });
  const r = spawnSync('mount', ['-t', 'tracefs', 'nodev', '/sys/kernel/tracing'], { encoding: 'utf8' });
  if (r.status !== 0 && !existsSync('/sys/kernel/tracing/events/syscalls')) throw new Error(`cannot mount tracefs: ${r.stderr.trim()}`);
}

/** Wall-clock ns of a bpf_ktime_get_boot_ns() value. */
export function bootToWall(): (bootNs: bigint) => bigint {
  const [boot, real] = loadAuditAddon().clocks();
  const offset = real - boot;
  return (b) => b + offset;
}
