import { randomBytes, randomUUID, createHash } from 'node:crypto';

export const newId = (): string => randomUUID();

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const isUuid = (s: string): boolean => UUID_RE.test(s);

/** An opaque secret with a readable prefix, e.g. `loom_s_…` for sessions, `loom_a_…` for API tokens. */
export const newSecret = (prefix: string): string => `${prefix}${randomBytes(32).toString('base64url')}`;

/** Tokens are 256-bit random, so a plain SHA-256 is a sufficient one-way hash for lookup. */
export const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

export const nowIso = (): string => new Date().toISOString();
