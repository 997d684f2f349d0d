import type { MigrationSet } from '../../server/store/db.js';

export const auditMigrations: MigrationSet = {
  component: 'audit',
  migrations: [
    {
      version: 1,
      name: 'audit events, sidecar credentials and weaver bindings',
      sql: `
CREATE TABLE audit_credentials (
  id TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL CHECK (kind IN ('local', 'pod')),
  weaver_id TEXT,
  created_at TEXT NOT NULL,
  revoked_at TEXT
);
-- the weavers a credential may report for, with the identity the server knows them by
CREATE TABLE audit_bindings (
  credential_id TEXT NOT NULL REFERENCES audit_credentials(id) ON DELETE CASCADE,
  weaver_id TEXT NOT NULL,
  org_id TEXT NOT NULL,
  owner_user_id TEXT NOT NULL,
  PRIMARY KEY (credential_id, weaver_id)
);
CREATE TABLE audit_events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  weaver_id TEXT NOT NULL,
  org_id TEXT NOT NULL,
  owner_user_id TEXT NOT NULL,
  boot_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  ts_ns INTEGER NOT NULL,
  event_type TEXT NOT NULL,
  pid INTEGER NOT NULL,
  ppid INTEGER NOT NULL,
  tid INTEGER NOT NULL,
  uid INTEGER NOT NULL,
  comm TEXT NOT NULL,
  exec_id TEXT NOT NULL,
  parent_exec_id TEXT NOT NULL,
  ret INTEGER NOT NULL,
  details TEXT NOT NULL,
  received_at TEXT NOT NULL,
  UNIQUE (weaver_id, boot_id, seq)
);
CREATE INDEX audit_events_weaver ON audit_events (weaver_id, id);
CREATE INDEX audit_events_weaver_ts ON audit_events (weaver_id, ts_ns);
CREATE INDEX audit_events_received ON audit_events (received_at);
`,
    },
  ],
};
