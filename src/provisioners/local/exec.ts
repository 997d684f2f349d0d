/**
 * Exec in a running local container: `runc exec --detach --process <json>` under the small
 * loom-exec helper (native/src/exec-helper.c, built by node-gyp beside the attach relay).
 *
 * Why a helper: with --detach, runc exits once the process runs, so someone must be the
 * process's parent to learn its exit code — the helper is a child subreaper (as containerd's
 * shim and conmon are for exec). With a tty, runc hands the pty master over --console-socket with
 * SCM_RIGHTS, which Node cannot receive; the helper receives it and relays. It kills the whole
 * process tree when told (SIGTERM), when its control pipe closes, or when loom-server dies
 * (PR_SET_PDEATHSIG), so a client's disconnect leaves no process behind in the weaver.
 *
 * The process inherits everything else from the container's own process spec (user, capabilities,
 * no_new_privs, rlimits, AppArmor/SELinux labels), so exec is never stronger than the weaver's
 * main process. Without a tty, stdin/stdout/stderr are plain pipes handed straight to the process.
 */
import { spawn } from 'node:child_process';
import { closeSync, promises as fsp } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { LoomError } from '../../common/errors.js';
import { packageRoot } from '../../common/package-root.js';
import type { ExecExit, ExecProcess, ExecRequest } from '../../weaver/provisioner.js';
import type { ContainerRuntime } from './runtime.js';
import { exists } from './util.js';
import { nativeAddon } from '../../branching/copy.js';

/** Kernel buffer of the stdout pipe and size of a sink's read buffer (pipe-max-size is 1 MiB by default). */
const BULK_BYTES = 1 << 20;

/**
 * stdout (without a tty) through a pipe this process owns, grown to 1 MiB: fewer wakeups than
 * Node's 64 KiB child pipes, and with a sink one reused read buffer instead of a new 64 KiB Buffer
 * per read — the garbage those made was what capped file downloads. null when the addon is missing.
 */
function bulkStdout(sink: ExecRequest['stdoutSink']): { writeFd: number; stream: Readable; done: Promise<void> } | null {
  let p: { read: number; write: number };
  try {
    p = nativeAddon().pipe(BULK_BYTES);
  } catch {
    return null;
  }
  let sock: Socket;
  if (sink) {
    const buffer = Buffer.allocUnsafe(BULK_BYTES);
    // `onread` is accepted by the constructor at run time (Node's net.js) though @types only lists it for connect().
    sock = new Socket({
      fd: p.read,
      readable: true,
      writable: false,
      onread: {
        buffer,
        callback: (n: number, b: Buffer) => {
          // Paused until the sink is done with the bytes: the buffer is read into again after that.
          sock.pause();
          sink(b.subarray(0, n), () => {
            if (!sock.destroyed) sock.resume();
          });
          return false;
        },
      },
    } as ConstructorParameters<typeof Socket>[0]);
  } else sock = new Socket({ fd: p.read, readable: true, writable: false });
  const done = new Promise<void>((resolve) => {
    sock.on('close', () => resolve());
    sock.on('error', () => resolve());
  });
  return { writeFd: p.write, stream: sock, done };
}

/** stdin through a 1 MiB pipe of our own (uploads: fewer partial writes and wakeups). */
function bulkStdin(): { readFd: number; stream: Socket } | null {
  let p: { read: number; write: number };
  try {
    p = nativeAddon().pipe(BULK_BYTES);
  } catch {
    return null;
  }
  return { readFd: p.read, stream: new Socket({ fd: p.write, readable: false, writable: true }) };
}

/** The helper built with the native addon by `npm ci`. */
export async function ensureExecHelper(): Promise<string> {
  const bin = join(packageRoot(), 'native', 'build', 'Release', 'loom-exec');
  if (await exists(bin)) return bin;
  throw new LoomError(503, 'exec_unavailable', `cannot exec: ${bin} is missing; build the native code (npm ci, or npx node-gyp rebuild --directory native)`);
}

interface ProcessSpec {
  terminal?: boolean;
  args: string[];
  env?: string[];
  cwd: string;
  consoleSize?: { height: number; width: number };
  [k: string]: unknown;
}

export interface LocalExecOptions {
  runtime: ContainerRuntime;
  helper: string;
  /** Container id. */
  id: string;
  /** The container's bundle (its config.json holds the process spec exec inherits). */
  bundle: string;
  /** Short private directory for per-exec files (the console socket path must fit in 108 bytes). */
  scratchRoot: string;
  req: ExecRequest;
}

export async function localExec(o: LocalExecOptions): Promise<ExecProcess> {
  const cfg = JSON.parse(await fsp.readFile(join(o.bundle, 'config.json'), 'utf8')) as { process: ProcessSpec };
  const base = cfg.process;
  const env = new Map<string, string>();
  for (const kv of base.env ?? []) {
    const i = kv.indexOf('=');
    if (i > 0) env.set(kv.slice(0, i), kv.slice(i + 1));
  }
  for (const [k, v] of Object.entries(o.req.env ?? {})) env.set(k, v);
  if (o.req.tty && !env.has('TERM')) env.set('TERM', 'xterm-256color');
  const proc: ProcessSpec = { ...base, terminal: o.req.tty, args: o.req.command, env: [...env].map(([k, v]) => `${k}=${v}`), cwd: o.req.cwd ?? base.cwd };
  delete proc.consoleSize;
  if (o.req.tty && o.req.cols && o.req.rows) proc.consoleSize = { height: o.req.rows, width: o.req.cols };

  const dir = join(o.scratchRoot, randomBytes(6).toString('hex'));
  await fsp.mkdir(dir, { recursive: true, mode: 0o700 });
  const files = { process: join(dir, 'p.json'), pid: join(dir, 'pid'), sock: join(dir, 'c.sock'), log: join(dir, 'rt.log') };
  await fsp.writeFile(files.process, JSON.stringify(proc), { mode: 0o600 });

  const rtArgs = ['--root', o.runtime.root, '--log', files.log, '--log-format', 'json', 'exec', '--detach', '--pid-file', files.pid, '--process', files.process];
  if (o.req.tty) rtArgs.push('--console-socket', files.sock);
  rtArgs.push(o.id);
  const helperArgs = ['-p', files.pid, '-C', '3', '-S', '4'];
  if (o.req.tty) helperArgs.push('-t', '-s', files.sock, ...(o.req.cols && o.req.rows ? ['-c', String(o.req.cols), '-r', String(o.req.rows)] : []));
  const bulk = o.req.tty ? null : bulkStdout(o.req.stdoutSink);
  const bulkIn = o.req.tty || !o.req.stdin ? null : bulkStdin();
  let child;
  try {
    child = spawn(o.helper, [...helperArgs, '--', o.runtime.info.path, ...rtArgs], {
      stdio: [bulkIn ? bulkIn.readFd : o.req.stdin ? 'pipe' : 'ignore', bulk ? bulk.writeFd : 'pipe', o.req.tty ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
  } finally {
    // The process has its copy (or never started): ours must go, or stdout would never end.
    if (bulk) closeSync(bulk.writeFd);
    if (bulkIn) closeSync(bulkIn.readFd);
  }
  const ctl = child.stdio[3] as Writable;
  const status = child.stdio[4] as Readable;
  ctl.on('error', () => undefined);
  const stdin = bulkIn ? bulkIn.stream : child.stdin;
  stdin?.on('error', () => undefined);

  let statusText = '';
  status.on('data', (b: Buffer) => (statusText += b.toString('utf8')));
  const exit = new Promise<ExecExit>((resolve) => {
    child.on('error', (e) => resolve({ exitCode: 126, error: `cannot run the exec helper: ${e.message}` }));
    child.on('close', async (code, signal) => {
      // Our own stdout pipe is not one of the child's stdio streams: wait for its end too.
      if (bulk) await bulk.done;
      ctl.destroy();
      const lines = statusText.split('\n');
      const exitLine = lines.find((l) => l.startsWith('exit '));
      const errLine = lines.find((l) => l.startsWith('error '));
      let result: ExecExit;
      if (exitLine) result = { exitCode: Number(exitLine.slice(5)) };
      else if (errLine) {
        const msg = (await runtimeError(files.log)) ?? errLine.slice(6);
        result = { exitCode: /not found|no such file/i.test(msg) ? 127 : 126, error: msg };
      } else result = { exitCode: 137, error: `exec helper ended without a status (${signal ?? `exit ${code}`})` };
      await fsp.rm(dir, { recursive: true, force: true }).catch(() => undefined);
      resolve(result);
    });
  });
  const stdout = bulk ? (o.req.stdoutSink ? Readable.from([]) : bulk.stream) : child.stdout!;
  const stderr = child.stderr ?? Readable.from([]);
  return {
    stdin: stdin ?? null,
    stdout,
    stderr,
    sunk: !!(bulk && o.req.stdoutSink),
    exit,
    resize(cols, rows) {
      if (o.req.tty && !ctl.destroyed) ctl.write(`${cols | 0} ${rows | 0}\n`);
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      // A paused sink never reads the end of its pipe: stop reading so `exit` can settle.
      if (bulk && o.req.stdoutSink) bulk.stream.destroy();
    },
  };
}

/** The runtime's own message (runc logs JSON lines with --log-format json); the last error wins. */
async function runtimeError(logFile: string): Promise<string | null> {
  const text = await fsp.readFile(logFile, 'utf8').catch(() => '');
  let msg: string | null = null;
  for (const line of text.split('\n')) {
    try {
      const j = JSON.parse(line) as { level?: string; msg?: string };
      if (j.level === 'error' && j.msg) msg = j.msg;
    } catch {
      /* not JSON */
    }
  }
  return msg?.replace(/^exec failed: (unable to start container process: )?/, '') ?? null;
}
