/**
 * The libbpf addon (native/src/audit_addon.cc), typed. Loaded only by loom-audit-sidecar: a
 * verifier failure or a crash in here cannot take loom-server down.
 */
import { createRequire } from 'node:module';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { packageRoot } from '../common/package-root.js';

export type HookFamily = 'tracepoint' | 'fentry';

export interface AuditBpfOptions {
  /** How syscalls are hooked (ebpf/audit.bpf.c or ebpf/audit_fentry.bpf.c); tracepoint by default. */
  family?: HookFamily;
  /** Ring buffer size in bytes: a power of two, at least one page. */
  ringBytes?: number;
  /** > 0: a registered ancestor cgroup (up to this many levels) also matches (a pod's cgroup). */
  ancestorLevels?: number;
  /** Path prefixes whose read-only opens are reported (at most 16, 64 bytes each). */
  sensitive?: string[];
}

export interface AuditBpf {
  readonly family: HookFamily;
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

export interface Addon {
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

export interface OpenedAudit {
  bpf: AuditBpf;
  family: HookFamily;
  /** Why this family: the kernel's answer to the fentry family's load probe. */
  reason: string;
}

/**
 * The load probe: the fentry family (one fexit program per syscall, no map update between entry
 * and exit) where the kernel loads and attaches every one of its programs; otherwise the
 * tracepoint family, which is complete on its own. The probe loads the real object, not a toy,
 * so a kernel that accepts some trampolines but refuses ours still gets a working audit.
 */
export function openAudit(addon: Addon, opts: Omit<AuditBpfOptions, 'family'>): OpenedAudit {
  let reason: string;
  try {
    const bpf = new addon.AuditBpf({ ...opts, family: 'fentry' });
    if (bpf.attached.length > 0 && bpf.failed.length === 0) return { bpf, family: 'fentry', reason: `the kernel loaded and attached all ${bpf.attached.length} fentry programs` };
    reason = `the kernel loaded the fentry family but refused to attach ${bpf.failed.map((f) => `${f.program} (${f.error})`).join(', ') || 'every program'}`;
    bpf.close();
  } catch (e) {
    reason = (e as Error).message.replace(/^audit: /, '');
  }
  return { bpf: new addon.AuditBpf({ ...opts, family: 'tracepoint' }), family: 'tracepoint', reason };
}

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
