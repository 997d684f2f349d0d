/**
 * Exec in a weaver: request validation, the one-shot runner (POST) and the WebSocket session.
 *
 * WebSocket protocol (GET /api/weaver/:id/exec):
 *   client → server  first text frame: {command:[argv…], env?, cwd?, tty?:false, stdin?:true, cols?, rows?}
 *                    binary frames:     0x00 + stdin bytes
 *                    text frames:       {"type":"resize","cols":N,"rows":N} | {"type":"eof"} (close stdin)
 *   server → client  binary frames:     0x01 + stdout bytes | 0x02 + stderr bytes (a tty sends 0x01 only)
 *                    text frames:       {"type":"started"}, then {"type":"exit","code":N} or
 *                                       {"type":"error","code":"…","message":"…"} and the socket closes.
 * The stream tags are Kubernetes' channel numbers (0 stdin, 1 stdout, 2 stderr). Closing the socket
 * kills the process and everything it started.
 */
import { LoomError, badRequest } from '../common/errors.js';
import type { ExecExit, ExecProcess, ExecRequest, Provisioner } from './provisioner.js';

export const STDIN_TAG = 0;
export const STDOUT_TAG = 1;
export const STDERR_TAG = 2;

const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MAX_ARG = 32 * 1024;
const MAX_ARGS = 1024;

const hasNul = (s: string) => s.includes('\0');

/** Checks a start message or POST body; returns the backend's ExecRequest. Throws 400 on anything odd. */
export function parseExecRequest(body: unknown, defaults: { tty: boolean; stdin: boolean }): ExecRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('the exec request must be a JSON object', 'bad_exec_request');
  const b = body as Record<string, unknown>;
  const allowed = new Set(['command', 'env', 'cwd', 'tty', 'stdin', 'cols', 'rows', 'timeout_secs']);
  for (const k of Object.keys(b)) if (!allowed.has(k)) throw badRequest(`unknown field ${JSON.stringify(k)} in the exec request`, 'bad_exec_request');
  const cmd = b['command'];
  if (!Array.isArray(cmd) || cmd.length === 0 || cmd.length > MAX_ARGS || !cmd.every((a) => typeof a === 'string' && a.length <= MAX_ARG && !hasNul(a))) {
    throw badRequest(`command must be an argv array of 1 to ${MAX_ARGS} strings (never a shell string)`, 'bad_command');
  }
  if ((cmd[0] as string) === '') throw badRequest('command[0] must not be empty', 'bad_command');
  const req: ExecRequest = { command: cmd as string[], tty: defaults.tty, stdin: defaults.stdin };
  if (b['env'] !== undefined) {
    const env = b['env'];
    if (typeof env !== 'object' || env === null || Array.isArray(env)) throw badRequest('env must be an object of strings', 'bad_env');
    const entries = Object.entries(env as Record<string, unknown>);
    if (entries.length > 256) throw badRequest('env has more than 256 entries', 'bad_env');
    for (const [k, v] of entries) {
      if (!ENV_KEY_RE.test(k) || k.length > 256) throw badRequest(`invalid env key ${JSON.stringify(k)}`, 'bad_env');
      if (typeof v !== 'string' || v.length > MAX_ARG || hasNul(v)) throw badRequest(`env ${k} must be a string without NUL`, 'bad_env');
    }
    req.env = env as Record<string, string>;
  }
  if (b['cwd'] !== undefined) {
    const cwd = b['cwd'];
    if (typeof cwd !== 'string' || !cwd.startsWith('/') || cwd.length > 4096 || hasNul(cwd)) throw badRequest('cwd must be an absolute path', 'bad_cwd');
    req.cwd = cwd;
  }
  for (const k of ['tty', 'stdin'] as const) {
    if (b[k] === undefined) continue;
    if (typeof b[k] !== 'boolean') throw badRequest(`${k} must be true or false`, 'bad_exec_request');
    req[k] = b[k] as boolean;
  }
  for (const k of ['cols', 'rows'] as const) {
    if (b[k] === undefined) continue;
    const n = b[k];
    if (!Number.isInteger(n) || (n as number) < 1 || (n as number) > 9999) throw badRequest(`${k} must be an integer from 1 to 9999`, 'bad_exec_request');
    req[k] = n as number;
  }
  return req;
}

export interface OneShotResult {
  exit_code: number;
  stdout: string;
  stderr: string;
  /** Output beyond the cap was dropped (the process ran on to its end). */
  truncated: boolean;
  /** The timeout killed the process (exit code 137). */
  timed_out: boolean;
  /** Why the command could not start (exit code 126/127), when it could not. */
  error?: string;
}

export interface OneShotOptions {
  input?: string;
  maxOutputBytes: number;
  timeoutMs: number;
  signal?: AbortSignal;
}

/** Runs a command to its end, collecting stdout and stderr up to a shared cap. */
export async function execOneShot(p: Provisioner, id: string, req: ExecRequest, o: OneShotOptions): Promise<OneShotResult> {
  const proc = await p.exec(id, { ...req, tty: false, stdin: o.input !== undefined });
  let budget = o.maxOutputBytes;
  let truncated = false;
  const collect = (s: NodeJS.ReadableStream) => {
    const parts: Buffer[] = [];
    s.on('data', (b: Buffer) => {
      if (budget <= 0) {
        truncated = true;
        return;
      }
      const take = b.length <= budget ? b : b.subarray(0, budget);
      if (take.length < b.length) truncated = true;
      budget -= take.length;
      parts.push(take);
    });
    return parts;
  };
  const out = collect(proc.stdout);
  const err = collect(proc.stderr);
  if (proc.stdin) proc.stdin.end(o.input ?? '');
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.kill();
  }, o.timeoutMs);
  const onAbort = () => proc.kill();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  let exit: ExecExit;
  try {
    exit = await proc.exit;
  } finally {
    clearTimeout(timer);
    o.signal?.removeEventListener('abort', onAbort);
  }
  return {
    exit_code: exit.exitCode,
    stdout: Buffer.concat(out).toString('utf8'),
    stderr: Buffer.concat(err).toString('utf8'),
    truncated,
    timed_out: timedOut,
    ...(exit.error ? { error: exit.error } : {}),
  };
}

/** What the WebSocket route needs from a socket (kept small so the session is testable). */
export interface ExecSocket {
  /** `sent` is called once the frame has left (ws's send callback). */
  sendBinary(data: Buffer, sent?: () => void): void;
  sendText(msg: Record<string, unknown>): void;
  close(code: number, reason: string): void;
  /** Bytes queued but not yet sent (ws.bufferedAmount), for backpressure. */
  buffered(): number;
  pause(): void;
  resume(): void;
}

const HIGH_WATER = 8 * 1024 * 1024;

/**
 * Bridges one started process to one socket. Returns the handlers the route feeds incoming
 * frames and the socket's close to.
 */
export function bridgeExec(proc: ExecProcess, sock: ExecSocket): { onFrame(data: Buffer, isBinary: boolean): void; onClose(): void } {
  let ended = false;
  const forward = (tag: number, s: NodeJS.ReadableStream) => {
    s.on('data', (b: Buffer) => {
      if (ended) return;
      const frame = Buffer.allocUnsafe(b.length + 1);
      frame[0] = tag;
      b.copy(frame, 1);
      if (sock.buffered() > HIGH_WATER) {
        // Backpressure: the process waits (its pipe fills) until the socket has sent this frame.
        s.pause();
        sock.sendBinary(frame, () => s.resume());
      } else sock.sendBinary(frame);
    });
  };
  forward(STDOUT_TAG, proc.stdout);
  forward(STDERR_TAG, proc.stderr);
  proc.stdin?.on('drain', () => sock.resume());
  sock.sendText({ type: 'started' });
  void proc.exit.then((exit) => {
    if (ended) return;
    ended = true;
    if (exit.error) sock.sendText({ type: 'error', code: exit.exitCode === 127 ? 'command_not_found' : 'exec_failed', message: exit.error, exit_code: exit.exitCode });
    else sock.sendText({ type: 'exit', code: exit.exitCode });
    sock.close(1000, 'process exited');
  });
  return {
    onFrame(data, isBinary) {
      if (ended) return;
      if (isBinary) {
        if (data.length === 0 || data[0] !== STDIN_TAG) {
          sock.sendText({ type: 'error', code: 'bad_frame', message: 'binary frames from the client must start with stream tag 0 (stdin)' });
          return;
        }
        if (!proc.stdin) return;
        if (!proc.stdin.write(data.subarray(1))) sock.pause();
        return;
      }
      let msg: { type?: unknown; cols?: unknown; rows?: unknown };
      try {
        msg = JSON.parse(data.toString('utf8')) as typeof msg;
      } catch {
        msg = {};
      }
      const dim = (n: unknown): n is number => Number.isInteger(n) && (n as number) > 0 && (n as number) < 10000;
      if (msg.type === 'resize' && dim(msg.cols) && dim(msg.rows)) proc.resize(msg.cols, msg.rows);
      else if (msg.type === 'eof') proc.stdin?.end();
      else sock.sendText({ type: 'error', code: 'bad_control', message: 'unknown control message; expected {"type":"resize","cols":N,"rows":N} or {"type":"eof"}' });
    },
    onClose() {
      if (ended) return;
      ended = true;
      proc.kill();
    },
  };
}

/** The start message of a WebSocket session, or a 400 LoomError. */
export function parseStartFrame(data: Buffer, isBinary: boolean): ExecRequest {
  if (isBinary) throw badRequest('the first frame must be a text frame with the exec request', 'bad_exec_request');
  let body: unknown;
  try {
    body = JSON.parse(data.toString('utf8'));
  } catch {
    throw badRequest('the first frame is not JSON', 'bad_exec_request');
  }
  if (typeof body === 'object' && body !== null && 'timeout_secs' in body) throw new LoomError(400, 'bad_exec_request', 'timeout_secs is for POST /exec only');
  return parseExecRequest(body, { tty: false, stdin: true });
}
