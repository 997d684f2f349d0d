import type { MigrationSet } from '../server/store/db.js';

export const weaverMigrations: MigrationSet = {
  component: 'weaver',
  migrations: [
    {
      version: 1,
      name: 'weavers',
      sql: `
CREATE TABLE weavers (
  id TEXT PRIMARY KEY,
  org_id TEXT NOT NULL REFERENCES orgs(id),
  owner_user_id TEXT NOT NULL REFERENCES users(id),
  backend TEXT NOT NULL,
  image TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'terminating', 'unknown')),
  reason TEXT,
  exit_code INTEGER,
  repo TEXT,
  branch TEXT,
  env_keys TEXT NOT NULL DEFAULT '[]',
  command TEXT,
  cpu TEXT NOT NULL,
  memory TEXT NOT NULL,
  lifetime_hours REAL NOT NULL,
  tags TEXT NOT NULL DEFAULT '{}',
  created_at TEXT NOT NULL,
  started_at TEXT,
  ended_at TEXT,
  expires_at TEXT NOT NULL,
  failure_log TEXT
);
CREATE INDEX weavers_org ON weavers(org_id);
CREATE INDEX weavers_status ON weavers(status);
CREATE TABLE attach_tickets (
  ticket_hash TEXT PRIMARY KEY,
  weaver_id TEXT NOT NULL REFERENCES weavers(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  expires_at TEXT NOT NULL
);
`,
    },
    {
      version: 2,
      name: 'attach tickets remember the token that asked for them',
      // Tickets live 30 s: older ones (without a token) are simply refused.
      sql: `ALTER TABLE attach_tickets ADD COLUMN token_id TEXT;`,
    },
  ],
};
