/** Streaming a container's log from the pod log API (GET …/pods/<name>/log). */
import http from 'node:http';
import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';
import { LoomError } from '../../common/errors.js';

export interface PodLogTarget {
  kc: KubeConfig;
  namespace: string;
  pod: string;
  container: string;
  tail?: number;
  follow: boolean;
  signal?: AbortSignal;
}

export function logPath(namespace: string, pod: string, container: string, opts: { tail?: number; follow: boolean }): string {
  const q = new URLSearchParams({ container, follow: String(opts.follow) });
  if (opts.tail !== undefined) q.set('tailLines', String(Math.max(0, Math.floor(opts.tail))));
  return `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(pod)}/log?${q.toString()}`;
}

async function open(t: PodLogTarget): Promise<{ res: http.IncomingMessage; req: http.ClientRequest }> {
  const cluster = t.kc.getCurrentCluster();
  if (!cluster) throw new LoomError(503, 'kubernetes_unavailable', 'no cluster in the kubeconfig');
  const url = new URL(cluster.server.replace(/\/$/, '') + logPath(t.namespace, t.pod, t.container, t));
  const opts: https.RequestOptions = {};
  await t.kc.applyToHTTPSOptions(opts as never);
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(url, { ...opts, method: 'GET', headers: { ...(opts.headers ?? {}), Accept: 'text/plain, */*' } });
    req.on('response', (res) => resolve({ res, req }));
    req.on('error', (err) => reject(new LoomError(502, 'kubernetes_error', `pod log request failed: ${err.message}`)));
    if (t.signal) {
      if (t.signal.aborted) req.destroy();
      else t.signal.addEventListener('abort', () => req.destroy(), { once: true });
    }
    req.end();
  });
}

async function errorOf(res: http.IncomingMessage, pod: string): Promise<LoomError> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  const body = Buffer.concat(chunks).toString('utf8');
  let msg = body.trim().slice(0, 500);
  try {
    const st = JSON.parse(body) as { message?: string };
    if (st.message) msg = st.message;
  } catch {
    // plain text
  }
  const code = res.statusCode ?? 502;
  if (code === 404) return new LoomError(404, 'not_found', `pod ${pod} not found`);
  // 400 is what the API server answers while the container is waiting to start.
  if (code === 400) return new LoomError(409, 'weaver_not_running', msg || `logs of pod ${pod} are not available yet`);
  return new LoomError(502, 'kubernetes_error', `pod log request failed (${code}): ${msg}`);
}

/** Yields log chunks as they come; ends at the end of the log (or when follow ends), or on abort. */
export async function* streamPodLog(t: PodLogTarget): AsyncGenerator<Buffer> {
  if (t.signal?.aborted) return;
  const { res, req } = await open(t);
  if (res.statusCode !== 200) throw await errorOf(res, t.pod);
  try {
    for await (const chunk of res) {
      yield chunk as Buffer;
    }
  } catch (e) {
    if (t.signal?.aborted) return;
    throw new LoomError(502, 'kubernetes_error', `pod log stream broke: ${(e as Error).message}`);
  } finally {
    req.destroy();
  }
}
