/**
 * Exec in a weaver pod through the pod exec subresource over the Kubernetes channel protocol:
 * every binary frame starts with a channel byte — 0 stdin, 1 stdout, 2 stderr, 3 status (a
 * Status object with the exit code), 4 resize — and v5.channel.k8s.io adds 255 "close" so stdin
 * can end (`cat` sees EOF). stdout and stderr stay apart without a tty, as on the local backend.
 * The exec API takes no env or working directory: when asked for, the command is wrapped in
 * `sh -c 'cd "$1" && shift && exec env "$@"'` with everything passed as argv, never as a string.
 */
import type { ClientRequest, IncomingMessage } from 'node:http';
import { PassThrough } from 'node:stream';
import type { KubeConfig } from '@kubernetes/client-node';
import WebSocket from 'ws';
import { LoomError } from '../../common/errors.js';
import type { ExecExit, ExecProcess, ExecRequest } from '../../weaver/provisioner.js';
import { parseStatusChannel, RESIZE, STATUS, STDERR, STDIN, STDOUT } from './attach.js';

export const EXEC_PROTOCOLS = ['v5.channel.k8s.io', 'v4.channel.k8s.io'] as const;
const CLOSE = 255;

/** The argv the pod runs: the request's, wrapped only when env or cwd must be applied. */
export function podExecArgv(req: ExecRequest): string[] {
  const env = Object.entries(req.env ?? {}).map(([k, v]) => `${k}=${v}`);
  if (env.length === 0 && !req.cwd) return req.command;
  return ['sh', '-c', 'cd -- "$1" || exit 126; shift; exec env "$@"', 'sh', req.cwd ?? '.', ...env, ...req.command];
}

export function execPath(namespace: string, pod: string, container: string, req: ExecRequest): string {
  const q = new URLSearchParams({ container, stdin: String(req.stdin), stdout: 'true', stderr: String(!req.tty), tty: String(req.tty) });
  for (const a of podExecArgv(req)) q.append('command', a);
  return `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(pod)}/exec?${q.toString()}`;
}

const toBuffer = (d: WebSocket.RawData): Buffer => (Buffer.isBuffer(d) ? d : Array.isArray(d) ? Buffer.concat(d) : Buffer.from(d));

export async function execPod(t: { kc: KubeConfig; namespace: string; pod: string; container: string; req: ExecRequest }): Promise<ExecProcess> {
  const cluster = t.kc.getCurrentCluster();
  if (!cluster) throw new LoomError(503, 'kubernetes_unavailable', 'no cluster in the kubeconfig');
  const url = new URL(cluster.server);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  const target = `${url.toString().replace(/\/$/, '')}${execPath(t.namespace, t.pod, t.container, t.req)}`;
  const httpsOpts: Record<string, unknown> = {};
  await t.kc.applyToHTTPSOptions(httpsOpts as never);
  const ws = new WebSocket(target, [...EXEC_PROTOCOLS], { ...(httpsOpts as WebSocket.ClientOptions), handshakeTimeout: 10_000 });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', (e) => reject(new LoomError(502, 'kubernetes_exec_failed', `exec in pod ${t.pod} failed: ${e.message}`)));
    ws.once('unexpected-response', (req: ClientRequest, res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let msg = Buffer.concat(chunks).toString('utf8').trim();
        try {
          msg = (JSON.parse(msg) as { message?: string }).message ?? msg;
        } catch {
          /* text */
        }
        req.destroy();
        const s = res.statusCode ?? 502;
        reject(new LoomError(s === 404 ? 404 : s === 400 ? 409 : 502, s === 404 ? 'not_found' : s === 400 ? 'weaver_not_running' : 'kubernetes_exec_failed', `exec in pod ${t.pod} refused (${s}): ${msg}`));
      });
    });
  });
  ws.on('error', () => undefined);
  const v5 = ws.protocol === 'v5.channel.k8s.io';
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const send = (ch: number, payload: Buffer) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(Buffer.concat([Buffer.from([ch]), payload]));
  };
  let stdin: PassThrough | null = null;
  if (t.req.stdin) {
    stdin = new PassThrough();
    stdin.on('data', (b: Buffer) => {
      send(STDIN, b);
      // Backpressure: hold stdin while the socket's buffer is large.
      if (ws.bufferedAmount > 4 * 1024 * 1024) {
        stdin!.pause();
        const resume = () => (ws.bufferedAmount > 1024 * 1024 && ws.readyState === WebSocket.OPEN ? setTimeout(resume, 5) : stdin!.resume());
        setTimeout(resume, 5);
      }
    });
    stdin.on('end', () => v5 && send(CLOSE, Buffer.from([STDIN])));
  }
  let result: ExecExit | null = null;
  ws.on('message', (raw, isBinary) => {
    const buf = toBuffer(raw);
    if (!isBinary || buf.length === 0) return;
    const payload = buf.subarray(1);
    if (buf[0] === STDOUT) stdout.write(payload);
    else if (buf[0] === STDERR) stderr.write(payload);
    else if (buf[0] === STATUS) {
      const info = parseStatusChannel(ws.protocol, payload);
      result = info.exitCode !== undefined ? { exitCode: info.exitCode } : { exitCode: 126, error: info.error ?? 'exec failed' };
    }
  });
  const exit = new Promise<ExecExit>((resolve) => {
    ws.on('close', () => {
      stdout.end();
      stderr.end();
      resolve(result ?? { exitCode: 137, error: 'the exec connection closed without a status' });
    });
  });
  return {
    stdin,
    stdout,
    stderr,
    exit,
    resize(cols, rows) {
      if (t.req.tty && cols > 0 && rows > 0) send(RESIZE, Buffer.from(JSON.stringify({ Width: cols | 0, Height: rows | 0 })));
    },
    kill() {
      // Closing the stream makes the kubelet's runtime end the exec session (the process gets SIGKILL/SIGHUP per runtime).
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000);
    },
  };
}
