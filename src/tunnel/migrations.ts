import type { MigrationSet } from '../server/store/db.js';

/**
 * The tunnel component's own tables. Only public keys are stored: device private keys stay in the
 * user's ~/.loom/wg-key, weaver private keys live only in the weaver's WireGuard process.
 * Weavers are referenced by id (the weaver component owns its table).
 */
export const tunnelMigrations: MigrationSet = {
  component: 'tunnel',
  migrations: [
    {
      version: 1,
      name: 'wireguard coordination',
      sql: `
CREATE TABLE wg_installation (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  ula_prefix TEXT NOT NULL,
  created_at TEXT NOT NULL
);
CREATE TABLE wg_devices (
  id TEXT PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  public_key TEXT NOT NULL UNIQUE,
  created_at TEXT NOT NULL,
  UNIQUE (user_id, name)
);
CREATE TABLE wg_weavers (
  weaver_id TEXT PRIMARY KEY,
  subnet INTEGER NOT NULL UNIQUE CHECK (subnet BETWEEN 1 AND 65535),
  public_key TEXT,
  listen_port INTEGER,
  endpoint_pid INTEGER,
  updated_at TEXT NOT NULL
);
CREATE TABLE wg_sessions (
  id TEXT PRIMARY KEY,
  device_id TEXT NOT NULL REFERENCES wg_devices(id) ON DELETE CASCADE,
  weaver_id TEXT NOT NULL REFERENCES wg_weavers(weaver_id) ON DELETE CASCADE,
  org_id TEXT NOT NULL,
  owner_user_id TEXT NOT NULL,
  user_id TEXT NOT NULL,
  token_id TEXT NOT NULL,
  host INTEGER NOT NULL CHECK (host BETWEEN 2 AND 65535),
  created_at TEXT NOT NULL,
  UNIQUE (weaver_id, host),
  UNIQUE (weaver_id, device_id)
);
`,
    },
  ],
};
