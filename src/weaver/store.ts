import type { Db } from '../server/store/db.js';
import type { WeaverStatus } from './provisioner.js';
import { sumUsage, type Owner, type Usage } from './quotas.js';

/** A weaver as the API shows it. */
export interface Weaver {
  id: string;
  org_id: string;
  owner_user_id: string;
  image: string;
  status: WeaverStatus;
  reason?: string;
  exit_code?: number;
  repo?: string;
  branch?: string;
  env_keys: string[];
  command?: string[];
  resources: { cpu: string; memory: string };
  created_at: string;
  started_at?: string;
  ended_at?: string;
  expires_at: string;
  lifetime_hours: number;
  tags: Record<string, string>;
  /** A fork: the weaver it was forked from and the snapshot it started from. */
  parent_weaver_id?: string;
  snapshot_id?: string;
}

interface Row {
  id: string;
  org_id: string;
  owner_user_id: string;
  backend: string;
  image: string;
  status: WeaverStatus;
  reason: string | null;
  exit_code: number | null;
  repo: string | null;
  branch: string | null;
  env_keys: string;
  command: string | null;
  cpu: string;
  memory: string;
  lifetime_hours: number;
  tags: string;
  created_at: string;
  started_at: string | null;
  ended_at: string | null;
  expires_at: string;
  failure_log: string | null;
  env: string;
  parent_weaver_id: string | null;
  snapshot_id: string | null;
}

function toWeaver(r: Row): Weaver {
  return {
    id: r.id,
    org_id: r.org_id,
    owner_user_id: r.owner_user_id,
    image: r.image,
    status: r.status,
    ...(r.reason !== null ? { reason: r.reason } : {}),
    ...(r.exit_code !== null ? { exit_code: r.exit_code } : {}),
    ...(r.repo !== null ? { repo: r.repo } : {}),
    ...(r.branch !== null ? { branch: r.branch } : {}),
    env_keys: JSON.parse(r.env_keys) as string[],
    ...(r.command !== null ? { command: JSON.parse(r.command) as string[] } : {}),
    resources: { cpu: r.cpu, memory: r.memory },
    created_at: r.created_at,
    ...(r.started_at !== null ? { started_at: r.started_at } : {}),
    ...(r.ended_at !== null ? { ended_at: r.ended_at } : {}),
    expires_at: r.expires_at,
    lifetime_hours: r.lifetime_hours,
    tags: JSON.parse(r.tags) as Record<string, string>,
    ...(r.parent_weaver_id !== null ? { parent_weaver_id: r.parent_weaver_id } : {}),
    ...(r.snapshot_id !== null ? { snapshot_id: r.snapshot_id } : {}),
  };
}

export const LIVE_STATUSES: WeaverStatus[] = ['pending', 'running'];

/** SQLite records of weavers. The backend owns containers/pods; this owns what the API shows. */
export class WeaverStore {
  constructor(private readonly db: Db) {}

  /** Env values are stored (a fork inherits them) but never part of the API's weaver object. */
  insert(w: Weaver, backend: string, env: Record<string, string>): void {
    this.db
      .prepare(
        `INSERT INTO weavers (id, org_id, owner_user_id, backend, image, status, repo, branch, env_keys, env, command, cpu, memory, lifetime_hours, tags, created_at, expires_at, parent_weaver_id, snapshot_id)
         VALUES (@id, @org_id, @owner_user_id, @backend, @image, @status, @repo, @branch, @env_keys, @env, @command, @cpu, @memory, @lifetime_hours, @tags, @created_at, @expires_at, @parent_weaver_id, @snapshot_id)`,
      )
      .run({
        env: JSON.stringify(env),
        parent_weaver_id: w.parent_weaver_id ?? null,
        snapshot_id: w.snapshot_id ?? null,
        id: w.id,
        org_id: w.org_id,
        owner_user_id: w.owner_user_id,
        backend,
        image: w.image,
        status: w.status,
        repo: w.repo ?? null,
        branch: w.branch ?? null,
        env_keys: JSON.stringify(w.env_keys),
        command: w.command ? JSON.stringify(w.command) : null,
        cpu: w.resources.cpu,
        memory: w.resources.memory,
        lifetime_hours: w.lifetime_hours,
        tags: JSON.stringify(w.tags),
        created_at: w.created_at,
        expires_at: w.expires_at,
      });
  }

  /** Inserts only while fewer than `max` weavers are pending or running (one transaction). */
  insertWithin(w: Weaver, backend: string, max: number, env: Record<string, string>): boolean {
    return this.db.transaction(() => {
      if (this.countLive() >= max) return false;
      this.insert(w, backend, env);
      return true;
    })();
  }

  /** CPU and memory held by the live weavers of a user or an org (for the quotas). */
  usage(owner: Owner): Usage {
    const [col, val] = 'userId' in owner ? ['owner_user_id', owner.userId] : ['org_id', owner.orgId];
    const rows = this.db.prepare(`SELECT cpu, memory FROM weavers WHERE ${col} = ? AND status IN ('pending', 'running')`).all(val) as { cpu: string; memory: string }[];
    return sumUsage(rows);
  }

  get(id: string): Weaver | null {
    const r = this.db.prepare('SELECT * FROM weavers WHERE id = ?').get(id) as Row | undefined;
    return r ? toWeaver(r) : null;
  }

  /** The weaver's env values and backend (for snapshots and forks). */
  private(id: string): { env: Record<string, string>; backend: string } | null {
    const r = this.db.prepare('SELECT env, backend FROM weavers WHERE id = ?').get(id) as { env: string; backend: string } | undefined;
    return r ? { env: JSON.parse(r.env) as Record<string, string>, backend: r.backend } : null;
  }

  fromSnapshot(snapshotId: string): Weaver[] {
    return (this.db.prepare('SELECT * FROM weavers WHERE snapshot_id = ? ORDER BY created_at').all(snapshotId) as Row[]).map(toWeaver);
  }

  failureLog(id: string): string | null {
    const r = this.db.prepare('SELECT failure_log FROM weavers WHERE id = ?').get(id) as { failure_log: string | null } | undefined;
    return r?.failure_log ?? null;
  }

  listForOrgs(orgIds: string[]): Weaver[] {
    if (orgIds.length === 0) return [];
    const rows = this.db
      .prepare(`SELECT * FROM weavers WHERE org_id IN (${orgIds.map(() => '?').join(',')}) ORDER BY created_at DESC`)
      .all(...orgIds) as Row[];
    return rows.map(toWeaver);
  }

  all(): Weaver[] {
    return (this.db.prepare('SELECT * FROM weavers').all() as Row[]).map(toWeaver);
  }

  countLive(): number {
    return (this.db.prepare("SELECT COUNT(*) AS n FROM weavers WHERE status IN ('pending', 'running')").get() as { n: number }).n;
  }

  /** Updates status fields; returns the weaver before the change (null when gone). */
  setStatus(id: string, status: WeaverStatus, fields: { reason?: string | null; exitCode?: number | null; startedAt?: string; endedAt?: string; failureLog?: string } = {}): Weaver | null {
    const before = this.get(id);
    if (!before) return null;
    this.db
      .prepare(
        `UPDATE weavers SET status = @status,
           reason = CASE WHEN @setReason THEN @reason ELSE reason END,
           exit_code = CASE WHEN @setExit THEN @exit ELSE exit_code END,
           started_at = COALESCE(started_at, @startedAt),
           ended_at = COALESCE(ended_at, @endedAt),
           failure_log = COALESCE(@failureLog, failure_log)
         WHERE id = @id`,
      )
      .run({
        id,
        status,
        setReason: fields.reason !== undefined ? 1 : 0,
        reason: fields.reason ?? null,
        setExit: fields.exitCode !== undefined ? 1 : 0,
        exit: fields.exitCode ?? null,
        startedAt: fields.startedAt ?? null,
        endedAt: fields.endedAt ?? null,
        failureLog: fields.failureLog ?? null,
      });
    return before;
  }

  remove(id: string): void {
    this.db.prepare('DELETE FROM weavers WHERE id = ?').run(id);
  }
}
