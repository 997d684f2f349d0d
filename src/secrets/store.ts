/** SQL of the secrets component (its own tables only). Values are stored sealed; see crypto.ts. */
import type { Db } from '../server/store/db.js';
import type { Scope } from './model.js';

export interface SecretRow {
  id: string;
  org_id: string;
  scope: Scope;
  target: string;
  name: string;
  current_version: number;
  created_by: string;
  created_at: string;
  updated_at: string;
}

export interface VersionRow {
  secret_id: string;
  version: number;
  kek_version: number;
  wrapped_dek: Buffer;
  ciphertext: Buffer;
  size: number;
  created_by: string;
  created_at: string;
}

export interface AccessEntry {
  seq: number;
  at: string;
  org_id: string | null;
  weaver_id: string | null;
  name: string | null;
  scope: Scope | null;
  target: string | null;
  version: number | null;
  outcome: 'read' | 'denied';
  purpose: string;
  reason: string | null;
}

export class SecretsStore {
  constructor(private readonly db: Db) {}

  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  find(orgId: string, scope: Scope, target: string, name: string): SecretRow | null {
    return (this.db.prepare('SELECT * FROM secrets WHERE org_id = ? AND scope = ? AND target = ? AND name = ?').get(orgId, scope, target, name) as SecretRow | undefined) ?? null;
  }

  get(id: string): SecretRow | null {
    return (this.db.prepare('SELECT * FROM secrets WHERE id = ?').get(id) as SecretRow | undefined) ?? null;
  }

  insertSecret(r: SecretRow): void {
    this.db
      .prepare('INSERT INTO secrets (id, org_id, scope, target, name, current_version, created_by, created_at, updated_at) VALUES (@id, @org_id, @scope, @target, @name, @current_version, @created_by, @created_at, @updated_at)')
      .run(r);
  }

  insertVersion(v: VersionRow): void {
    this.db
      .prepare('INSERT INTO secret_versions (secret_id, version, kek_version, wrapped_dek, ciphertext, size, created_by, created_at) VALUES (@secret_id, @version, @kek_version, @wrapped_dek, @ciphertext, @size, @created_by, @created_at)')
      .run(v);
  }

  setCurrent(id: string, version: number, at: string): void {
    this.db.prepare('UPDATE secrets SET current_version = ?, updated_at = ? WHERE id = ?').run(version, at, id);
  }

  maxVersion(id: string): number {
    return (this.db.prepare('SELECT COALESCE(MAX(version), 0) AS v FROM secret_versions WHERE secret_id = ?').get(id) as { v: number }).v;
  }

  remove(id: string): void {
    this.db.prepare('DELETE FROM secrets WHERE id = ?').run(id);
  }

  removeForWeaver(weaverId: string): SecretRow[] {
    const rows = this.db.prepare("SELECT * FROM secrets WHERE scope = 'weaver' AND target = ?").all(weaverId) as SecretRow[];
    this.db.prepare("DELETE FROM secrets WHERE scope = 'weaver' AND target = ?").run(weaverId);
    return rows;
  }

  list(orgIds: string[], filter: { scope?: Scope; target?: string }): SecretRow[] {
    if (orgIds.length === 0) return [];
    const where = [`org_id IN (${orgIds.map(() => '?').join(',')})`];
    const args: unknown[] = [...orgIds];
    if (filter.scope) {
      where.push('scope = ?');
      args.push(filter.scope);
    }
    if (filter.target) {
      where.push('target = ?');
      args.push(filter.target);
    }
    return this.db.prepare(`SELECT * FROM secrets WHERE ${where.join(' AND ')} ORDER BY name, scope, target`).all(...args) as SecretRow[];
  }

  versions(id: string): VersionRow[] {
    return this.db.prepare('SELECT * FROM secret_versions WHERE secret_id = ? ORDER BY version').all(id) as VersionRow[];
  }

  version(id: string, version: number): VersionRow | null {
    return (this.db.prepare('SELECT * FROM secret_versions WHERE secret_id = ? AND version = ?').get(id, version) as VersionRow | undefined) ?? null;
  }

  /** Every secret that could apply to a weaver of this org (on this repo), any scope. */
  candidates(orgId: string, weaverId: string, repo: string | null): SecretRow[] {
    return this.db
      .prepare("SELECT * FROM secrets WHERE org_id = ? AND ((scope = 'org' AND target = ?) OR (scope = 'repo' AND target = ?) OR (scope = 'weaver' AND target = ?))")
      .all(orgId, orgId, repo ?? '', weaverId) as SecretRow[];
  }

  // ------------------------------------------------------------ identities

  putIdentity(weaverId: string, orgId: string, tokenHash: string, at: string): void {
    this.db
      .prepare('INSERT INTO weaver_identities (weaver_id, token_hash, org_id, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (weaver_id) DO UPDATE SET token_hash = excluded.token_hash, org_id = excluded.org_id, created_at = excluded.created_at')
      .run(weaverId, tokenHash, orgId, at);
  }

  identityByHash(hash: string): { weaver_id: string; org_id: string } | null {
    return (this.db.prepare('SELECT weaver_id, org_id FROM weaver_identities WHERE token_hash = ?').get(hash) as { weaver_id: string; org_id: string } | undefined) ?? null;
  }

  removeIdentity(weaverId: string): boolean {
    return this.db.prepare('DELETE FROM weaver_identities WHERE weaver_id = ?').run(weaverId).changes > 0;
  }

  // ------------------------------------------------------------ access log

  logAccess(e: Omit<AccessEntry, 'seq'>): void {
    this.db
      .prepare('INSERT INTO secret_access_log (at, org_id, weaver_id, name, scope, target, version, outcome, purpose, reason) VALUES (@at, @org_id, @weaver_id, @name, @scope, @target, @version, @outcome, @purpose, @reason)')
      .run(e);
  }

  accessLog(orgId: string | null, limit: number): AccessEntry[] {
    const rows = orgId === null
      ? this.db.prepare('SELECT * FROM secret_access_log ORDER BY seq DESC LIMIT ?').all(limit)
      : this.db.prepare('SELECT * FROM secret_access_log WHERE org_id = ? ORDER BY seq DESC LIMIT ?').all(orgId, limit);
    return (rows as AccessEntry[]).reverse();
  }
}
