import Database from 'better-sqlite3';
import { accessSync, chmodSync, closeSync, constants, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { LoomError, errorMessage } from '../../common/errors.js';

export type Db = Database.Database;

/**
 * A versioned schema change. Migrations are grouped by component (core, weaver, branching, …)
 * so each part of Loom owns its tables; components apply in the order they are registered.
 */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export interface MigrationSet {
  component: string;
  migrations: Migration[];
}

/** Opens <dataDir>/loom.db in WAL mode; a data dir that can't be created or written is a clear error. */
export function openDatabase(dataDir: string): Db {
  try {
    mkdirSync(dataDir, { recursive: true });
    accessSync(dataDir, constants.W_OK | constants.R_OK | constants.X_OK);
  } catch (e) {
    throw new LoomError(500, 'data_dir_unusable', `data dir ${dataDir} is not writable: ${errorMessage(e)}`);
  }
  let db: Db;
  const file = join(dataDir, 'loom.db');
  try {
    // Owner-only: weavers' mapped root has search rights on the data dir (to reach its layers), so
    // a world-readable database would be readable by name from an escaped container. SQLite gives
    // the -wal and -shm files the database's own mode; older data dirs are narrowed here too.
    closeSync(openSync(file, 'a', 0o600));
    for (const f of [file, `${file}-wal`, `${file}-shm`]) {
      try {
        chmodSync(f, 0o600);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
    }
    db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
  } catch (e) {
    throw new LoomError(500, 'data_dir_unusable', `cannot open ${file}: ${errorMessage(e)}`);
  }
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, applied_at TEXT NOT NULL,
    PRIMARY KEY (component, version))`);
  return db;
}

/** Applies the migrations of each set that are not yet recorded, each in its own transaction. */
export function migrate(db: Db, sets: MigrationSet[]): { component: string; version: number; name: string }[] {
  const applied: { component: string; version: number; name: string }[] = [];
  const has = db.prepare('SELECT 1 FROM schema_migrations WHERE component = ? AND version = ?');
  const record = db.prepare('INSERT INTO schema_migrations (component, version, name, applied_at) VALUES (?, ?, ?, ?)');
  for (const set of sets) {
    const sorted = [...set.migrations].sort((a, b) => a.version - b.version);
    for (const m of sorted) {
      if (has.get(set.component, m.version)) continue;
      db.transaction(() => {
        db.exec(m.sql);
        record.run(set.component, m.version, m.name, new Date().toISOString());
      })();
      applied.push({ component: set.component, version: m.version, name: m.name });
    }
  }
  return applied;
}
