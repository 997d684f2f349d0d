import { loadCredential, normalizeServerUrl } from './credentials.js';

/** An error the CLI prints as one line and exits non-zero with. */
export class CliError extends Error {
  constructor(message: string, readonly exitCode = 1, readonly code?: string, readonly status?: number) {
    super(message);
    this.name = 'CliError';
  }
}

export interface ClientOptions {
  serverUrl: string;
  token?: string | null;
}

/** A thin JSON client over fetch; API errors become CliError with the server's message. */
export class ApiClient {
  readonly serverUrl: string;
  readonly token: string | null;

  constructor(opts: ClientOptions) {
    this.serverUrl = normalizeServerUrl(opts.serverUrl);
    this.token = opts.token !== undefined ? opts.token : (loadCredential(this.serverUrl)?.access_token ?? null);
  }

  requireToken(): string {
    if (!this.token) throw new CliError(`not logged in to ${this.serverUrl}: run \`loom login\``, 1, 'not_logged_in');
    return this.token;
  }

  headers(auth = true, extra: Record<string, string> = {}): Record<string, string> {
    const h: Record<string, string> = { accept: 'application/json', ...extra };
    if (auth) h['authorization'] = `Bearer ${this.requireToken()}`;
    return h;
  }

  async raw(method: string, path: string, opts: { body?: unknown; auth?: boolean; headers?: Record<string, string>; signal?: AbortSignal; rawBody?: RequestInit['body'] } = {}): Promise<Response> {
    const headers = this.headers(opts.auth ?? true, opts.headers);
    let body: RequestInit['body'] | undefined = opts.rawBody;
    if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    try {
      return await fetch(`${this.serverUrl}${path}`, { method, headers, body, signal: opts.signal ?? null, ...(opts.rawBody ? { duplex: 'half' } : {}) } as RequestInit);
    } catch (e) {
      if ((e as Error).name === 'AbortError') throw e;
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      throw new CliError(`cannot reach ${this.serverUrl}: ${cause?.code ?? cause?.message ?? (e as Error).message}`, 1, 'unreachable');
    }
  }

  async request<T>(method: string, path: string, opts: { body?: unknown; auth?: boolean; rawBody?: RequestInit['body']; headers?: Record<string, string> } = {}): Promise<T> {
    const res = await this.raw(method, path, opts);
    if (!res.ok) throw await ApiClient.errorOf(res);
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    try {
      return (text ? JSON.parse(text) : undefined) as T;
    } catch {
      return undefined as T; // not JSON
    }
  }

  /** The one CliError for a failed response: the server's `{"error":{"message"}}`, or its text. */
  static async errorOf(res: Response): Promise<CliError> {
    const text = await res.text();
    let err: { code?: string; message?: string } | undefined;
    try {
      err = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
    } catch {
      /* not JSON */
    }
    const msg = err?.message ?? (text.trim().slice(0, 200) || res.statusText);
    const hint = res.status === 401 ? ' (run `loom login`)' : '';
    return new CliError(`${msg}${hint}`, 1, err?.code, res.status);
  }

  get<T>(path: string) {
    return this.request<T>('GET', path);
  }
  post<T>(path: string, body?: unknown) {
    return this.request<T>('POST', path, { body: body ?? {} });
  }
  delete<T>(path: string) {
    return this.request<T>('DELETE', path);
  }
}
