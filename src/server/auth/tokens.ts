import type { Db } from '../store/db.js';
import { newId, newSecret, sha256 } from '../../common/ids.js';
import { notFound } from '../../common/errors.js';
import { AccessEvents } from '../events.js';

export type TokenKind = 'session' | 'api' | 'web';

export interface TokenInfo {
  id: string;
  user_id: string;
  kind: TokenKind;
  name: string;
  created_at: string;
  last_used_at: string | null;
  expires_at: string | null;
}

interface TokenRow extends TokenInfo {
  token_hash: string;
  idle_seconds: number | null;
}

const PREFIX: Record<TokenKind, string> = { session: 'loom_s_', api: 'loom_a_', web: 'loom_w_' };
// Sliding expiry is written back at most this often, so a busy client does not write on every request.
const TOUCH_EVERY_MS = 60_000;

/**
 * Opaque bearer tokens. Only a SHA-256 of each token is stored; the token itself is shown once.
 * Session and web tokens slide: each use pushes expires_at to now + idle time.
 */
export class TokenService {
  constructor(private readonly db: Db, private readonly sessionIdleSeconds: number, readonly events: AccessEvents = new AccessEvents()) {}

  /** Whether the token still exists and has not expired (no sliding: streams re-check with this). */
  isLive(tokenId: string): boolean {
    const r = this.db.prepare('SELECT expires_at FROM tokens WHERE id = ?').get(tokenId) as { expires_at: string | null } | undefined;
    return !!r && (!r.expires_at || Date.parse(r.expires_at) > Date.now());
  }

  issue(userId: string, kind: TokenKind, name: string, opts: { expiresInSeconds?: number } = {}): { token: string; info: TokenInfo } {
    const token = newSecret(PREFIX[kind]);
    const now = Date.now();
    const idle = kind === 'api' ? null : this.sessionIdleSeconds;
    const ttl = opts.expiresInSeconds ?? idle;
    const row: TokenRow = {
      id: newId(),
      user_id: userId,
      kind,
      name,
      token_hash: sha256(token),
      created_at: new Date(now).toISOString(),
      last_used_at: null,
      expires_at: ttl ? new Date(now + ttl * 1000).toISOString() : null,
      idle_seconds: idle,
    };
    this.db
      .prepare('INSERT INTO tokens (id, user_id, kind, name, token_hash, created_at, last_used_at, expires_at, idle_seconds) VALUES (@id, @user_id, @kind, @name, @token_hash, @created_at, @last_used_at, @expires_at, @idle_seconds)')
      .run(row);
    const { token_hash: _h, idle_seconds: _i, ...info } = row;
    return { token, info };
  }

  /** Returns the token's record when it is valid, sliding its expiry; null otherwise (expired ones are deleted). */
  verify(token: string): TokenInfo | null {
    const row = this.db.prepare('SELECT * FROM tokens WHERE token_hash = ?').get(sha256(token)) as TokenRow | undefined;
    if (!row) return null;
    const now = Date.now();
    if (row.expires_at && Date.parse(row.expires_at) <= now) {
      this.db.prepare('DELETE FROM tokens WHERE id = ?').run(row.id);
      this.events.emit('token_revoked', { tokenId: row.id, userId: row.user_id });
      return null;
    }
    if (!row.last_used_at || now - Date.parse(row.last_used_at) > TOUCH_EVERY_MS) {
      const expires = row.idle_seconds ? new Date(now + row.idle_seconds * 1000).toISOString() : row.expires_at;
      row.last_used_at = new Date(now).toISOString();
      row.expires_at = expires;
      this.db.prepare('UPDATE tokens SET last_used_at = ?, expires_at = ? WHERE id = ?').run(row.last_used_at, expires, row.id);
    }
    const { token_hash: _h, idle_seconds: _i, ...info } = row;
    return info;
  }

  list(userId: string): TokenInfo[] {
    return this.db
      .prepare('SELECT id, user_id, kind, name, created_at, last_used_at, expires_at FROM tokens WHERE user_id = ? ORDER BY created_at')
      .all(userId) as TokenInfo[];
  }

  revoke(userId: string, tokenId: string): void {
    const r = this.db.prepare('DELETE FROM tokens WHERE id = ? AND user_id = ?').run(tokenId, userId);
    if (r.changes === 0) throw notFound('token');
    this.events.emit('token_revoked', { tokenId, userId });
  }

  revokeById(tokenId: string): void {
    this.db.prepare('DELETE FROM tokens WHERE id = ?').run(tokenId);
    this.events.emit('token_revoked', { tokenId, userId: null });
  }
}
