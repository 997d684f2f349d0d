import { randomBytes } from 'node:crypto';
import argon2 from 'argon2';
import type { Db } from '../store/db.js';
import { badRequest, conflict } from '../../common/errors.js';
import { newId, nowIso } from '../../common/ids.js';
import type { OrgService } from '../orgs/orgs.js';

export interface User {
  id: string;
  username: string;
  display_name: string;
  is_admin: boolean;
  created_at: string;
}

interface UserRow {
  id: string;
  username: string;
  display_name: string;
  password_hash: string | null;
  is_admin: number;
  created_at: string;
}

export const USERNAME_RE = /^[a-z][a-z0-9_-]{1,38}$/;

const toUser = (r: UserRow): User => ({
  id: r.id,
  username: r.username,
  display_name: r.display_name,
  is_admin: r.is_admin === 1,
  created_at: r.created_at,
});

/** Local users. Passwords are argon2id hashes; a user may have none (API tokens only). */
export class UserService {
  // Verified against when the user is unknown, so timing does not tell unknown users apart.
  private readonly dummyHash: Promise<string>;

  constructor(private readonly db: Db, private readonly orgs: OrgService) {
    this.dummyHash = argon2.hash(randomBytes(16), { type: argon2.argon2id });
  }

  static validateUsername(username: string): void {
    if (!USERNAME_RE.test(username)) {
      throw badRequest(`invalid username ${JSON.stringify(username)}: 2-39 characters, lower-case letters, digits, - and _, starting with a letter`, 'invalid_username');
    }
  }

  /** Creates the user and their personal org in one transaction. */
  async create(username: string, opts: { password?: string; isAdmin?: boolean; displayName?: string } = {}): Promise<User> {
    UserService.validateUsername(username);
    if (opts.password !== undefined && opts.password.length < 8) throw badRequest('password must be at least 8 characters', 'weak_password');
    const hash = opts.password !== undefined ? await argon2.hash(opts.password, { type: argon2.argon2id }) : null;
    const row: UserRow = {
      id: newId(),
      username,
      display_name: opts.displayName ?? username,
      password_hash: hash,
      is_admin: opts.isAdmin ? 1 : 0,
      created_at: nowIso(),
    };
    this.db.transaction(() => {
      if (this.byUsername(username)) throw conflict(`user ${username} already exists`, 'user_exists');
      this.db
        .prepare('INSERT INTO users (id, username, display_name, password_hash, is_admin, created_at) VALUES (@id, @username, @display_name, @password_hash, @is_admin, @created_at)')
        .run(row);
      this.orgs.createPersonal(row.id, username);
    })();
    return toUser(row);
  }

  async setPassword(userId: string, password: string): Promise<void> {
    if (password.length < 8) throw badRequest('password must be at least 8 characters', 'weak_password');
    const hash = await argon2.hash(password, { type: argon2.argon2id });
    this.db.prepare('UPDATE users SET password_hash = ? WHERE id = ?').run(hash, userId);
  }

  setAdmin(userId: string, isAdmin: boolean): void {
    this.db.prepare('UPDATE users SET is_admin = ? WHERE id = ?').run(isAdmin ? 1 : 0, userId);
  }

  byId(id: string): User | null {
    const r = this.db.prepare('SELECT * FROM users WHERE id = ?').get(id) as UserRow | undefined;
    return r ? toUser(r) : null;
  }

  byUsername(username: string): User | null {
    const r = this.db.prepare('SELECT * FROM users WHERE username = ?').get(username) as UserRow | undefined;
    return r ? toUser(r) : null;
  }

  count(): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM users').get() as { n: number }).n;
  }

  /** Checks a password; the same work is done for unknown users so timing does not tell them apart. */
  async verifyPassword(username: string, password: string): Promise<User | null> {
    const r = this.db.prepare('SELECT * FROM users WHERE username = ?').get(username) as UserRow | undefined;
    const hash = r?.password_hash ?? (await this.dummyHash);
    const ok = await argon2.verify(hash, password).catch(() => false);
    return r && r.password_hash && ok ? toUser(r) : null;
  }
}

