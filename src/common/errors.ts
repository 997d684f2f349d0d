/**
 * The one error type of Loom. Every layer throws LoomError; the HTTP layer turns it into
 * `{"error":{"code","message"}}` with its status, the CLI into one line on stderr.
 */
export class LoomError extends Error {
  readonly status: number;
  readonly code: string;
  readonly details?: Record<string, unknown>;

  constructor(status: number, code: string, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = 'LoomError';
    this.status = status;
    this.code = code;
    if (details) this.details = details;
  }

  toBody(): ErrorBody {
    return { error: { code: this.code, message: this.message, ...(this.details ? { details: this.details } : {}) } };
  }
}

export interface ErrorBody {
  error: { code: string; message: string; details?: Record<string, unknown> };
}

export const badRequest = (message: string, code = 'bad_request') => new LoomError(400, code, message);
export const unauthorized = (message = 'missing or invalid token', code = 'unauthorized') => new LoomError(401, code, message);
export const forbidden = (message: string, code = 'forbidden') => new LoomError(403, code, message);
export const notFound = (what: string, code = 'not_found') => new LoomError(404, code, `${what} not found`);
export const conflict = (message: string, code = 'conflict') => new LoomError(409, code, message);
export const tooMany = (message: string, code = 'limit_reached') => new LoomError(429, code, message);

export function isLoomError(e: unknown): e is LoomError {
  return e instanceof LoomError;
}

/** A short message for any thrown value (errno errors keep their code). */
export function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}
