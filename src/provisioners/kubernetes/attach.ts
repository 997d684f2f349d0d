/**
 * A TerminalStream bridged to a pod's attach subresource over the Kubernetes channel protocol
 * (v4.channel.k8s.io, falling back to channel.k8s.io): each binary frame starts with a channel
 * byte, 0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize (JSON {"Width","Height"}).
 * Written on `ws` directly (rather than client-node's Attach) so resize and the exit status are
 * under our control.
 */
import type { ClientRequest, IncomingMessage } from 'node:http';
import type { KubeConfig } from '@kubernetes/client-node';
import WebSocket from 'ws';
import { LoomError } from '../../common/errors.js';
import type { TerminalStream } from '../../weaver/provisioner.js';

export const CHANNEL_PROTOCOLS = ['v4.channel.k8s.io', 'channel.k8s.io'] as const;

export const STDIN = 0;
export const STDOUT = 1;
export const STDERR = 2;
export const STATUS = 3;
export const RESIZE = 4;

export interface AttachTarget {
  kc: KubeConfig;
  namespace: string;
  pod: string;
  container: string;
  size?: { cols: number; rows: number };
  connectTimeoutMs?: number;
  pingIntervalMs?: number;
}

interface ExitInfo {
  exitCode?: number;
  error?: string;
}

/** Parses the channel 3 message: a Status object on v4, raw error text on the v1 protocol. */
export function parseStatusChannel(protocol: string, payload: Buffer): ExitInfo {
  const text = payload.toString('utf8');
  if (protocol === 'channel.k8s.io') return text.trim() ? { error: text.trim() } : { exitCode: 0 };
  let st: { status?: string; reason?: string; message?: string; details?: { causes?: { reason?: string; message?: string }[] } };
  try {
    st = JSON.parse(text) as typeof st;
  } catch {
    return text.trim() ? { error: text.trim() } : {};
  }
  if (st.status === 'Success') return { exitCode: 0 };
  const cause = st.details?.causes?.find((c) => c.reason === 'ExitCode');
  const code = cause?.message !== undefined ? Number(cause.message) : NaN;
  if (Number.isInteger(code)) return { exitCode: code };
  return { error: st.message || st.reason || 'attach failed' };
}

export function attachPath(namespace: string, pod: string, container: string): string {
  const q = new URLSearchParams({ container, stdin: 'true', stdout: 'true', stderr: 'false', tty: 'true' });
  return `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(pod)}/attach?${q.toString()}`;
}

function rawToBuffer(data: WebSocket.RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

class ChannelTerminal implements TerminalStream {
  private dataCbs: ((chunk: Buffer) => void)[] = [];
  private closeCbs: ((info: ExitInfo) => void)[] = [];
  private pending: Buffer[] = [];
  private closed: ExitInfo | null = null;
  private exit: ExitInfo = {};
  private ping: NodeJS.Timeout | undefined;

  constructor(private readonly ws: WebSocket, pingIntervalMs: number) {
    ws.on('message', (raw, isBinary) => {
      const buf = rawToBuffer(raw);
      if (!isBinary || buf.length === 0) return;
      const channel = buf[0];
      const payload = buf.subarray(1);
      if (channel === STDOUT || channel === STDERR) {
        if (payload.length > 0) this.emitData(payload);
      } else if (channel === STATUS) {
        this.exit = parseStatusChannel(ws.protocol, payload);
      }
    });
    ws.on('close', () => this.finish(this.exit));
    ws.on('error', (err) => {
      if (this.exit.exitCode === undefined && !this.exit.error) this.exit = { error: err.message };
    });
    if (pingIntervalMs > 0) {
      this.ping = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.ping();
      }, pingIntervalMs);
      this.ping.unref();
    }
  }

  private emitData(chunk: Buffer): void {
    if (this.dataCbs.length === 0) {
      this.pending.push(chunk);
      return;
    }
    for (const cb of this.dataCbs) cb(chunk);
  }

  private finish(info: ExitInfo): void {
    if (this.closed) return;
    this.closed = info;
    if (this.ping) clearInterval(this.ping);
    for (const cb of this.closeCbs) cb(info);
  }

  onData(cb: (chunk: Buffer) => void): void {
    this.dataCbs.push(cb);
    if (this.pending.length > 0) {
      const queued = this.pending;
      this.pending = [];
      for (const c of queued) cb(c);
    }
  }

  onClose(cb: (info: ExitInfo) => void): void {
    if (this.closed) {
      cb(this.closed);
      return;
    }
    this.closeCbs.push(cb);
  }

  private send(channel: number, payload: Buffer): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(Buffer.concat([Buffer.from([channel]), payload]));
  }

  write(data: Buffer): void {
    if (data.length > 0) this.send(STDIN, data);
  }

  resize(cols: number, rows: number): void {
    if (!(cols > 0 && rows > 0)) return;
    this.send(RESIZE, Buffer.from(JSON.stringify({ Width: Math.floor(cols), Height: Math.floor(rows) })));
  }

  close(): void {
    if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
    else this.finish(this.exit);
  }
}

function readBody(res: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

/** Opens the attach WebSocket; rejects with a LoomError when the API server refuses it. */
export async function attachPod(t: AttachTarget): Promise<TerminalStream> {
  const cluster = t.kc.getCurrentCluster();
  if (!cluster) throw new LoomError(503, 'kubernetes_unavailable', 'no cluster in the kubeconfig');
  const url = new URL(cluster.server);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const base = url.toString().replace(/\/$/, '');
  const target = `${base}${attachPath(t.namespace, t.pod, t.container)}`;
  const httpsOpts: Record<string, unknown> = {};
  await t.kc.applyToHTTPSOptions(httpsOpts as never);
  const ws = new WebSocket(target, [...CHANNEL_PROTOCOLS], { ...(httpsOpts as WebSocket.ClientOptions), handshakeTimeout: t.connectTimeoutMs ?? 10_000 });

  await new Promise<void>((resolve, reject) => {
    const fail = (e: LoomError) => {
      ws.removeAllListeners('open');
      reject(e);
    };
    ws.once('open', () => {
      ws.removeAllListeners('unexpected-response');
      resolve();
    });
    ws.once('error', (err) => fail(new LoomError(502, 'kubernetes_attach_failed', `attach to pod ${t.pod} failed: ${err.message}`)));
    ws.once('unexpected-response', (req: ClientRequest, res: IncomingMessage) => {
      void readBody(res).then((body) => {
        let msg = body.trim();
        try {
          const st = JSON.parse(body) as { message?: string };
          if (st.message) msg = st.message;
        } catch {
          // plain text
        }
        req.destroy();
        const status = res.statusCode ?? 502;
        const loomStatus = status === 404 ? 404 : status === 400 ? 409 : 502;
        fail(new LoomError(loomStatus, loomStatus === 404 ? 'not_found' : loomStatus === 409 ? 'weaver_not_running' : 'kubernetes_attach_failed', `attach to pod ${t.pod} refused (${status}): ${msg || res.statusMessage || ''}`.trim()));
      });
    });
  });
  // Swallow later socket errors; close() reports them.
  ws.on('error', () => undefined);
  const term = new ChannelTerminal(ws, t.pingIntervalMs ?? 30_000);
  if (t.size) term.resize(t.size.cols, t.size.rows);
  return term;
}
