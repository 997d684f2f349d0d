import type { Db } from '../server/store/db.js';
import { nowIso } from '../common/ids.js';

export type ContainerStatus = 'creating' | 'created' | 'running' | 'stopped' | 'failed' | 'deleting';
export type ConsistencyMode = 'crash-consistent' | 'app-consistent';
export type OperationStatus = 'accepted' | 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'timed_out';
export type OperationType = 'container_create' | 'container_kill' | 'container_resume' | 'container_delete' | 'snapshot' | 'fork' | 'clone';

export const ACTIVE_OP_STATUSES: OperationStatus[] = ['accepted', 'queued', 'running'];
export const FINAL_OP_STATUSES: OperationStatus[] = ['succeeded', 'failed', 'cancelled', 'timed_out'];

/** A container as the API shows it. */
export interface Container {
  id: string;
  org_id: string;
  owner_user_id: string;
  name: string;
  status: ContainerStatus;
  command: string[];
  env: Record<string, string>;
  source_path?: string;
  source_snapshot_id?: string;
  exit_code?: number;
  reason?: string;
  rootfs_bytes: number;
  created_at: string;
  updated_at: string;
  started_at?: string;
  stopped_at?: string;
}

/** A snapshot as the API shows it. */
export interface Snapshot {
  snapshot_id: string;
  org_id: string;
  /** The user who took it; they (and org admins) may clone, pin or delete it. */
  owner_user_id: string;
  source_kind: 'container' | 'weaver';
  container_id: string;
  parent_snapshot_id: string | null;
  status: 'creating' | 'ready';
  consistency_mode: ConsistencyMode;
  labels: Record<string, string>;
  pinned: boolean;
  ttl_seconds: number | null;
  expires_at: string | null;
  frozen_ms?: number;
  strategy?: string;
  files?: number;
  bytes?: number;
  created_at: string;
  completed_at?: string;
}

/** An operation exactly as DESIGN.md lists it. */
export interface Operation {
  operation_id: string;
  operation_type: OperationType;
  status: OperationStatus;
  progress_pct: number;
  container_id?: string;
  snapshot_id?: string;
  result_container_id?: string;
  warnings: string[];
  capability_downgrades: string[];
  reason_code?: string;
  reason_message?: string;
  started_at: string;
  updated_at: string;
  completed_at?: string;
}

export interface ContainerRow {
  id: string;
  org_id: string;
  owner_user_id: string;
  name: string;
  source_path: string | null;
  source_snapshot_id: string | null;
  command: string;
  env: string;
  status: ContainerStatus;
  exit_code: number | null;
  reason: string | null;
  rootfs_bytes: number;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  stopped_at: string | null;
}

export interface SnapshotRow {
  id: string;
  org_id: string;
  created_by: string;
  source_kind: 'container' | 'weaver';
  container_id: string;
  parent_snapshot_id: string | null;
  status: 'creating' | 'ready';
  consistency_mode: ConsistencyMode;
  labels: string;
  pinned: number;
  ttl_seconds: number | null;
  expires_at: string | null;
  frozen_ms: number | null;
  strategy: string | null;
  files: number | null;
  bytes: number | null;
  command: string;
  env: string;
  created_at: string;
  completed_at: string | null;
}

export interface OperationRow {
  id: string;
  org_id: string;
  user_id: string;
  operation_type: OperationType;
  status: OperationStatus;
  progress_pct: number;
  container_id: string | null;
  snapshot_id: string | null;
  result_container_id: string | null;
  warnings: string;
  capability_downgrades: string;
  reason_code: string | null;
  reason_message: string | null;
  params: string;
  idempotency_key: string | null;
  request_hash: string | null;
  started_at: string;
  updated_at: string;
  completed_at: string | null;
}

const opt = <K extends string, V>(k: K, v: V | null | undefined): Partial<Record<K, V>> => (v === null || v === undefined ? {} : ({ [k]: v } as Record<K, V>));

export function toContainer(r: ContainerRow): Container {
  return {
    id: r.id,
    org_id: r.org_id,
    owner_user_id: r.owner_user_id,
    name: r.name,
    status: r.status,
    command: JSON.parse(r.command) as string[],
    env: JSON.parse(r.env) as Record<string, string>,
    ...opt('source_path', r.source_path),
    ...opt('source_snapshot_id', r.source_snapshot_id),
    ...opt('exit_code', r.exit_code),
    ...opt('reason', r.reason),
    rootfs_bytes: r.rootfs_bytes,
    created_at: r.created_at,
    updated_at: r.updated_at,
    ...opt('started_at', r.started_at),
    ...opt('stopped_at', r.stopped_at),
  };
}

export function toSnapshot(r: SnapshotRow): Snapshot {
  return {
    snapshot_id: r.id,
    org_id: r.org_id,
    owner_user_id: r.created_by,
    source_kind: r.source_kind,
    container_id: r.container_id,
    parent_snapshot_id: r.parent_snapshot_id,
    status: r.status,
    consistency_mode: r.consistency_mode,
    labels: JSON.parse(r.labels) as Record<string, string>,
    pinned: r.pinned === 1,
    ttl_seconds: r.ttl_seconds,
    expires_at: r.expires_at,
    ...opt('frozen_ms', r.frozen_ms),
    ...opt('strategy', r.strategy),
    ...opt('files', r.files),
    ...opt('bytes', r.bytes),
    created_at: r.created_at,
    ...opt('completed_at', r.completed_at),
  };
}

export function toOperation(r: OperationRow): Operation {
  return {
    operation_id: r.id,
    operation_type: r.operation_type,
    status: r.status,
    progress_pct: r.progress_pct,
    ...opt('container_id', r.container_id),
    ...opt('snapshot_id', r.snapshot_id),
    ...opt('result_container_id', r.result_container_id),
    warnings: JSON.parse(r.warnings) as string[],
    capability_downgrades: JSON.parse(r.capability_downgrades) as string[],
    ...opt('reason_code', r.reason_code),
    ...opt('reason_message', r.reason_message),
    started_at: r.started_at,
    updated_at: r.updated_at,
    ...opt('completed_at', r.completed_at),
  };
}

type Patch<R> = Partial<Omit<R, 'id'>>;

function update(db: Db, table: string, id: string, patch: Record<string, unknown>): void {
  const keys = Object.keys(patch);
  if (keys.length === 0) return;
  db.prepare(`UPDATE ${table} SET ${keys.map((k) => `${k} = @${k}`).join(', ')} WHERE id = @id`).run({ ...patch, id });
}

function insert(db: Db, table: string, row: Record<string, unknown>): void {
  const keys = Object.keys(row);
  db.prepare(`INSERT INTO ${table} (${keys.join(', ')}) VALUES (${keys.map((k) => `@${k}`).join(', ')})`).run(row);
}

/** SQLite records of the branching API. Synchronous (better-sqlite3): a check and a write in one JS turn are atomic. */
export class BranchingStore {
  constructor(readonly db: Db) {}

  // containers
  insertContainer(r: ContainerRow): void {
    insert(this.db, 'branch_containers', { ...r });
  }
  container(id: string): ContainerRow | null {
    return (this.db.prepare('SELECT * FROM branch_containers WHERE id = ?').get(id) as ContainerRow | undefined) ?? null;
  }
  containersForOrgs(orgIds: string[]): ContainerRow[] {
    if (orgIds.length === 0) return [];
    return this.db.prepare(`SELECT * FROM branch_containers WHERE org_id IN (${orgIds.map(() => '?').join(',')}) ORDER BY created_at`).all(...orgIds) as ContainerRow[];
  }
  allContainers(): ContainerRow[] {
    return this.db.prepare('SELECT * FROM branch_containers').all() as ContainerRow[];
  }
  updateContainer(id: string, patch: Patch<ContainerRow>): void {
    update(this.db, 'branch_containers', id, { ...patch, updated_at: nowIso() });
  }
  deleteContainer(id: string): void {
    this.db.prepare('DELETE FROM branch_containers WHERE id = ?').run(id);
  }
  containersFromSnapshot(snapshotId: string): ContainerRow[] {
    return this.db.prepare('SELECT * FROM branch_containers WHERE source_snapshot_id = ?').all(snapshotId) as ContainerRow[];
  }

  // snapshots
  insertSnapshot(r: SnapshotRow): void {
    insert(this.db, 'branch_snapshots', { ...r });
  }
  snapshot(id: string): SnapshotRow | null {
    return (this.db.prepare('SELECT * FROM branch_snapshots WHERE id = ?').get(id) as SnapshotRow | undefined) ?? null;
  }
  snapshotsForOrgs(orgIds: string[], containerId?: string): SnapshotRow[] {
    if (orgIds.length === 0) return [];
    const where = `org_id IN (${orgIds.map(() => '?').join(',')})${containerId ? ' AND container_id = ?' : ''}`;
    return this.db.prepare(`SELECT * FROM branch_snapshots WHERE ${where} ORDER BY created_at`).all(...orgIds, ...(containerId ? [containerId] : [])) as SnapshotRow[];
  }
  allSnapshots(): SnapshotRow[] {
    return this.db.prepare('SELECT * FROM branch_snapshots').all() as SnapshotRow[];
  }
  updateSnapshot(id: string, patch: Patch<SnapshotRow>): void {
    update(this.db, 'branch_snapshots', id, patch);
  }
  deleteSnapshot(id: string): void {
    this.db.prepare('DELETE FROM branch_snapshots WHERE id = ?').run(id);
  }
  expiredSnapshots(now: string): SnapshotRow[] {
    return this.db
      .prepare("SELECT * FROM branch_snapshots WHERE expires_at IS NOT NULL AND expires_at <= ? AND pinned = 0 AND status = 'ready'")
      .all(now) as SnapshotRow[];
  }

  // operations
  insertOperation(r: OperationRow): void {
    insert(this.db, 'branch_operations', { ...r });
  }
  operation(id: string): OperationRow | null {
    return (this.db.prepare('SELECT * FROM branch_operations WHERE id = ?').get(id) as OperationRow | undefined) ?? null;
  }
  operationByKey(orgId: string, key: string): OperationRow | null {
    return (this.db.prepare('SELECT * FROM branch_operations WHERE org_id = ? AND idempotency_key = ?').get(orgId, key) as OperationRow | undefined) ?? null;
  }
  activeOperations(): OperationRow[] {
    return this.db.prepare(`SELECT * FROM branch_operations WHERE status IN ('accepted', 'queued', 'running')`).all() as OperationRow[];
  }
  /** Active operations that read or write the snapshot (as source or result). */
  activeOperationsOnSnapshot(snapshotId: string): OperationRow[] {
    return this.db
      .prepare(`SELECT * FROM branch_operations WHERE status IN ('accepted', 'queued', 'running') AND snapshot_id = ?`)
      .all(snapshotId) as OperationRow[];
  }
  updateOperation(id: string, patch: Patch<OperationRow>): void {
    update(this.db, 'branch_operations', id, { ...patch, updated_at: nowIso() });
  }
}
