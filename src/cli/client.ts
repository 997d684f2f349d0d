import { LoomClient, apiErrorOf } from '../client/index.js';
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

/**
 * The CLI's client: the package's LoomClient (src/client) with the stored credential, and API
 * errors turned into CliError (one line, with a hint) instead of the library's typed errors.
 */
export class ApiClient extends LoomClient {
  constructor(opts: ClientOptions) {
    const serverUrl = normalizeServerUrl(opts.serverUrl);
    super({ serverUrl, token: opts.token !== undefined ? opts.token : (loadCredential(serverUrl)?.access_token ?? null) });
  }

  override requireToken(): string {
    if (!this.token) throw new CliError(`not logged in to ${this.serverUrl}: run \`loom login\``, 1, 'not_logged_in');
    return this.token;
  }

  protected override errorOf(res: Response): Promise<Error> {
    return ApiClient.errorOf(res);
  }

  protected override connectionError(e: unknown): Error {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    return new CliError(`cannot reach ${this.serverUrl}: ${cause?.code ?? cause?.message ?? (e as Error).message}`, 1, 'unreachable');
  }

  /** The one CliError for a failed response: the server's `{"error":{"message"}}`, or its text. */
  static async errorOf(res: Response): Promise<CliError> {
    const e = await apiErrorOf(res);
    const hint = res.status === 401 ? ' (run `loom login`)' : '';
    return new CliError(`${e.message}${hint}`, 1, e.code, e.status);
  }
}
