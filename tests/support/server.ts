/**
 * Starts the real loom-server binary (dist/server/main.js) on a free port with a temporary data
 * dir, and runs the real `loom` binary against it. Build first (`npm test` runs tsc in pretest).
 */
import { spawn, spawnSync, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

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
}

// Temporary folders made by a test file go when its process exits (a data dir still holding a
// mount is left for the leak check in stop() to report).
const madeDirs = new Set<string>();
process.on('exit', () => {
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
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    LOOM_HTTP_ADDR: '127.0.0.1:0',
    LOOM_DATA_DIR: dataDir,
    LOOM_LOG_LEVEL: 'info',
    ...opts.env,
  };
  const proc = spawn(process.execPath, [SERVER_BIN], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const logs: string[] = [];
  const url = await new Promise<string>((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`loom-server did not start in 30s:\n${logs.join('\n')}`)), 30_000);
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
  let exited: Promise<number | null> = new Promise((r) => proc.once('exit', (c) => r(c)));
  const server: TestServer = {
    url,
    dataDir,
    proc,
    logs,
    env,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      const code = await exited;
      if (!opts.keepData) {
        // A mount left under the data dir is a leak: clean it up so the machine stays usable,
        // then fail loudly with what the server said about it.
        const leaked = mountsUnder(dataDir);
        for (const m of leaked.reverse()) spawnSync('umount', ['-l', m]);
        rmSync(dataDir, { recursive: true, force: true });
        if (leaked.length) {
          const ids = leaked.map((m) => /weavers\/([0-9a-f-]{36})/.exec(m)?.[1]).filter(Boolean) as string[];
          const related = logs.filter((l) => ids.some((id) => l.includes(id))).slice(-40);
          throw new Error(`mounts leaked under ${dataDir}: ${leaked.join(', ')}\n${related.join('\n')}`);
        }
      }
      return code;
    },
    async token(user, admin = false) {
      const args = [SERVER_BIN, 'admin', 'token', '--user', user, ...(admin ? ['--admin'] : [])];
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
  void exited;
  return server;
}

/** Mount points at or below dir (from /proc/self/mountinfo; octal escapes decoded). */
export function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => (l.split(' ')[4] ?? '').replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((m) => m === dir || m.startsWith(dir + '/'));
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
