/** KubeConfig loading and API error helpers. */
import { ApiException, KubeConfig } from '@kubernetes/client-node';

export interface KubeConfigSource {
  /** Path of a kubeconfig file (KUBECONFIG); empty or absent means none. */
  kubeconfig?: string;
  env?: NodeJS.ProcessEnv;
}

/**
 * The kubeconfig file when one is named; the in-cluster service account when running in a pod
 * (KUBERNETES_SERVICE_HOST set); else client-node's default lookup (~/.kube/config).
 */
export function loadKubeConfig(src: KubeConfigSource = {}): KubeConfig {
  const env = src.env ?? process.env;
  const kc = new KubeConfig();
  if (src.kubeconfig) {
    kc.loadFromFile(src.kubeconfig);
  } else if (env.KUBERNETES_SERVICE_HOST) {
    kc.loadFromCluster();
  } else {
    kc.loadFromDefault();
  }
  return kc;
}

/** The API server URL of the current context. */
export function apiServerUrl(kc: KubeConfig): string {
  return kc.getCurrentCluster()?.server ?? '(no cluster in kubeconfig)';
}

/** What went wrong with an API call, in a form both messages and branches can use. */
export interface ApiFailure {
  /** HTTP status when the API server answered. */
  httpStatus?: number;
  /** Status.reason (NotFound, AlreadyExists, Forbidden…) when the body was a Status. */
  reason?: string;
  /** Errno-like code (ECONNREFUSED, ETIMEDOUT…) when it did not. */
  errno?: string;
  message: string;
}

interface StatusBody {
  kind?: string;
  message?: string;
  reason?: string;
  code?: number;
}

function statusBody(body: unknown): StatusBody | undefined {
  if (body && typeof body === 'object') return body as StatusBody;
  if (typeof body === 'string') {
    try {
      const parsed: unknown = JSON.parse(body);
      if (parsed && typeof parsed === 'object') return parsed as StatusBody;
    } catch {
      return { message: body.slice(0, 300) };
    }
  }
  return undefined;
}

export function describeApiError(e: unknown): ApiFailure {
  if (e instanceof ApiException) {
    const code = (e as ApiException<unknown>).code;
    const body = statusBody((e as ApiException<unknown>).body);
    return {
      httpStatus: code,
      ...(body?.reason ? { reason: body.reason } : {}),
      message: body?.message || `HTTP ${code}`,
    };
  }
  const err = e as { code?: unknown; errno?: unknown; message?: unknown; type?: unknown; cause?: { code?: unknown } };
  const errno = typeof err?.code === 'string' ? err.code : typeof err?.cause?.code === 'string' ? err.cause.code : undefined;
  const message = typeof err?.message === 'string' ? err.message : String(e);
  return { ...(errno ? { errno } : {}), message };
}

export function isNotFound(e: unknown): boolean {
  return describeApiError(e).httpStatus === 404;
}

/** Races a promise against a timer; the error names what timed out. */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`${what} timed out after ${ms} ms`), { code: 'ETIMEDOUT' })), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}
