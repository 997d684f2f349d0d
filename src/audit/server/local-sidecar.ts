/**
 * Local backend: loom-server runs one loom-audit-sidecar per host and keeps it running. The
 * sidecar gets a credential minted here (only its hash is stored), reports for the weavers the
 * runtime hook registered with it, and is restarted when it dies; registrations are files in
 * <dataDir>/audit/registrations so a restarted sidecar takes every live weaver up again.
 * A sidecar left behind by a server that was killed is stopped (pidfile) before a new one starts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../../common/log.js';
import type { RuntimeHook } from '../../provisioners/local/hooks.js';
import { controlRequest, type Registration } from '../sidecar/control.js';
import type { AuditStore } from './store.js';
import { env } from '../../server/config/load.js';

/** Operator tuning and the test-only pause control, passed from the server's environment to the sidecar's. */
const PASSED_THROUGH = ['LOOM_AUDIT_RING_BYTES', 'LOOM_AUDIT_TEST_CONTROLS', 'LOOM_AUDIT_LIBBPF_DEBUG'];

export interface LocalSidecarOptions {
  dataDir: string;
  serverUrl: () => string;
  store: AuditStore;
  log: Logger;
  batchIntervalMs: number;
  bufferMaxBytes: number;
  metricsPort: number;
  healthPort: number;
  /** Extra environment (tests: LOOM_AUDIT_RING_BYTES). */
  env?: Record<string, string>;
}

const READY_TIMEOUT_MS = 30_000;

export interface SidecarReady {
  boot_id: string;
  metrics_port: number;
  health_port: number;
  attached: number;
}

function sidecarCommand(): { cmd: string; args: string[] } {
  const here = fileURLToPath(import.meta.url);
  if (here.endsWith('.ts')) return { cmd: process.execPath, args: ['--import', 'tsx', join(here, '..', '..', 'sidecar', 'main.ts')] };
  return { cmd: process.execPath, args: [join(here, '..', '..', 'sidecar', 'main.js')] };
}

export class LocalSidecar {
  readonly dir: string;
  private readonly regDir: string;
  private readonly sock: string;
  private child: ChildProcess | null = null;
  private credentialId: string | null = null;
  private stopping = false;
  private restartMs = 500;
  private readyP: Promise<SidecarReady> | null = null;
  private readyResolve: ((r: SidecarReady) => void) | null = null;
  current: SidecarReady | null = null;
  restarts = 0;

  constructor(private readonly o: LocalSidecarOptions) {
    this.dir = join(o.dataDir, 'audit');
    this.regDir = join(this.dir, 'registrations');
    this.sock = join(this.dir, 'control.sock');
    mkdirSync(this.regDir, { recursive: true, mode: 0o700 });
  }

  async start(): Promise<SidecarReady> {
    await this.stopLeftover();
    const cred = this.o.store.mintCredential('local');
    this.credentialId = cred.id;
    writeFileSync(join(this.dir, 'token.tmp'), cred.token, { mode: 0o600 });
    renameSync(join(this.dir, 'token.tmp'), join(this.dir, 'token'));
    // weavers registered before (a previous run) report under the new credential
    for (const r of this.registrations()) this.o.store.bind(cred.id, r);
    this.spawn();
    return this.ready();
  }

  /** Resolves when the sidecar (current or restarting) has said it is ready. */
  ready(): Promise<SidecarReady> {
    if (this.current) return Promise.resolve(this.current);
    this.readyP ??= new Promise((r) => (this.readyResolve = r));
    return this.readyP;
  }

  private registrations(): Registration[] {
    const out: Registration[] = [];
    for (const f of existsSync(this.regDir) ? readdirSync(this.regDir).filter((f) => f.endsWith('.json')) : []) {
      try {
        out.push(JSON.parse(readFileSync(join(this.regDir, f), 'utf8')) as Registration);
      } catch {
        /* skip */
      }
    }
    return out;
  }

  private spawn(): void {
    const { cmd, args } = sidecarCommand();
    const child = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        LOOM_AUDIT_SERVER_URL: this.o.serverUrl(),
        LOOM_AUDIT_TOKEN_FILE: join(this.dir, 'token'),
        LOOM_AUDIT_BATCH_INTERVAL_MS: String(this.o.batchIntervalMs),
        LOOM_AUDIT_BUFFER_MAX_BYTES: String(this.o.bufferMaxBytes),
        LOOM_AUDIT_BUFFER_DIR: join(this.dir, 'buffer'),
        LOOM_AUDIT_METRICS_PORT: String(this.o.metricsPort),
        LOOM_AUDIT_HEALTH_PORT: String(this.o.healthPort),
        LOOM_AUDIT_LISTEN_ADDR: '127.0.0.1',
        LOOM_AUDIT_CONTROL_SOCKET: this.sock,
        LOOM_AUDIT_REGISTRATION_DIR: this.regDir,
        // operator tuning and the test-only pause control pass through from the server's environment
        ...Object.fromEntries(PASSED_THROUGH.flatMap((k) => {
          const v = env(k);
          return v === undefined ? [] : [[k, v]];
        })),
        ...this.o.env,
      },
    });
    this.child = child;
    writeFileSync(join(this.dir, 'sidecar.pid'), String(child.pid));
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      out += d;
      let i;
      while ((i = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, i);
        out = out.slice(i + 1);
        try {
          const r = JSON.parse(line) as SidecarReady & { ready?: boolean };
          if (r.ready) {
            this.current = r;
            this.restartMs = 500;
            this.o.log.info({ pid: child.pid, ...r }, 'audit sidecar ready');
            this.readyResolve?.(r);
            this.readyP = null;
            this.readyResolve = null;
          }
        } catch {
          /* not ours */
        }
      }
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      for (const l of d.split('\n').filter(Boolean)) this.o.log.info({ sidecar: l.slice(0, 2000) }, 'audit sidecar');
    });
    child.on('exit', (code, signal) => {
      if (this.child === child) this.child = null;
      this.current = null;
      if (this.stopping) return;
      this.restarts++;
      this.o.log.warn({ code, signal, restartInMs: this.restartMs }, 'audit sidecar exited; restarting');
      setTimeout(() => {
        if (!this.stopping) this.spawn();
      }, this.restartMs).unref();
      this.restartMs = Math.min(30_000, this.restartMs * 2);
    });
  }

  /** A sidecar of a previous server run (killed before it could stop it) would double every event. */
  private async stopLeftover(): Promise<void> {
    const pf = join(this.dir, 'sidecar.pid');
    if (!existsSync(pf)) return;
    const pid = Number(readFileSync(pf, 'utf8'));
    rmSync(pf, { force: true });
    if (!Number.isInteger(pid) || pid <= 1) return;
    let cmdline = '';
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      return;
    }
    if (!/audit[/\\]sidecar[/\\]main\.(js|ts)/.test(cmdline)) return;
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      return;
    }
    for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i++) await new Promise((r) => setTimeout(r, 50));
    if (existsSync(`/proc/${pid}`)) process.kill(pid, 'SIGKILL');
  }

  async register(r: Registration): Promise<void> {
    const f = join(this.regDir, `${r.weaver_id}.json`);
    writeFileSync(`${f}.tmp`, JSON.stringify(r), { mode: 0o600 });
    renameSync(`${f}.tmp`, f);
    if (this.credentialId) this.o.store.bind(this.credentialId, r);
    // fail closed: a weaver whose audit cannot be set up does not start
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.ready(),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('the audit sidecar is not running')), READY_TIMEOUT_MS))),
    ]).finally(() => clearTimeout(timer));
    const reply = await controlRequest(this.sock, { op: 'register', ...r });
    if (!reply.ok) throw new Error(`audit sidecar refused weaver ${r.weaver_id}: ${String(reply.error)}`);
  }

  async unregister(weaverId: string): Promise<void> {
    rmSync(join(this.regDir, `${weaverId}.json`), { force: true });
    // the binding stays: events still in flight for this weaver are delivered, not refused
    if (this.current) await controlRequest(this.sock, { op: 'unregister', weaver_id: weaverId }).catch(() => undefined);
  }

  /** The RuntimeHook that registers each weaver's cgroup before its first process runs. */
  hook(): RuntimeHook {
    return {
      name: 'audit',
      created: async (ctx) => {
        if (ctx.kind !== 'weaver' || !ctx.orgId || !ctx.ownerUserId) return;
        await this.register({ weaver_id: ctx.id, org_id: ctx.orgId, owner_user_id: ctx.ownerUserId, cgroup_path: ctx.cgroupsPath });
      },
      removed: async (ctx) => {
        if (ctx.kind !== 'weaver') return;
        await this.unregister(ctx.id);
      },
    };
  }

  /** Test and operator aid: the sidecar's pid. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const c = this.child;
    if (c && c.exitCode === null) {
      const gone = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      const t = setTimeout(() => c.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    }
    rmSync(join(this.dir, 'sidecar.pid'), { force: true });
    if (this.credentialId) this.o.store.revokeCredential(this.credentialId);
  }
}
