/**
 * The master key in use, checked against the database: a key check value (never the key) and
 * kek_version live in secrets_keyring. A missing or different key stops the server; a rotation
 * interrupted after its database commit is completed from the `.new` file it left.
 */
import { existsSync, rmSync } from 'node:fs';
import type { Db } from '../server/store/db.js';
import type { Logger } from '../common/log.js';
import { LoomError } from '../common/errors.js';
import { keyCheck, rewrapDek, type ValueBinding } from './crypto.js';
import { MasterKeyError, installMasterKey, newMasterKey, readMasterKey, writeMasterKey } from './master-key.js';

interface KeyringRow {
  kek_version: number;
  kek_check: string;
}

export class Keyring {
  private constructor(
    private readonly db: Db,
    private readonly kek: Buffer,
    readonly version: number,
  ) {}

  /** Loads (or, on a fresh store, generates) the master key; throws MasterKeyError with one clear line. */
  static open(db: Db, path: string, log: Logger): Keyring {
    const row = db.prepare('SELECT kek_version, kek_check FROM secrets_keyring WHERE id = 1').get() as KeyringRow | undefined;
    let key = readMasterKey(path);
    if (!key) {
      if (row) {
        throw new MasterKeyError(`secrets master key ${path} is missing, but the database holds secrets encrypted under it: restore the file from your backup (LOOM_SECRETS_MASTER_KEY_FILE)`);
      }
      key = newMasterKey();
      writeMasterKey(path, key);
      log.warn({ file: path }, `generated a new secrets master key at ${path} (mode 0400): back this file up now; without it no stored secret can ever be read`);
    }
    if (!row) {
      db.prepare('INSERT INTO secrets_keyring (id, kek_version, kek_check, updated_at) VALUES (1, 1, ?, ?)').run(keyCheck(key), new Date().toISOString());
      return new Keyring(db, key, 1);
    }
    if (keyCheck(key) !== row.kek_check) {
      const pending = `${path}.new`;
      const next = existsSync(pending) ? readMasterKey(pending) : null;
      if (next && keyCheck(next) === row.kek_check) {
        installMasterKey(pending, path);
        log.warn({ file: path }, `completed an interrupted master key rotation: ${path} now holds key version ${row.kek_version}; back it up`);
        return new Keyring(db, next, row.kek_version);
      }
      throw new MasterKeyError(`secrets master key ${path} is not the key this database was encrypted with (key version ${row.kek_version}): restore the right file (LOOM_SECRETS_MASTER_KEY_FILE)`);
    }
    return new Keyring(db, key, row.kek_version);
  }

  /** The key for kek_version; a key rotated by `loom-server admin rotate-master-key` while running needs a restart. */
  keyFor(version: number): Buffer {
    const row = this.db.prepare('SELECT kek_version FROM secrets_keyring WHERE id = 1').get() as { kek_version: number } | undefined;
    if (!row || row.kek_version !== this.version || version !== this.version) {
      throw new LoomError(503, 'master_key_rotated', 'the secrets master key was rotated while loom-server ran: restart loom-server');
    }
    return this.kek;
  }

  /**
   * Re-wraps every data key under a fresh master key (kek_version + 1) in one transaction, then
   * installs the new key file. The new key is written beside the old one first, so a crash at any
   * point leaves either the old key valid or the new one ready to be completed by open().
   */
  static rotate(db: Db, path: string, log: Logger): { version: number; rewrapped: number } {
    const current = Keyring.open(db, path, log);
    const pending = `${path}.new`;
    rmSync(pending, { force: true }); // a leftover of a rotation that never committed
    const next = newMasterKey();
    writeMasterKey(pending, next);
    const version = current.version + 1;
    const rows = db
      .prepare('SELECT v.secret_id, v.version, v.kek_version, v.wrapped_dek, s.org_id, s.scope, s.target, s.name FROM secret_versions v JOIN secrets s ON s.id = v.secret_id')
      .all() as { secret_id: string; version: number; kek_version: number; wrapped_dek: Buffer; org_id: string; scope: string; target: string; name: string }[];
    const update = db.prepare('UPDATE secret_versions SET wrapped_dek = ?, kek_version = ? WHERE secret_id = ? AND version = ?');
    try {
      db.transaction(() => {
        for (const r of rows) {
          const b: ValueBinding = { secretId: r.secret_id, orgId: r.org_id, scope: r.scope, target: r.target, name: r.name, version: r.version };
          update.run(rewrapDek(current.kek, r.kek_version, next, version, b, r.wrapped_dek), version, r.secret_id, r.version);
        }
        db.prepare('UPDATE secrets_keyring SET kek_version = ?, kek_check = ?, updated_at = ? WHERE id = 1').run(version, keyCheck(next), new Date().toISOString());
      })();
    } catch (e) {
      rmSync(pending, { force: true });
      throw e;
    }
    installMasterKey(pending, path);
    return { version, rewrapped: rows.length };
  }
}
