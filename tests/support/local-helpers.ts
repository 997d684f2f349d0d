import { mkdtempSync, promises as fsp, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { LocalProvisioner, DEFAULT_LOCAL_IMAGE, type LocalProvisionerOptions } from '../../src/provisioners/local/index.js';
import { cleanLeftovers, describe, isEmpty, leftovers, removeContainers } from './reap.js';
import type { BackendWeaver, TerminalStream, WeaverSpec, WeaverStatus } from '../../src/weaver/provisioner.js';

export interface Teardownable {
  teardown(fn: () => Promise<void> | void): void;
}

/**
 * A temp data dir. Its teardown (registered before anything is created in it) deletes every
 * container under it through the runtime and kills their conmons, then fails loudly if any
 * process, cgroup, mount or loop device of it is still there (after cleaning that up too).
 */
export function localDataDir(t: Teardownable & { comment(...a: unknown[]): void }): string {
  const dataDir = mkdtempSync(join(tmpdir(), 'loom-local-test-'));
  t.teardown(async () => {
    const removed = removeContainers(dataDir);
    if (removed.length) t.comment(`teardown removed through the runtime: ${removed.join(', ')}`);
    const found = leftovers(dataDir);
    const remaining = isEmpty(found) ? found : cleanLeftovers(dataDir, found);
    if (isEmpty(remaining)) await fsp.rm(dataDir, { recursive: true, force: true });
    if (!isEmpty(found)) throw new Error(`leaked under ${dataDir}:\n${describe(found)}\n${isEmpty(remaining) ? 'cleaned up now' : `could NOT clean:\n${describe(remaining)}`}`);
  });
  return dataDir;
}

export function newLocal(dataDir: string, opts: Partial<LocalProvisionerOptions> = {}): LocalProvisioner {
  return new LocalProvisioner({ dataDir, log: pino({ level: process.env.LOOM_TEST_LOG ?? 'silent' }), stopGraceMs: 500, ...opts });
}

export function weaverSpec(over: Partial<WeaverSpec> = {}): WeaverSpec {
  const now = new Date();
  return {
    id: randomUUID(),
    orgId: 'org-test',
    ownerUserId: 'user-test',
    image: DEFAULT_LOCAL_IMAGE,
    env: {},
    resources: { cpu: '500m', memory: '256Mi' },
    lifetimeHours: 1,
    createdAt: now,
    expiresAt: new Date(now.getTime() + 3600_000),
    tags: {},
    ...over,
  };
}

/** Resolves with the first watch() event for `id` matching `statuses` (or get() already matching). */
export function waitStatus(p: LocalProvisioner, id: string, statuses: WeaverStatus[], timeoutMs = 30_000): Promise<BackendWeaver> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      void p.get(id).then((w) => reject(new Error(`timed out waiting for ${statuses.join('|')} of ${id}; now ${JSON.stringify(w)}`)));
    }, timeoutMs);
    const off = p.watch((w) => {
      if (w.id === id && statuses.includes(w.status)) {
        clearTimeout(timer);
        off();
        resolve(w);
      }
    });
    void p.get(id).then((w) => {
      if (w && statuses.includes(w.status)) {
        clearTimeout(timer);
        off();
        resolve(w);
      }
    });
  });
}

/** Collects a TerminalStream's output and waits for patterns in it. */
export class TermReader {
  out = '';
  closed: { exitCode?: number; error?: string } | null = null;
  private waiters: (() => void)[] = [];
  constructor(readonly s: TerminalStream) {
    s.onData((b) => {
      this.out += b.toString('utf8');
      this.poke();
    });
    s.onClose((i) => {
      this.closed = i;
      this.poke();
    });
  }
  private poke() {
    for (const w of this.waiters.splice(0)) w();
  }
  send(text: string) {
    this.s.write(Buffer.from(text));
  }
  async expect(re: RegExp, timeoutMs = 10_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.out.slice(from).match(re);
      if (m) return m;
      if (this.closed) throw new Error(`stream closed (${JSON.stringify(this.closed)}) before ${re}; output: ${JSON.stringify(this.out)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${re}; output: ${JSON.stringify(this.out)}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, Math.min(left, 200));
      });
    }
  }
  async waitClosed(timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    return this.closed;
  }
}

/** Host-side view of a container's cgroup limits (v1 or v2). */
export function cgroupLimits(pid: number): { memory: number | null; cpuQuota: number | null; cpuPeriod: number | null } {
  const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim().split('\n');
  const v1 = (ctrl: string) => {
    const l = lines.find((x) => x.split(':')[1]?.split(',').includes(ctrl));
    return l ? join('/sys/fs/cgroup', ctrl, l.split(':')[2]!) : null;
  };
  const memDir = v1('memory');
  const cpuDir = v1('cpu');
  if (memDir && cpuDir) {
    const rd = (p: string) => Number(readFileSync(p, 'utf8').trim());
    return { memory: rd(join(memDir, 'memory.limit_in_bytes')), cpuQuota: rd(join(cpuDir, 'cpu.cfs_quota_us')), cpuPeriod: rd(join(cpuDir, 'cpu.cfs_period_us')) };
  }
  const v2 = lines.find((x) => x.startsWith('0::'));
  const dir = join('/sys/fs/cgroup', v2!.slice(3));
  const [q, per] = readFileSync(join(dir, 'cpu.max'), 'utf8').trim().split(' ');
  return { memory: Number(readFileSync(join(dir, 'memory.max'), 'utf8').trim()), cpuQuota: Number(q), cpuPeriod: Number(per) };
}

/** Processes whose command line mentions `needle` (e.g. conmon for a container id). */
export function processesMentioning(needle: string): { pid: number; cmd: string }[] {
  const out: { pid: number; cmd: string }[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(needle)) out.push({ pid: Number(d), cmd });
    } catch {
      /* gone */
    }
  }
  return out;
}

export function mountsMentioning(needle: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(needle));
}
