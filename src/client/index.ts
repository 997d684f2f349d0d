/**
 * LoomClient: the typed TypeScript client of the Loom API, for agents and for the `loom` CLI
 * (which is built on it). `import { LoomClient } from 'loom/client'`.
 *
 *   const loom = new LoomClient({ serverUrl: 'http://127.0.0.1:18090', token });
 *   const w = await loom.waitUntilRunning((await loom.createWeaver({ repo })).id);
 *   const r = await loom.exec(w.id, ['npm', 'test']);          // { exit_code, stdout, stderr, … }
 *
 * Every API error is thrown as a LoomApiError subclass chosen by HTTP status (NotFoundError,
 * ForbiddenError, …) carrying the server's `code` and `message`.
 */
import { Readable } from 'node:stream';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import WebSocket from 'ws';

// ------------------------------------------------------------------ errors

/** An error answer of the API: `{"error":{"code","message"}}` with its HTTP status. */
export class LoomApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string, readonly details?: Record<string, unknown>) {
    super(message);
    this.name = new.target.name;
  }
}
export class BadRequestError extends LoomApiError {}
export class UnauthorizedError extends LoomApiError {}
export class ForbiddenError extends LoomApiError {}
export class NotFoundError extends LoomApiError {}
export class ConflictError extends LoomApiError {}
export class PayloadTooLargeError extends LoomApiError {}
export class RateLimitedError extends LoomApiError {}
export class ServerError extends LoomApiError {}
/** The server could not be reached at all. */
export class ConnectionError extends Error {
  constructor(message: string, override readonly cause?: unknown) {
    super(message);
    this.name = 'ConnectionError';
  }
}
/** A weaver ended up failed (or gone) while waiting for it to run. */
export class WeaverFailedError extends Error {
  constructor(readonly weaver: Weaver) {
    super(`weaver ${weaver.id} ${weaver.status}${weaver.reason ? `: ${weaver.reason}` : ''}`);
    this.name = 'WeaverFailedError';
  }
}

const ERROR_CLASSES: Record<number, typeof LoomApiError> = {
  400: BadRequestError, 401: UnauthorizedError, 403: ForbiddenError, 404: NotFoundError, 409: ConflictError, 413: PayloadTooLargeError, 429: RateLimitedError,
};

/** The typed error for a failed response. */
export async function apiErrorOf(res: Response): Promise<LoomApiError> {
  const text = await res.text().catch(() => '');
  let err: { code?: string; message?: string; details?: Record<string, unknown> } | undefined;
  try {
    err = (JSON.parse(text) as { error?: typeof err }).error;
  } catch {
    /* not JSON */
  }
  const Cls = ERROR_CLASSES[res.status] ?? (res.status >= 500 ? ServerError : LoomApiError);
  return new Cls(res.status, err?.code ?? `http_${res.status}`, err?.message ?? (text.trim().slice(0, 200) || res.statusText), err?.details);
}

// ------------------------------------------------------------------ types

export type WeaverStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'terminating' | 'unknown';

export interface Weaver {
  id: string;
  org_id: string;
  owner_user_id: string;
  image: string;
  status: WeaverStatus;
  reason?: string;
  exit_code?: number;
  repo?: string;
  branch?: string;
  created_at: string;
  expires_at: string;
  lifetime_hours: number;
  tags: Record<string, string>;
  /** Set on a weaver made from a snapshot (a fork). */
  parent_weaver_id?: string;
  snapshot_id?: string;
}

export interface CreateWeaverRequest {
  image?: string;
  org_id?: string;
  repo?: string;
  branch?: string;
  env?: Record<string, string>;
  lifetime_hours?: number;
  command?: string[];
  resources?: { cpu?: string; memory?: string };
  tags?: Record<string, string>;
}

export interface ExecOptions {
  env?: Record<string, string>;
  /** Absolute working directory inside the weaver. */
  cwd?: string;
}

export interface ExecResult {
  exit_code: number;
  stdout: string;
  stderr: string;
  truncated: boolean;
  timed_out: boolean;
  error?: string;
}

export interface ExecStreamOptions extends ExecOptions {
  tty?: boolean;
  /** Give the process a stdin (default true). */
  stdin?: boolean;
  cols?: number;
  rows?: number;
}

export interface FileStat {
  path: string;
  type: 'file' | 'directory' | 'symlink' | 'other';
  size: number;
  mode: string;
  uid: number;
  gid: number;
  mtime: string;
}

export interface Operation {
  operation_id: string;
  operation_type: string;
  status: 'accepted' | 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'timed_out';
  progress_pct: number;
  container_id?: string;
  snapshot_id?: string;
  result_container_id?: string;
  warnings: string[];
  capability_downgrades: string[];
  reason_code?: string;
  reason_message?: string;
  started_at: string;
  updated_at: string;
  completed_at?: string;
  status_url?: string;
}

export interface Snapshot {
  snapshot_id: string;
  container_id: string;
  source_kind: string;
  parent_snapshot_id: string | null;
  status: string;
  consistency_mode: string;
  labels: Record<string, string>;
  pinned: boolean;
  expires_at: string | null;
  frozen_ms?: number;
  strategy?: string;
  bytes?: number;
  created_at: string;
}

export interface Container {
  id: string;
  name: string;
  status: string;
  command: string[];
  source_path?: string;
  source_snapshot_id?: string;
  exit_code?: number;
  created_at: string;
}

export interface Lineage {
  snapshot_id: string;
  lineage: { snapshot_id: string; parent_snapshot_id: string | null; container_id: string; created_at: string; depth: number }[];
}

export interface SnapshotRequest {
  consistency_mode?: 'crash-consistent' | 'app-consistent';
  ttl_seconds?: number;
  labels?: Record<string, string>;
  idempotency_key?: string;
}

export interface CreateContainerRequest {
  name: string;
  rootfs_path: string;
  command: string[];
  env?: Record<string, string>;
  start_immediately?: boolean;
}

export interface ForkRequest {
  resume_policy?: 'manual' | 'immediate';
  name?: string;
}

const FINAL_OPS = new Set(['succeeded', 'failed', 'cancelled', 'timed_out']);

/** One event of a weaver's audit trail as `GET /api/weaver/:id/audit` serves it (README "Audit"). */
export interface AuditEventView {
  id: number;
  weaver_id: string;
  org_id: string;
  owner_user_id: string;
  boot_id: string;
  seq: number;
  /** ns since the epoch, as a decimal string (beyond 2^53) */
  timestamp_ns: string;
  pid: number;
  ppid: number;
  tid: number;
  uid: number;
  comm: string;
  exec_id: string;
  parent_exec_id: string;
  event_type: string;
  ret: number;
  details: Record<string, unknown>;
}

export interface LoomClientOptions {
  serverUrl: string;
  /** API token (`loom login`, or `loom-server admin token`); null for unauthenticated calls. */
  token?: string | null;
}

export interface RequestOptions {
  body?: unknown;
  auth?: boolean;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** A raw body (bytes or a stream) instead of JSON. */
  rawBody?: RequestInit['body'] | Readable;
}

const enc = encodeURIComponent;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ exec session

/** A running exec over the WebSocket: separate stdout/stderr, stdin, resize, the exit code. */
export class ExecSession {
  // Large buffers: a 16 KiB default would pause the socket on nearly every frame.
  readonly stdout = new Readable({ highWaterMark: 4 * 1024 * 1024, read: () => this.ws.resume() });
  readonly stderr = new Readable({ highWaterMark: 4 * 1024 * 1024, read: () => this.ws.resume() });
  /** Resolves with the exit code; rejects with a LoomApiError when the command could not run. */
  readonly exit: Promise<number>;

  private constructor(private readonly ws: WebSocket) {
    this.exit = new Promise<number>((resolve, reject) => {
      let settled = false;
      ws.on('message', (data: Buffer, isBinary: boolean) => {
        if (isBinary) {
          const target = data[0] === 2 ? this.stderr : this.stdout;
          if (!target.push(data.subarray(1))) ws.pause();
          return;
        }
        let m: { type?: string; code?: unknown; message?: string; exit_code?: number };
        try {
          m = JSON.parse(data.toString('utf8')) as typeof m;
        } catch {
          return;
        }
        if (m.type === 'exit' && typeof m.code === 'number') {
          settled = true;
          resolve(m.code);
        } else if (m.type === 'error') {
          settled = true;
          reject(new LoomApiError(m.exit_code === 127 ? 404 : 400, String(m.code ?? 'exec_failed'), m.message ?? 'exec failed', m.exit_code !== undefined ? { exit_code: m.exit_code } : undefined));
        }
      });
      ws.on('close', (code, reason) => {
        this.stdout.push(null);
        this.stderr.push(null);
        if (!settled) reject(new ConnectionError(`exec stream closed without an exit status (${code} ${reason.toString()})`));
      });
      ws.on('error', (e) => {
        if (!settled) reject(new ConnectionError(`exec stream failed: ${e.message}`, e));
      });
    });
    this.exit.catch(() => undefined);
  }

  /** Opens the socket and sends the start message; rejects with the typed error of a refused upgrade. */
  static open(url: string, token: string, start: Record<string, unknown>): Promise<ExecSession> {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, perMessageDeflate: false });
    return new Promise((resolve, reject) => {
      ws.once('unexpected-response', (_req, res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const r = new Response(Buffer.concat(chunks), { status: res.statusCode ?? 500 });
          void apiErrorOf(r).then(reject);
        });
      });
      ws.once('error', (e) => reject(new ConnectionError(`cannot open the exec stream: ${e.message}`, e)));
      ws.once('open', () => {
        ws.send(JSON.stringify(start));
        resolve(new ExecSession(ws));
      });
    });
  }

  /** Sends stdin bytes; false when the socket's buffer is full (wait for `drained()`). */
  write(data: Buffer | string): boolean {
    if (this.ws.readyState !== WebSocket.OPEN) return false;
    const b = typeof data === 'string' ? Buffer.from(data) : data;
    for (let i = 0; i < b.length || i === 0; i += 512 * 1024) {
      this.ws.send(Buffer.concat([Buffer.from([0]), b.subarray(i, i + 512 * 1024)]), { binary: true });
      if (b.length === 0) break;
    }
    return this.ws.bufferedAmount < 4 * 1024 * 1024;
  }

  /** Resolves once the socket's send buffer is small again. */
  async drained(): Promise<void> {
    while (this.ws.readyState === WebSocket.OPEN && this.ws.bufferedAmount > 1024 * 1024) await sleep(2);
  }

  /** Closes the process's stdin (EOF). */
  end(): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'eof' }));
  }

  resize(cols: number, rows: number): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'resize', cols, rows }));
  }

  /** Disconnects; the server kills the process and everything it started. */
  close(): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(1000);
  }
}

// ------------------------------------------------------------------ client

export class LoomClient {
  readonly serverUrl: string;
  readonly token: string | null;

  constructor(opts: LoomClientOptions) {
    this.serverUrl = opts.serverUrl.replace(/\/+$/, '');
    this.token = opts.token ?? null;
  }

  /** The token, or the error for calling without one. */
  requireToken(): string {
    if (!this.token) throw new UnauthorizedError(401, 'not_logged_in', `no API token for ${this.serverUrl}`);
    return this.token;
  }

  /** The typed error of a failed response (the CLI overrides this to print one line). */
  protected async errorOf(res: Response): Promise<Error> {
    return apiErrorOf(res);
  }

  protected connectionError(e: unknown): Error {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    return new ConnectionError(`cannot reach ${this.serverUrl}: ${cause?.code ?? cause?.message ?? (e as Error).message}`, e);
  }

  /** One HTTP call; returns the Response whatever its status. */
  async raw(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const headers: Record<string, string> = { accept: 'application/json', ...opts.headers };
    if (opts.auth ?? true) headers['authorization'] = `Bearer ${this.requireToken()}`;
    let body: RequestInit['body'] | undefined;
    if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.body);
    } else if (opts.rawBody !== undefined) {
      body = opts.rawBody instanceof Readable ? (Readable.toWeb(opts.rawBody) as unknown as ReadableStream) : opts.rawBody;
      headers['content-type'] ??= 'application/octet-stream';
    }
    try {
      return await fetch(`${this.serverUrl}${path}`, { method, headers, body: body ?? null, signal: opts.signal ?? null, ...(body instanceof ReadableStream ? { duplex: 'half' } : {}) } as RequestInit);
    } catch (e) {
      if ((e as Error).name === 'AbortError') throw e;
      throw this.connectionError(e);
    }
  }

  /**
   * A bulk transfer (file bodies) over node:http rather than fetch: fetch's web streams add a
   * copy and promises per chunk, which halved loopback throughput. Resolves with the response as
   * soon as it starts (the server may answer 413 before the whole body is sent).
   */
  protected bulk(method: string, path: string, o: { headers?: Record<string, string>; body?: Buffer | Readable; signal?: AbortSignal } = {}): Promise<IncomingMessage> {
    const url = new URL(`${this.serverUrl}${path}`);
    const headers: Record<string, string> = { accept: '*/*', authorization: `Bearer ${this.requireToken()}`, ...o.headers };
    if (o.body !== undefined) headers['content-type'] ??= 'application/octet-stream';
    if (Buffer.isBuffer(o.body)) headers['content-length'] = String(o.body.length);
    return new Promise((resolve, reject) => {
      const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(url, { method, headers });
      let answered = false;
      req.on('response', (res) => {
        answered = true;
        resolve(res);
      });
      req.on('error', (e: Error) => {
        if (answered) return;
        if (e.name === 'AbortError') reject(e);
        else reject(this.connectionError({ message: e.message, cause: e }));
      });
      if (o.signal) {
        const abort = () => req.destroy(Object.assign(new Error('the operation was aborted'), { name: 'AbortError' }));
        if (o.signal.aborted) abort();
        else o.signal.addEventListener('abort', abort, { once: true });
      }
      if (o.body instanceof Readable) {
        o.body.on('error', (e) => req.destroy(e));
        o.body.pipe(req);
      } else req.end(o.body);
    });
  }

  /** A bulk response's typed error (its body read whole, as the JSON error it is). */
  private async bulkError(res: IncomingMessage): Promise<Error> {
    const parts: Buffer[] = [];
    for await (const c of res) parts.push(c as Buffer);
    const h = new Headers();
    for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') h.set(k, v);
    return this.errorOf(new Response(Buffer.concat(parts), { status: res.statusCode ?? 500, headers: h }));
  }

  /** A bulk upload's JSON answer, or its typed error. */
  private async bulkJson<T>(res: IncomingMessage): Promise<T> {
    if ((res.statusCode ?? 500) >= 300) throw await this.bulkError(res);
    const parts: Buffer[] = [];
    for await (const c of res) parts.push(c as Buffer);
    return JSON.parse(Buffer.concat(parts).toString('utf8')) as T;
  }

  /** One JSON call; a non-2xx answer throws its typed error. */
  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.raw(method, path, opts);
    if (!res.ok) throw await this.errorOf(res);
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    try {
      return (text ? JSON.parse(text) : undefined) as T;
    } catch {
      return undefined as T;
    }
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }
  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>('POST', path, { body: body ?? {} });
  }
  delete<T>(path: string): Promise<T> {
    return this.request<T>('DELETE', path);
  }

  // ---------------------------------------------------------------- weavers

  createWeaver(req: CreateWeaverRequest = {}): Promise<Weaver> {
    return this.post<Weaver>('/api/weaver', req);
  }

  getWeaver(id: string): Promise<Weaver> {
    return this.get<Weaver>(`/api/weaver/${enc(id)}`);
  }

  async listWeavers(): Promise<Weaver[]> {
    return (await this.get<{ weavers: Weaver[] }>('/api/weavers')).weavers;
  }

  deleteWeaver(id: string): Promise<void> {
    return this.delete<void>(`/api/weaver/${enc(id)}`);
  }

  /**
   * Polls until the weaver runs; throws WeaverFailedError when it ends instead. `onProgress`
   * sees every poll (the CLI draws its spinner from it).
   */
  async waitUntilRunning(id: string, o: { timeoutMs?: number; intervalMs?: number; onProgress?: (w: Weaver) => void } = {}): Promise<Weaver> {
    const deadline = Date.now() + (o.timeoutMs ?? 10 * 60_000);
    for (;;) {
      const w = await this.getWeaver(id);
      o.onProgress?.(w);
      if (w.status === 'running') return w;
      if (w.status !== 'pending') throw new WeaverFailedError(w);
      if (Date.now() > deadline) throw new WeaverFailedError({ ...w, reason: `still pending after ${o.timeoutMs ?? 600_000} ms` });
      await sleep(o.intervalMs ?? 150);
    }
  }

  // ---------------------------------------------------------------- exec

  /** Runs argv to its end and returns both streams and the exit code (POST /exec). */
  exec(id: string, command: string[], o: ExecOptions & { stdin?: string; timeoutSecs?: number } = {}): Promise<ExecResult> {
    return this.post<ExecResult>(`/api/weaver/${enc(id)}/exec`, {
      command,
      ...(o.env ? { env: o.env } : {}),
      ...(o.cwd ? { cwd: o.cwd } : {}),
      ...(o.stdin !== undefined ? { stdin: o.stdin } : {}),
      ...(o.timeoutSecs !== undefined ? { timeout_secs: o.timeoutSecs } : {}),
    });
  }

  /** Starts argv over the WebSocket: stream its output, feed stdin, resize, get the exit code. */
  execStream(id: string, command: string[], o: ExecStreamOptions = {}): Promise<ExecSession> {
    const url = `${this.serverUrl.replace(/^http/, 'ws')}/api/weaver/${enc(id)}/exec`;
    return ExecSession.open(url, this.requireToken(), {
      command,
      tty: o.tty ?? false,
      stdin: o.stdin ?? true,
      ...(o.env ? { env: o.env } : {}),
      ...(o.cwd ? { cwd: o.cwd } : {}),
      ...(o.cols ? { cols: o.cols } : {}),
      ...(o.rows ? { rows: o.rows } : {}),
    });
  }

  // ---------------------------------------------------------------- files

  stat(id: string, path: string): Promise<FileStat> {
    return this.get<FileStat>(`/api/weaver/${enc(id)}/files/stat?path=${enc(path)}`);
  }

  /** A file's bytes (or a tar of a directory) as a stream, with what the server said it is. */
  async download(id: string, path: string, signal?: AbortSignal): Promise<{ type: 'file' | 'directory'; size?: number; mode?: string; body: Readable }> {
    const res = await this.bulk('GET', `/api/weaver/${enc(id)}/files?path=${enc(path)}`, signal ? { signal } : {});
    if ((res.statusCode ?? 500) >= 300) throw await this.bulkError(res);
    const size = res.headers['x-loom-file-size'];
    const mode = res.headers['x-loom-file-mode'];
    // A response cut off by the server (the tool failed mid-way) must surface as an error.
    res.on('aborted', () => res.destroy(new Error('the download was cut off by the server')));
    return {
      type: res.headers['x-loom-file-type'] === 'directory' ? 'directory' : 'file',
      ...(typeof size === 'string' ? { size: Number(size) } : {}),
      ...(typeof mode === 'string' ? { mode } : {}),
      body: res,
    };
  }

  /** A whole file as bytes. */
  async readFile(id: string, path: string): Promise<Buffer> {
    const d = await this.download(id, path);
    const parts: Buffer[] = [];
    for await (const c of d.body) parts.push(c as Buffer);
    return Buffer.concat(parts);
  }

  /** Writes a file (atomically: it appears whole or not at all); `mode` like "755". */
  writeFile(id: string, path: string, data: Buffer | string | Readable, o: { mode?: string } = {}): Promise<{ path: string; bytes: number }> {
    const q = new URLSearchParams({ path, ...(o.mode ? { mode: o.mode } : {}) });
    return this.bulk('PUT', `/api/weaver/${enc(id)}/files?${q}`, { body: typeof data === 'string' ? Buffer.from(data) : data }).then((r) => this.bulkJson(r));
  }

  /** Unpacks a tar stream into the directory `dir` (created when missing). */
  uploadTar(id: string, dir: string, tar: Buffer | Readable): Promise<{ path: string; bytes: number }> {
    const q = new URLSearchParams({ path: dir, archive: 'tar' });
    return this.bulk('PUT', `/api/weaver/${enc(id)}/files?${q}`, { body: tar, headers: { 'content-type': 'application/x-tar' } }).then((r) => this.bulkJson(r));
  }

  // ---------------------------------------------------------------- branching (snapshots, forks)

  /** Snapshots a weaver or container; resolves with the operation (see waitOperation). */
  snapshot(targetId: string, req: SnapshotRequest = {}): Promise<Operation> {
    return this.post<Operation>(`/api/containers/${enc(targetId)}/snapshot`, { consistency_mode: 'crash-consistent', ...req });
  }

  /** Forks a weaver or container (snapshot + clone in one operation). */
  fork(targetId: string, req: ForkRequest = {}): Promise<Operation> {
    return this.post<Operation>(`/api/containers/${enc(targetId)}/fork`, { resume_policy: 'immediate', ...req });
  }

  clone(snapshotId: string, req: ForkRequest = {}): Promise<Operation> {
    return this.post<Operation>(`/api/snapshots/${enc(snapshotId)}/clone`, { resume_policy: 'manual', ...req });
  }

  getOperation(id: string, waitSecs?: number): Promise<Operation> {
    return this.get<Operation>(`/api/operations/${enc(id)}${waitSecs ? `?wait=${waitSecs}` : ''}`);
  }

  /** Follows an operation (long-polling) until it is final. */
  async waitOperation(id: string, onProgress?: (op: Operation) => void): Promise<Operation> {
    let op = await this.getOperation(id);
    while (!FINAL_OPS.has(op.status)) {
      onProgress?.(op);
      op = await this.getOperation(id, 0.5);
    }
    return op;
  }

  async listSnapshots(filter: { containerId?: string } = {}): Promise<Snapshot[]> {
    return (await this.get<{ snapshots: Snapshot[] }>(`/api/snapshots${filter.containerId ? `?container_id=${enc(filter.containerId)}` : ''}`)).snapshots;
  }

  getSnapshot(id: string): Promise<Snapshot> {
    return this.get<Snapshot>(`/api/snapshots/${enc(id)}`);
  }

  deleteSnapshot(id: string): Promise<void> {
    return this.delete<void>(`/api/snapshots/${enc(id)}`);
  }

  lineage(snapshotId: string): Promise<Lineage> {
    return this.get<Lineage>(`/api/snapshots/${enc(snapshotId)}/lineage`);
  }

  pinSnapshot(id: string, pin = true): Promise<Snapshot> {
    return this.post<Snapshot>(`/api/snapshots/${enc(id)}/${pin ? 'pin' : 'unpin'}`);
  }

  async listContainers(): Promise<Container[]> {
    return (await this.get<{ containers: Container[] }>('/api/containers')).containers;
  }

  getContainer(id: string): Promise<Container> {
    return this.get<Container>(`/api/containers/${enc(id)}`);
  }

  createContainer(req: CreateContainerRequest): Promise<Operation> {
    return this.post<Operation>('/api/containers', req);
  }

  /** kill, resume or rm (DELETE) a branching container. */
  containerAction(id: string, action: 'kill' | 'resume' | 'rm'): Promise<Operation> {
    return action === 'rm' ? this.delete<Operation>(`/api/containers/${enc(id)}`) : this.post<Operation>(`/api/containers/${enc(id)}/${action}`);
  }
}
