import { randomInt } from 'node:crypto';
import type { Db } from '../store/db.js';
import { newSecret, nowIso, sha256 } from '../../common/ids.js';
import { badRequest, LoomError } from '../../common/errors.js';
import type { TokenService } from './tokens.js';

// No 0/O, 1/I/L: user codes are read off one screen and typed on another.
const ALPHABET = 'ABCDEFGHJKMNPQRSTUVWXYZ23456789';
export const DEVICE_CODE_TTL_SECONDS = 600;
export const DEVICE_POLL_INTERVAL_SECONDS = 2;

export type PollResult =
  | { status: 'pending' | 'expired' | 'denied' }
  | { access_token: string; token_type: 'Bearer'; user_id: string };

interface DeviceRow {
  device_code_hash: string;
  user_code: string;
  status: 'pending' | 'approved' | 'denied' | 'consumed';
  user_id: string | null;
  created_at: string;
  expires_at: string;
  last_poll_at: string | null;
}

export function normalizeUserCode(input: string): string {
  return input.toUpperCase().replace(/[^A-Z0-9]/g, '');
}

const formatUserCode = (raw: string) => `${raw.slice(0, 4)}-${raw.slice(4)}`;

/** The OAuth 2.0 device authorization grant (RFC 8628), reduced to what the CLI needs. */
export class DeviceFlow {
  constructor(private readonly db: Db, private readonly tokens: TokenService) {}

  start(): { device_code: string; user_code: string; expires_in: number; interval: number } {
    const deviceCode = newSecret('loom_d_');
    let raw = '';
    for (let i = 0; i < 8; i++) raw += ALPHABET[randomInt(ALPHABET.length)];
    const now = Date.now();
    this.db.prepare('DELETE FROM device_codes WHERE expires_at <= ?').run(new Date(now).toISOString());
    this.db
      .prepare('INSERT INTO device_codes (device_code_hash, user_code, status, user_id, created_at, expires_at) VALUES (?, ?, ?, NULL, ?, ?)')
      .run(sha256(deviceCode), raw, 'pending', new Date(now).toISOString(), new Date(now + DEVICE_CODE_TTL_SECONDS * 1000).toISOString());
    return { device_code: deviceCode, user_code: formatUserCode(raw), expires_in: DEVICE_CODE_TTL_SECONDS, interval: DEVICE_POLL_INTERVAL_SECONDS };
  }

  poll(deviceCode: string): PollResult {
    const row = this.db.prepare('SELECT * FROM device_codes WHERE device_code_hash = ?').get(sha256(deviceCode)) as DeviceRow | undefined;
    if (!row || row.status === 'consumed') throw badRequest('unknown or already used device code', 'invalid_device_code');
    if (Date.parse(row.expires_at) <= Date.now()) return { status: 'expired' };
    if (row.status === 'denied') return { status: 'denied' };
    if (row.status === 'pending') {
      this.db.prepare('UPDATE device_codes SET last_poll_at = ? WHERE device_code_hash = ?').run(nowIso(), row.device_code_hash);
      return { status: 'pending' };
    }
    // Approved: hand out a session token exactly once.
    const consumed = this.db
      .prepare("UPDATE device_codes SET status = 'consumed' WHERE device_code_hash = ? AND status = 'approved'")
      .run(row.device_code_hash);
    if (consumed.changes !== 1 || !row.user_id) throw badRequest('unknown or already used device code', 'invalid_device_code');
    const { token } = this.tokens.issue(row.user_id, 'session', 'cli (device login)');
    return { access_token: token, token_type: 'Bearer', user_id: row.user_id };
  }

  /** A signed-in user approves or denies the code shown by their CLI. */
  decide(userCode: string, userId: string, approve: boolean): void {
    const raw = normalizeUserCode(userCode);
    const row = this.db.prepare('SELECT * FROM device_codes WHERE user_code = ?').get(raw) as DeviceRow | undefined;
    if (!row || row.status !== 'pending' || Date.parse(row.expires_at) <= Date.now()) {
      throw new LoomError(400, 'invalid_user_code', 'that code is unknown, expired or already used; start `loom login` again');
    }
    this.db
      .prepare('UPDATE device_codes SET status = ?, user_id = ? WHERE user_code = ?')
      .run(approve ? 'approved' : 'denied', userId, raw);
  }
}
