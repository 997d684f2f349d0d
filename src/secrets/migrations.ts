import type { MigrationSet } from '../server/store/db.js';

/**
 * The secrets component's own tables. Values exist only as AES-256-GCM ciphertext under a
 * per-version data key, itself wrapped by the master key (kek_version says which).
 * Weavers are referenced by id only (the weaver component owns its table).
 */
export const secretsMigrations: MigrationSet = {
  component: 'secrets',
  migrations: [
    {
      version: 1,
      name: 'secrets',
      sql: `
CREATE TABLE secrets_keyring (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  kek_version INTEGER NOT NULL,
  kek_check TEXT NOT NULL,
  updated_at TEXT NOT NULL
);
CREATE TABLE secrets (
  id TEXT PRIMARY KEY,
  org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
  scope TEXT NOT NULL CHECK (scope IN ('org', 'repo', 'weaver')),
  target TEXT NOT NULL,
  name TEXT NOT NULL,
  current_version INTEGER NOT NULL,
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  UNIQUE (org_id, scope, target, name)
);
CREATE INDEX secrets_target ON secrets(scope, target);
CREATE TABLE secret_versions (
  secret_id TEXT NOT NULL REFERENCES secrets(id) ON DELETE CASCADE,
  version INTEGER NOT NULL,
  kek_version INTEGER NOT NULL,
  wrapped_dek BLOB NOT NULL,
  ciphertext BLOB NOT NULL,
  size INTEGER NOT NULL,
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  PRIMARY KEY (secret_id, version)
);
CREATE TABLE weaver_identities (
  weaver_id TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  org_id TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE secret_access_log (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at TEXT NOT NULL,
  org_id TEXT,
  weaver_id TEXT,
  name TEXT,
  scope TEXT,
  target TEXT,
  version INTEGER,
  outcome TEXT NOT NULL CHECK (outcome IN ('read', 'denied')),
  purpose TEXT NOT NULL,
  reason TEXT
);
CREATE INDEX secret_access_log_org ON secret_access_log(org_id, seq);
`,
    },
  ],
};
