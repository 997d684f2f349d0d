import type { MigrationSet } from '../server/store/db.js';

/** Tables of the branching API: containers, snapshots and the operations that change them. */
export const branchingMigrations: MigrationSet = {
  component: 'branching',
  migrations: [
    {
      version: 1,
      name: 'containers, snapshots, operations',
      sql: `
CREATE TABLE branch_containers (
  id TEXT PRIMARY KEY,
  org_id TEXT NOT NULL REFERENCES orgs(id),
  owner_user_id TEXT NOT NULL REFERENCES users(id),
  name TEXT NOT NULL,
  source_path TEXT,
  source_snapshot_id TEXT,
  command TEXT NOT NULL,
  env TEXT NOT NULL DEFAULT '{}',
  status TEXT NOT NULL CHECK (status IN ('creating', 'created', 'running', 'stopped', 'failed', 'deleting')),
  exit_code INTEGER,
  reason TEXT,
  rootfs_bytes INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  started_at TEXT,
  stopped_at TEXT
);
CREATE INDEX branch_containers_org ON branch_containers(org_id);
CREATE INDEX branch_containers_source ON branch_containers(source_snapshot_id);

CREATE TABLE branch_snapshots (
  id TEXT PRIMARY KEY,
  org_id TEXT NOT NULL REFERENCES orgs(id),
  created_by TEXT NOT NULL REFERENCES users(id),
  source_kind TEXT NOT NULL CHECK (source_kind IN ('container', 'weaver')),
  container_id TEXT NOT NULL,
  parent_snapshot_id TEXT,
  status TEXT NOT NULL CHECK (status IN ('creating', 'ready')),
  consistency_mode TEXT NOT NULL,
  labels TEXT NOT NULL DEFAULT '{}',
  pinned INTEGER NOT NULL DEFAULT 0,
  ttl_seconds INTEGER,
  expires_at TEXT,
  frozen_ms REAL,
  strategy TEXT,
  files INTEGER,
  bytes INTEGER,
  command TEXT NOT NULL,
  env TEXT NOT NULL DEFAULT '{}',
  created_at TEXT NOT NULL,
  completed_at TEXT
);
CREATE INDEX branch_snapshots_org ON branch_snapshots(org_id);
CREATE INDEX branch_snapshots_expiry ON branch_snapshots(expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE branch_operations (
  id TEXT PRIMARY KEY,
  org_id TEXT NOT NULL REFERENCES orgs(id),
  user_id TEXT NOT NULL REFERENCES users(id),
  operation_type TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('accepted', 'queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
  progress_pct REAL NOT NULL DEFAULT 0,
  container_id TEXT,
  snapshot_id TEXT,
  result_container_id TEXT,
  warnings TEXT NOT NULL DEFAULT '[]',
  capability_downgrades TEXT NOT NULL DEFAULT '[]',
  reason_code TEXT,
  reason_message TEXT,
  params TEXT NOT NULL DEFAULT '{}',
  idempotency_key TEXT,
  request_hash TEXT,
  started_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  completed_at TEXT
);
CREATE INDEX branch_operations_status ON branch_operations(status);
CREATE UNIQUE INDEX branch_operations_idem ON branch_operations(org_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
`,
    },
    {
      version: 2,
      name: 'weaver snapshots as layers of the local snapshotter',
      sql: `
ALTER TABLE branch_snapshots ADD COLUMN layer INTEGER NOT NULL DEFAULT 0;
ALTER TABLE branch_snapshots ADD COLUMN image TEXT;
ALTER TABLE branch_snapshots ADD COLUMN resources TEXT;
`,
    },
  ],
};
