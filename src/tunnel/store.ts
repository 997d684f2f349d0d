/** SQL of the tunnel component (its own tables only). */
import { randomUUID } from 'node:crypto';
import type { Db } from '../server/store/db.js';
import { newUlaPrefix } from './ula.js';

export interface DeviceRow {
  id: string;
  user_id: string;
  name: string;
  public_key: string;
  created_at: string;
}

export interface WeaverRow {
  weaver_id: string;
  subnet: number;
  public_key: string | null;
  listen_port: number | null;
  endpoint_pid: number | null;
  updated_at: string;
}

export interface SessionRow {
  id: string;
  device_id: string;
  weaver_id: string;
  org_id: string;
  owner_user_id: string;
  user_id: string;
  token_id: string;
  host: number;
  created_at: string;
}

const now = () => new Date().toISOString();

export class TunnelStore {
  constructor(private readonly db: Db) {}

  /** The installation's ULA /48, made on first use and never changed. */
  ulaPrefix(): string {
    const row = this.db.prepare('SELECT ula_prefix FROM wg_installation WHERE id = 1').get() as { ula_prefix: string } | undefined;
    if (row) return row.ula_prefix;
    this.db.prepare('INSERT OR IGNORE INTO wg_installation (id, ula_prefix, created_at) VALUES (1, ?, ?)').run(newUlaPrefix(), now());
    return (this.db.prepare('SELECT ula_prefix FROM wg_installation WHERE id = 1').get() as { ula_prefix: string }).ula_prefix;
  }

  addDevice(userId: string, name: string, publicKey: string): DeviceRow {
    const row: DeviceRow = { id: randomUUID(), user_id: userId, name, public_key: publicKey, created_at: now() };
    this.db.prepare('INSERT INTO wg_devices (id, user_id, name, public_key, created_at) VALUES (@id, @user_id, @name, @public_key, @created_at)').run(row);
    return row;
  }

  devicesOf(userId: string): DeviceRow[] {
    return this.db.prepare('SELECT * FROM wg_devices WHERE user_id = ? ORDER BY created_at, name').all(userId) as DeviceRow[];
  }

  deviceByKey(publicKey: string): DeviceRow | null {
    return (this.db.prepare('SELECT * FROM wg_devices WHERE public_key = ?').get(publicKey) as DeviceRow | undefined) ?? null;
  }

  /** A device of this user by id or name. */
  deviceOf(userId: string, idOrName: string): DeviceRow | null {
    return (this.db.prepare('SELECT * FROM wg_devices WHERE user_id = ? AND (id = ? OR name = ?)').get(userId, idOrName, idOrName) as DeviceRow | undefined) ?? null;
  }

  deleteDevice(id: string): void {
    this.db.prepare('DELETE FROM wg_devices WHERE id = ?').run(id);
  }

  weaver(weaverId: string): WeaverRow | null {
    return (this.db.prepare('SELECT * FROM wg_weavers WHERE weaver_id = ?').get(weaverId) as WeaverRow | undefined) ?? null;
  }

  liveWeavers(): WeaverRow[] {
    return this.db.prepare('SELECT * FROM wg_weavers WHERE public_key IS NOT NULL').all() as WeaverRow[];
  }

  /** The weaver's /64 subnet id, allocated on first use (lowest free). */
  subnetFor(weaverId: string): number {
    return this.db.transaction(() => {
      const row = this.weaver(weaverId);
      if (row) return row.subnet;
      const free = this.db
        .prepare('SELECT COALESCE((SELECT MIN(subnet + 1) FROM wg_weavers WHERE subnet + 1 NOT IN (SELECT subnet FROM wg_weavers)), 1) AS s')
        .get() as { s: number };
      if (free.s > 65535) throw new Error('every /64 of the tunnel prefix is in use');
      this.db.prepare('INSERT INTO wg_weavers (weaver_id, subnet, updated_at) VALUES (?, ?, ?)').run(weaverId, free.s, now());
      return free.s;
    })();
  }

  setEndpoint(weaverId: string, e: { publicKey: string; listenPort: number; pid: number } | null): void {
    this.db
      .prepare('UPDATE wg_weavers SET public_key = ?, listen_port = ?, endpoint_pid = ?, updated_at = ? WHERE weaver_id = ?')
      .run(e?.publicKey ?? null, e?.listenPort ?? null, e?.pid ?? null, now(), weaverId);
  }

  forgetWeaver(weaverId: string): SessionRow[] {
    return this.db.transaction(() => {
      const gone = this.sessionsOfWeaver(weaverId);
      this.db.prepare('DELETE FROM wg_weavers WHERE weaver_id = ?').run(weaverId);
      return gone;
    })();
  }

  /** A session for (weaver, device); an existing one is returned as is. */
  addSession(s: Omit<SessionRow, 'id' | 'host' | 'created_at'>): SessionRow {
    return this.db.transaction(() => {
      const existing = this.db.prepare('SELECT * FROM wg_sessions WHERE weaver_id = ? AND device_id = ?').get(s.weaver_id, s.device_id) as SessionRow | undefined;
      if (existing) {
        this.db.prepare('UPDATE wg_sessions SET token_id = ?, user_id = ? WHERE id = ?').run(s.token_id, s.user_id, existing.id);
        return { ...existing, token_id: s.token_id, user_id: s.user_id };
      }
      const free = this.db
        .prepare('SELECT COALESCE((SELECT MIN(host + 1) FROM wg_sessions WHERE weaver_id = ? AND host + 1 NOT IN (SELECT host FROM wg_sessions WHERE weaver_id = ?)), 2) AS h')
        .get(s.weaver_id, s.weaver_id) as { h: number };
      if (free.h > 65535) throw new Error('too many sessions on this weaver');
      const row: SessionRow = { ...s, id: randomUUID(), host: free.h, created_at: now() };
      this.db
        .prepare('INSERT INTO wg_sessions (id, device_id, weaver_id, org_id, owner_user_id, user_id, token_id, host, created_at) VALUES (@id, @device_id, @weaver_id, @org_id, @owner_user_id, @user_id, @token_id, @host, @created_at)')
        .run(row);
      return row;
    })();
  }

  session(id: string): SessionRow | null {
    return (this.db.prepare('SELECT * FROM wg_sessions WHERE id = ?').get(id) as SessionRow | undefined) ?? null;
  }

  sessions(): SessionRow[] {
    return this.db.prepare('SELECT * FROM wg_sessions').all() as SessionRow[];
  }

  sessionsOfUser(userId: string): SessionRow[] {
    return this.db.prepare('SELECT * FROM wg_sessions WHERE user_id = ? ORDER BY created_at').all(userId) as SessionRow[];
  }

  sessionsOfDevice(deviceId: string): SessionRow[] {
    return this.db.prepare('SELECT * FROM wg_sessions WHERE device_id = ?').all(deviceId) as SessionRow[];
  }

  sessionsOfWeaver(weaverId: string): SessionRow[] {
    return this.db.prepare('SELECT * FROM wg_sessions WHERE weaver_id = ?').all(weaverId) as SessionRow[];
  }

  deleteSession(id: string): boolean {
    return this.db.prepare('DELETE FROM wg_sessions WHERE id = ?').run(id).changes > 0;
  }

  device(id: string): DeviceRow | null {
    return (this.db.prepare('SELECT * FROM wg_devices WHERE id = ?').get(id) as DeviceRow | undefined) ?? null;
  }
}
