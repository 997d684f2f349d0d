/** The audit component's tables: credentials (hashed), bindings, events. Nothing else reads them. */
import { newId, newSecret, nowIso, sha256 } from '../../common/ids.js';
import type { Db } from '../../server/store/db.js';
import type { AuditEvent, WeaverIdentity } from '../types.js';

export interface StoredEvent extends AuditEvent {
  id: number;
}

export interface EventQuery {
  weaverId: string;
  types?: string[];
  sinceNs?: bigint;
  untilNs?: bigint;
  pid?: number;
  afterId?: number;
  limit: number;
}

interface Row {
  id: number; weaver_id: string; org_id: string; owner_user_id: string; boot_id: string; seq: number; ts_ns: bigint;
  event_type: string; pid: number; ppid: number; tid: number; uid: number; comm: string; exec_id: string; parent_exec_id: string; ret: number; details: string;
}

const toEvent = (r: Row): StoredEvent => ({
  id: r.id, weaver_id: r.weaver_id, org_id: r.org_id, owner_user_id: r.owner_user_id, boot_id: r.boot_id, seq: r.seq,
  timestamp_ns: r.ts_ns.toString(), event_type: r.event_type as AuditEvent['event_type'], pid: r.pid, ppid: r.ppid, tid: r.tid, uid: r.uid,
  comm: r.comm, exec_id: r.exec_id, parent_exec_id: r.parent_exec_id, ret: r.ret, details: JSON.parse(r.details) as Record<string, unknown>,
});

export class AuditStore {
  constructor(private readonly db: Db) {}

  /** A new credential; only its hash is stored. */
  mintCredential(kind: 'local' | 'pod', weaverId?: string): { id: string; token: string } {
    const id = newId();
    const token = newSecret('loom_audit_');
    this.db.prepare('INSERT INTO audit_credentials (id, token_hash, kind, weaver_id, created_at) VALUES (?, ?, ?, ?, ?)').run(id, sha256(token), kind, weaverId ?? null, nowIso());
    return { id, token };
  }

  revokeCredential(id: string): void {
    this.db.prepare('UPDATE audit_credentials SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL').run(nowIso(), id);
  }

  /** Revokes the pod credentials of a weaver (when it goes). */
  revokeForWeaver(weaverId: string): void {
    this.db.prepare("UPDATE audit_credentials SET revoked_at = ? WHERE kind = 'pod' AND weaver_id = ? AND revoked_at IS NULL").run(nowIso(), weaverId);
  }

  credentialOf(token: string): { id: string; kind: 'local' | 'pod'; weaver_id: string | null } | null {
    const r = this.db.prepare('SELECT id, kind, weaver_id FROM audit_credentials WHERE token_hash = ? AND revoked_at IS NULL').get(sha256(token)) as
      | { id: string; kind: 'local' | 'pod'; weaver_id: string | null }
      | undefined;
    return r ?? null;
  }

  bind(credentialId: string, w: WeaverIdentity): void {
    this.db
      .prepare('INSERT INTO audit_bindings (credential_id, weaver_id, org_id, owner_user_id) VALUES (?, ?, ?, ?) ON CONFLICT (credential_id, weaver_id) DO UPDATE SET org_id = excluded.org_id, owner_user_id = excluded.owner_user_id')
      .run(credentialId, w.weaver_id, w.org_id, w.owner_user_id);
  }

  unbind(credentialId: string, weaverId: string): void {
    this.db.prepare('DELETE FROM audit_bindings WHERE credential_id = ? AND weaver_id = ?').run(credentialId, weaverId);
  }

  bindings(credentialId: string): Map<string, WeaverIdentity> {
    const rows = this.db.prepare('SELECT weaver_id, org_id, owner_user_id FROM audit_bindings WHERE credential_id = ?').all(credentialId) as WeaverIdentity[];
    return new Map(rows.map((r) => [r.weaver_id, r]));
  }

  /** Inserts events; duplicates of (weaver_id, boot_id, seq) are ignored. Returns how many were new. */
  insert(events: AuditEvent[]): { inserted: number; ids: number[] } {
    const stmt = this.db.prepare(
      `INSERT INTO audit_events (weaver_id, org_id, owner_user_id, boot_id, seq, ts_ns, event_type, pid, ppid, tid, uid, comm, exec_id, parent_exec_id, ret, details, received_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (weaver_id, boot_id, seq) DO NOTHING`,
    );
    const at = nowIso();
    const ids: number[] = [];
    this.db.transaction(() => {
      for (const e of events) {
        const r = stmt.run(e.weaver_id, e.org_id, e.owner_user_id, e.boot_id, e.seq, BigInt(e.timestamp_ns), e.event_type, e.pid, e.ppid, e.tid, e.uid, e.comm, e.exec_id, e.parent_exec_id, e.ret, JSON.stringify(e.details), at);
        if (r.changes) ids.push(Number(r.lastInsertRowid));
      }
    })();
    return { inserted: ids.length, ids };
  }

  query(q: EventQuery): StoredEvent[] {
    const where = ['weaver_id = ?'];
    const args: unknown[] = [q.weaverId];
    if (q.types?.length) {
      where.push(`event_type IN (${q.types.map(() => '?').join(',')})`);
      args.push(...q.types);
    }
    if (q.sinceNs !== undefined) where.push('ts_ns >= ?'), args.push(q.sinceNs);
    if (q.untilNs !== undefined) where.push('ts_ns < ?'), args.push(q.untilNs);
    if (q.pid !== undefined) where.push('pid = ?'), args.push(q.pid);
    if (q.afterId !== undefined) where.push('id > ?'), args.push(q.afterId);
    const rows = this.db
      .prepare(`SELECT * FROM audit_events WHERE ${where.join(' AND ')} ORDER BY id LIMIT ?`)
      .safeIntegers(true)
      .all(...args, q.limit) as Record<string, unknown>[];
    return rows.map((r) => toEvent(fromSafe(r)));
  }

  /** Gaps of a weaver within [since, until) — always reported beside a page of events. */
  gaps(weaverId: string, sinceNs?: bigint, untilNs?: bigint, limit = 1000): StoredEvent[] {
    return this.query({ weaverId, types: ['audit_gap'], ...(sinceNs !== undefined ? { sinceNs } : {}), ...(untilNs !== undefined ? { untilNs } : {}), limit });
  }

  /** Retention: deletes events older than maxAgeDays and beyond maxPerWeaver per weaver. */
  prune(maxAgeDays: number, maxPerWeaver: number): number {
    const cutoffNs = BigInt(Date.now() - maxAgeDays * 86400_000) * 1_000_000n;
    let n = this.db.prepare('DELETE FROM audit_events WHERE ts_ns < ?').run(cutoffNs).changes;
    const over = this.db.prepare('SELECT weaver_id, COUNT(*) AS c FROM audit_events GROUP BY weaver_id HAVING c > ?').all(maxPerWeaver) as { weaver_id: string; c: number }[];
    for (const o of over) {
      n += this.db
        .prepare('DELETE FROM audit_events WHERE weaver_id = ? AND id <= (SELECT id FROM audit_events WHERE weaver_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)')
        .run(o.weaver_id, o.weaver_id, maxPerWeaver).changes;
    }
    return n;
  }
}

function fromSafe(r: Record<string, unknown>): Row {
  const o: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(r)) o[k] = typeof v === 'bigint' && k !== 'ts_ns' ? Number(v) : v;
  return o as unknown as Row;
}
