/**
 * OCI runtime (runc or crun) driven through conmon. Reusable by the branching feature:
 * it knows nothing about weavers, only about bundles, container ids and conmon's files.
 *
 * Every container lives in a bundle directory that holds config.json, the rootfs (or a
 * path to it in config.json), and conmon's artefacts:
 *   <bundle>/attach        conmon attach socket (SOCK_SEQPACKET, --full-attach)
 *   <bundle>/ctl, winsz    conmon control fifos ("1 <rows> <cols>\n" and "<rows> <cols>\n")
 *   <bundle>/ctr.log       k8s-file log ("<ts> stdout F <text>")
 *   <bundle>/pidfile       container init pid, <bundle>/conmon.pid conmon's pid
 *   <exitDir>/<id>         written by conmon when the process exits: the exit code
 * conmon daemonizes, so containers (and their terminals) outlive the Node process.
 */
import { spawn } from 'node:child_process';
import { promises as fsp, openSync, closeSync, constants as fsc } from 'node:fs';
import { join, delimiter } from 'node:path';
import { LoomError, errorMessage } from '../../common/errors.js';
import { buildOciSpec } from './spec.js';
import { run, runOk, readJson, exists, sleep, pidAlive } from './util.js';

export type RuntimeName = 'runc' | 'crun';

export interface RuntimeInfo {
  name: RuntimeName;
  path: string;
  version: string;
}

export interface RuntimeState {
  id: string;
  pid: number;
  /** runc/crun status: created, running, paused, stopped. */
  status: 'created' | 'running' | 'paused' | 'stopped' | string;
  bundle: string;
}

export interface CreateOptions {
  id: string;
  /** Directory holding config.json; conmon's sockets, fifos, pid files go here too. */
  bundle: string;
  terminal: boolean;
  /** Directory where conmon writes "<id>" with the exit code. */
  exitDir: string;
  /** Defaults to <bundle>/ctr.log. */
  logPath?: string;
  /** Give up if the runtime has not created the container within this (default 30 s). */
  timeoutMs?: number;
}

export function which(bin: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter).concat(['/usr/sbin', '/sbin'])) {
    if (!dir) continue;
    const p = join(dir, bin);
    try {
      closeSync(openSync(p, fsc.O_RDONLY));
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

export const bundleFiles = (bundle: string) => ({
  config: join(bundle, 'config.json'),
  attach: join(bundle, 'attach'),
  ctl: join(bundle, 'ctl'),
  winsz: join(bundle, 'winsz'),
  log: join(bundle, 'ctr.log'),
  pidFile: join(bundle, 'pidfile'),
  conmonPidFile: join(bundle, 'conmon.pid'),
});

/**
 * Picks a runtime that really works on this host: `auto` tries runc then crun, each by creating
 * (not starting) a throwaway container in a scratch root and deleting it. crun 1.8 refuses
 * cgroup v1/v2 hybrid hosts at this step, runc does not.
 */
export async function detectRuntime(pref: 'auto' | RuntimeName, scratchDir: string): Promise<RuntimeInfo> {
  const candidates: RuntimeName[] = pref === 'auto' ? ['runc', 'crun'] : [pref];
  const failures: string[] = [];
  for (const name of candidates) {
    const path = which(name);
    if (!path) {
      failures.push(`${name}: not found in PATH`);
      continue;
    }
    try {
      const v = await runOk(path, ['--version'], { timeoutMs: 10_000 });
      const version = /version\s+(\S+)/.exec(v.stdout)?.[1] ?? v.stdout.split('\n')[0]!.trim();
      await probeRuntime(path, join(scratchDir, `probe-${name}`));
      return { name, path, version };
    } catch (e) {
      failures.push(`${name}: ${errorMessage(e)}`);
    }
  }
  throw new LoomError(503, 'runtime_unavailable', `no working OCI runtime (${failures.join('; ')})`);
}

async function probeRuntime(path: string, dir: string): Promise<void> {
  await fsp.rm(dir, { recursive: true, force: true });
  const root = join(dir, 'root');
  const bundle = join(dir, 'bundle');
  await fsp.mkdir(join(bundle, 'rootfs'), { recursive: true });
  await fsp.mkdir(root, { recursive: true });
  // runc looks the executable up before it waits for `start`; it is never run.
  await fsp.writeFile(join(bundle, 'rootfs', 'probe'), '', { mode: 0o755 });
  const id = `loom-probe-${process.pid}-${Date.now()}`;
  const spec = buildOciSpec({
    rootfs: join(bundle, 'rootfs'), args: ['/probe'], env: {}, cwd: '/', uid: 0, gid: 0, terminal: false,
    hostname: 'probe', cgroupsPath: `/loom/${id}`, memory: '64Mi', cpu: '100m',
  });
  await fsp.writeFile(join(bundle, 'config.json'), JSON.stringify(spec));
  const errFile = join(dir, 'stderr');
  const fd = openSync(errFile, 'w');
  try {
    // stdio goes to a file: the container init inherits it and would hold a pipe open.
    const code = await new Promise<number | null>((resolve, reject) => {
      const c = spawn(path, ['--root', root, 'create', '--bundle', bundle, id], { stdio: ['ignore', fd, fd] });
      const t = setTimeout(() => c.kill('SIGKILL'), 20_000);
      c.on('error', reject);
      c.on('exit', (code) => {
        clearTimeout(t);
        resolve(code);
      });
    });
    if (code !== 0) {
      const msg = (await fsp.readFile(errFile, 'utf8')).trim().split('\n').pop() ?? `exit ${code}`;
      throw new Error(`cannot create a container: ${msg}`);
    }
  } finally {
    closeSync(fd);
    await run(path, ['--root', root, 'delete', '--force', id], { timeoutMs: 10_000 }).catch(() => undefined);
    await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** One OCI runtime with its own state root, driven through conmon. */
export class ContainerRuntime {
  readonly conmonPath: string;

  constructor(
    readonly info: RuntimeInfo,
    /** --root for runc/crun (its state dir), e.g. <dataDir>/local/runc. */
    readonly root: string,
    conmonPath?: string,
  ) {
    const c = conmonPath ?? which('conmon');
    if (!c) throw new LoomError(503, 'runtime_unavailable', 'conmon not found in PATH');
    this.conmonPath = c;
  }

  private rt(args: string[], timeoutMs = 15_000) {
    return run(this.info.path, ['--root', this.root, ...args], { timeoutMs });
  }

  /**
   * Creates (not starts) the container under a daemonized conmon and resolves with the
   * container's init pid once the runtime has created it. Uses conmon's sync pipe
   * (_OCI_SYNCPIPE, api-version 1: `{"data": <pid>, "message": "..."}`).
   */
  async create(o: CreateOptions): Promise<{ pid: number }> {
    const f = bundleFiles(o.bundle);
    await fsp.mkdir(o.exitDir, { recursive: true });
    await fsp.rm(join(o.exitDir, o.id), { force: true });
    const args = [
      '--api-version', '1',
      '-c', o.id, '-u', o.id, '-n', o.id,
      '-r', this.info.path,
      '--runtime-arg', '--root', '--runtime-arg', this.root,
      '-b', o.bundle,
      '-p', f.pidFile,
      '-P', f.conmonPidFile,
      '-l', `k8s-file:${o.logPath ?? f.log}`,
      '--exit-dir', o.exitDir,
      '--socket-dir-path', o.bundle,
      '--full-attach',
      '--log-level', 'error',
      '--no-sync-log',
    ];
    if (o.terminal) args.push('-t', '--leave-stdin-open');
    const child = spawn(this.conmonPath, args, {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, _OCI_SYNCPIPE: '3' },
      detached: true,
      cwd: o.bundle,
    });
    const sync = child.stdio[3] as NodeJS.ReadableStream & { destroy(): void };
    const stderr = child.stderr!;
    let errText = '';
    stderr.on('data', (b: Buffer) => (errText += b.toString('utf8')));
    try {
      const pid = await new Promise<number>((resolve, reject) => {
        let buf = '';
        const timer = setTimeout(() => reject(new Error(`conmon did not report the container within ${o.timeoutMs ?? 30_000} ms`)), o.timeoutMs ?? 30_000);
        const done = (fn: () => void) => {
          clearTimeout(timer);
          fn();
        };
        child.on('error', (e) => done(() => reject(e)));
        sync.on('data', (b: Buffer) => {
          buf += b.toString('utf8');
          const nl = buf.indexOf('\n');
          const line = nl >= 0 ? buf.slice(0, nl) : buf;
          let msg: { data?: number; pid?: number; message?: string } | null = null;
          try {
            msg = JSON.parse(line) as { data?: number; pid?: number; message?: string };
          } catch {
            return; // incomplete
          }
          const n = msg.data ?? msg.pid ?? -1;
          if (n > 0) done(() => resolve(n));
          else done(() => reject(new Error(cleanRuntimeMessage(msg?.message ?? (errText || 'container creation failed')))));
        });
        sync.on('end', () => done(() => reject(new Error(cleanRuntimeMessage(errText.trim() || 'conmon exited before reporting the container')))));
      });
      return { pid };
    } finally {
      sync.destroy();
      stderr.destroy();
      child.unref();
    }
  }

  async start(id: string): Promise<void> {
    const r = await this.rt(['start', id]);
    if (r.code !== 0) throw new Error(cleanRuntimeMessage(r.stderr || `${this.info.name} start failed`));
  }

  async kill(id: string, signal: string = 'SIGTERM', all = false): Promise<boolean> {
    const r = await this.rt(['kill', ...(all ? ['--all'] : []), id, signal]);
    return r.code === 0;
  }

  /** Freezes every process of the container (cgroup freezer). */
  async pause(id: string): Promise<void> {
    const r = await this.rt(['pause', id]);
    if (r.code !== 0) throw new Error(cleanRuntimeMessage(r.stderr));
  }

  async resume(id: string): Promise<void> {
    const r = await this.rt(['resume', id]);
    if (r.code !== 0) throw new Error(cleanRuntimeMessage(r.stderr));
  }

  /** Where freezes are recorded: beside the runtime's root, never inside it (runc owns that). */
  get freezeDir(): string {
    return `${this.root}.freezes`;
  }

  /**
   * pause() with a durable record written first: if this process dies while the container is
   * frozen, thawRecorded() at the next start finds the record and thaws it. Pair with thaw().
   */
  async freeze(id: string, why: string): Promise<void> {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id)) throw new LoomError(400, 'bad_id', `invalid container id ${JSON.stringify(id)}`);
    await fsp.mkdir(this.freezeDir, { recursive: true });
    const file = join(this.freezeDir, id);
    const fh = await fsp.open(file, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify({ id, why, frozenAt: new Date().toISOString(), pid: process.pid }));
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await this.pause(id);
    } catch (e) {
      await fsp.rm(file, { force: true });
      throw e;
    }
  }

  /** Thaws a container frozen by freeze() and drops the record (kept if the thaw fails, for the next start). */
  async thaw(id: string): Promise<void> {
    const st = await this.state(id);
    if (st?.status === 'paused') await this.resume(id);
    await fsp.rm(join(this.freezeDir, id), { force: true });
  }

  /** At start: thaws every container whose freeze was recorded but never undone (a crash mid-freeze). */
  async thawRecorded(): Promise<{ thawed: string[]; failed: Array<{ id: string; error: string }> }> {
    const out = { thawed: [] as string[], failed: [] as Array<{ id: string; error: string }> };
    let ids: string[] = [];
    try {
      ids = await fsp.readdir(this.freezeDir);
    } catch {
      return out;
    }
    for (const id of ids) {
      try {
        await this.thaw(id);
        out.thawed.push(id);
      } catch (e) {
        out.failed.push({ id, error: errorMessage(e) });
      }
    }
    return out;
  }

  /** null when the runtime does not know the container. */
  async state(id: string): Promise<RuntimeState | null> {
    const r = await this.rt(['state', id]);
    if (r.code !== 0) return null;
    try {
      const s = JSON.parse(r.stdout) as { id: string; pid: number; status: string; bundle: string };
      return { id: s.id, pid: s.pid, status: s.status, bundle: s.bundle };
    } catch {
      return null;
    }
  }

  async list(): Promise<RuntimeState[]> {
    const r = await this.rt(['list', '--format', 'json']);
    if (r.code !== 0) return [];
    try {
      const arr = JSON.parse(r.stdout || 'null') as { id: string; pid: number; status: string; bundle: string }[] | null;
      return (arr ?? []).map((s) => ({ id: s.id, pid: s.pid, status: s.status, bundle: s.bundle }));
    } catch {
      return [];
    }
  }

  /**
   * Stops a container's processes: thaws it if paused, SIGTERM, SIGKILL after graceMs (at once
   * for one never started), then waits for the init process to go. Leaves the runtime record.
   * Returns false when nothing was running.
   */
  async stop(id: string, graceMs = 2000): Promise<boolean> {
    const st = await this.state(id);
    if (!st || !(st.status === 'running' || st.status === 'paused' || st.status === 'created')) return false;
    if (st.status === 'paused') await this.resume(id).catch(() => undefined);
    if (st.status === 'created') {
      await this.kill(id, 'SIGKILL', true);
    } else {
      await this.kill(id, 'SIGTERM', true);
      const deadline = Date.now() + graceMs;
      while (Date.now() < deadline && (await pidAlive(st.pid))) await sleep(25);
      if (await pidAlive(st.pid)) await this.kill(id, 'SIGKILL', true);
    }
    const deadline2 = Date.now() + 3000;
    while (Date.now() < deadline2 && (await pidAlive(st.pid))) await sleep(25);
    return true;
  }

  /** Stops and removes a container (stop, `delete --force`) and makes sure its conmon is gone. Idempotent. */
  async remove(id: string, bundle?: string, graceMs = 2000): Promise<void> {
    await this.stop(id, graceMs);
    await this.rt(['delete', '--force', id]);
    if (bundle) {
      // conmon exits once the container is gone; make sure of it.
      const cpid = await readPid(bundleFiles(bundle).conmonPidFile);
      if (cpid && (await isConmon(cpid))) {
        const deadline = Date.now() + 2000;
        while (Date.now() < deadline && (await pidAlive(cpid))) await sleep(25);
        if (await pidAlive(cpid)) {
          try {
            process.kill(cpid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      }
    }
  }

  /** Resizes the container's terminal through conmon's winsz fifo. */
  async resize(bundle: string, cols: number, rows: number): Promise<void> {
    await writeFifo(bundleFiles(bundle).winsz, `${Math.max(1, Math.min(1000, rows | 0))} ${Math.max(1, Math.min(1000, cols | 0))}\n`);
  }

  /** The exit code conmon wrote, or null when the process has not exited (or conmon never saw it). */
  static async exitCode(exitDir: string, id: string): Promise<number | null> {
    try {
      const s = (await fsp.readFile(join(exitDir, id), 'utf8')).trim();
      if (s === '') return null;
      const n = Number(s);
      return Number.isFinite(n) ? n : null;
    } catch {
      return null;
    }
  }

  async conmonAlive(bundle: string): Promise<boolean> {
    const pid = await readPid(bundleFiles(bundle).conmonPidFile);
    return pid !== null && (await isConmon(pid));
  }
}

export async function readPid(file: string): Promise<number | null> {
  try {
    const n = Number((await fsp.readFile(file, 'utf8')).trim());
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

async function isConmon(pid: number): Promise<boolean> {
  if (!(await pidAlive(pid))) return false;
  try {
    return (await fsp.readFile(`/proc/${pid}/comm`, 'utf8')).trim() === 'conmon';
  } catch {
    return false;
  }
}

/** Writes to a fifo without blocking when nobody reads it (ENXIO then). */
async function writeFifo(path: string, data: string): Promise<void> {
  const fh = await fsp.open(path, fsc.O_WRONLY | fsc.O_NONBLOCK);
  try {
    await fh.write(data);
  } finally {
    await fh.close();
  }
}

/** runc prints logrus lines (`time="…" level=error msg="…"`); keep the message. */
export function cleanRuntimeMessage(s: string): string {
  const lines = s.trim().split('\n').filter(Boolean);
  const out = lines.map((l) => {
    const m = /msg="((?:[^"\\]|\\.)*)"/.exec(l);
    return m ? m[1]!.replace(/\\"/g, '"') : l;
  });
  return out.join('; ') || 'unknown runtime error';
}

export { exists, readJson };
