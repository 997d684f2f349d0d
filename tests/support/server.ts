/**
 * Starts the real loom-server binary (dist/server/main.js) on a free port with a temporary data
 * dir, and runs the real `loom` binary against it. Build first (`npm test` runs tsc in pretest).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { cleanLeftovers, describe, idsIn, isEmpty, leftovers, mountsUnder, removeContainers } from './reap.js';

export { mountsUnder };

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const SERVER_BIN = join(ROOT, 'dist/server/main.js');
export const CLI_BIN = join(ROOT, 'dist/cli/main.js');

if (!existsSync(SERVER_BIN)) throw new Error(`${SERVER_BIN} missing: run \`npm run build\` first`);

export interface TestServer {
  url: string;
  dataDir: string;
  proc: ChildProcess;
  logs: string[];
  env: NodeJS.ProcessEnv;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Prints a new API token for the user (created if needed) via `loom-server admin token`. */
  token(user: string, admin?: boolean): Promise<string>;
  api<T = unknown>(method: string, path: string, token: string | null, body?: unknown, headers?: Record<string, string>): Promise<{ status: number; body: T; headers: Headers }>;
}

export interface StartOptions {
  env?: Record<string, string>;
  dataDir?: string;
  /** Keep the data dir after stop (for restart tests). */
  keepData?: boolean;
  /** Another build's dist/server/main.js (an earlier release, for upgrade tests). */
  serverBin?: string;
  /**
   * The test that owns the server. Its teardown is registered BEFORE the server starts, so a test
   * that fails anywhere after this still deletes its containers through the runtime, kills their
   * conmons and checks for leftovers (see stop()).
   */
  t?: { teardown(fn: () => Promise<void> | void): void; comment(...args: unknown[]): void };
}

// Temporary folders made by a test file go when its process exits. A server or its containers
// still alive then (a teardown that never ran) are removed first, scoped to that data dir.
const madeDirs = new Set<string>();
const liveServers = new Map<string, ChildProcess>();
process.on('exit', () => {
  for (const [d, proc] of liveServers) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    removeContainers(d);
    cleanLeftovers(d, leftovers(d));
  }
  for (const d of madeDirs) {
    try {
      if (mountsUnder(d).length === 0) rmSync(d, { recursive: true, force: true });
    } catch {
      /* best effort */
    }
  }
});

function madeDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  madeDirs.add(d);
  return d;
}

export function freshDataDir(prefix = 'loom-test-'): string {
  return madeDir(prefix);
}

export async function startServer(opts: StartOptions = {}): Promise<TestServer> {
  const dataDir = opts.dataDir ?? freshDataDir();
  let server: TestServer | undefined;
  let proc: ChildProcess | undefined;
  opts.t?.teardown(async () => {
    // Whatever the test did or did not get to: the server goes, then its containers go through
    // the runtime (runc delete --force under this data dir's --root, conmon killed by pid file).
    if (proc && proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    if (proc) await new Promise((r) => (proc!.exitCode !== null || proc!.signalCode !== null ? r(null) : proc!.once('exit', r)));
    const removed = removeContainers(dataDir);
    if (removed.length) opts.t!.comment(`teardown removed through the runtime: ${removed.join(', ')}`);
    if (server) await server.stop();
    else if (!opts.keepData) await checkAndClean(dataDir, []);
  });
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    LOOM_HTTP_ADDR: '127.0.0.1:0',
    LOOM_DATA_DIR: dataDir,
    LOOM_LOG_LEVEL: 'info',
    // Test knobs (LOOM_TEST_*) are honoured only under NODE_ENV=test.
    NODE_ENV: 'test',
    ...opts.env,
  };
  const bin = opts.serverBin ?? SERVER_BIN;
  proc = spawn(process.execPath, [bin], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  liveServers.set(dataDir, proc);
  const logs: string[] = [];
  const url = await new Promise<string>((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`loom-server did not start in 120s:\n${logs.join("\n")}`)), 120_000);
    const onLine = (line: string) => {
      logs.push(line);
      try {
        const j = JSON.parse(line) as { msg?: string; url?: string };
        if (j.msg === 'loom-server listening' && j.url) {
          clearTimeout(timer);
          resolveUrl(j.url);
        }
      } catch {
        /* not JSON */
      }
    };
    createInterface({ input: proc.stdout! }).on('line', onLine);
    createInterface({ input: proc.stderr! }).on('line', onLine);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`loom-server exited with ${code} before listening:\n${logs.join('\n')}`));
    });
  });
  const p = proc;
  const exited: Promise<number | null> = new Promise((r) => (p.exitCode !== null ? r(p.exitCode) : p.once('exit', (c) => r(c))));
  let stopping: Promise<number | null> | undefined;
  server = {
    url,
    dataDir,
    proc,
    logs,
    env,
    stop(signal = 'SIGTERM') {
      stopping ??= (async () => {
        if (p.exitCode === null && p.signalCode === null) p.kill(signal);
        const code = await exited;
        if (!opts.keepData) await checkAndClean(dataDir, logs);
        return code;
      })();
      return stopping;
    },
    async token(user, admin = false) {
      const args = [bin, 'admin', 'token', '--user', user, ...(admin ? ['--admin'] : [])];
      const { stdout } = await run(process.execPath, args, { env });
      return stdout.trim();
    },
    async api(method, path, token, body, headers = {}) {
      const h: Record<string, string> = { ...headers };
      if (token) h['authorization'] = `Bearer ${token}`;
      let payload: string | undefined;
      if (body !== undefined) {
        payload = typeof body === 'string' ? body : JSON.stringify(body);
        h['content-type'] ??= 'application/json';
      }
      const res = await fetch(url + path, { method, headers: h, body: payload, redirect: 'manual' });
      const text = await res.text();
      let parsed: unknown = text;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        /* keep text */
      }
      return { status: res.status, body: parsed as never, headers: res.headers };
    },
  };
  return server;
}

/**
 * The leak check of a stopped server: processes (conmon, container init), cgroups, mounts and loop
 * devices of this data dir's containers. Anything found is cleaned up (so the machine stays
 * usable), then the check fails loudly with what was found and what the server logged about it.
 */
async function checkAndClean(dataDir: string, logs: string[]): Promise<void> {
  liveServers.delete(dataDir);
  const found = leftovers(dataDir);
  let remaining = found;
  if (!isEmpty(found)) {
    removeContainers(dataDir);
    remaining = cleanLeftovers(dataDir, leftovers(dataDir, idsIn(dataDir)));
  }
  if (mountsUnder(dataDir).length === 0) rmSync(dataDir, { recursive: true, force: true });
  if (!isEmpty(found)) {
    const ids = idsIn(dataDir).concat(found.cgroups.map((c) => /[0-9a-f-]{36}/.exec(c)?.[0] ?? '')).filter(Boolean);
    const related = logs.filter((l) => ids.some((id) => l.includes(id))).slice(-40);
    throw new Error(
      `leaked by the server or test under ${dataDir}:\n${describe(found)}\n` +
        (isEmpty(remaining) ? 'all of it was cleaned up now' : `could NOT clean:\n${describe(remaining)}`) +
        (related.length ? `\nserver log about these ids:\n${related.join('\n')}` : ''),
    );
  }
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolveRun, reject) => {
    const child = execFile(cmd, args, { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      if (err && (err as { killed?: boolean }).killed) return reject(new Error(`${cmd} ${args.join(' ')} timed out\n${stderr}`));
      resolveRun({ code, stdout, stderr });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin?.end();
  });
}

/** Runs the real `loom` CLI with its own config dir (credentials) and server URL. */
export function loomCli(server: { url: string }, configDir: string) {
  return (args: string[], opts: { input?: string; env?: Record<string, string>; timeoutMs?: number } = {}) =>
    run(process.execPath, [CLI_BIN, ...args], {
      env: { ...process.env, LOOM_SERVER_URL: server.url, LOOM_CONFIG_DIR: configDir, ...opts.env },
      ...(opts.input !== undefined ? { input: opts.input } : {}),
      ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
    });
}

export function tempDir(prefix = 'loom-cli-'): string {
  return madeDir(prefix);
}
