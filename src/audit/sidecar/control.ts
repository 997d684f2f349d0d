/**
 * Registration of weavers with a running sidecar (local backend): a unix socket (mode 0600 in a
 * 0700 directory) speaking one JSON request per line, one JSON reply per line.
 *   {"op":"register","weaver_id","org_id","owner_user_id","cgroup_path"} → {"ok":true,"cgroup_id":"…"}
 *   {"op":"unregister","weaver_id"} → {"ok":true}
 * The same requests are kept as files in a registration directory so a restarted sidecar picks
 * every live weaver up again before it answers anything.
 */
import { createConnection, createServer, type Server } from 'node:net';
import { chmodSync, existsSync, readFileSync, readdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { WeaverIdentity } from '../types.js';

export interface Registration extends WeaverIdentity {
  /** The container's cgroup path relative to the hierarchy root, e.g. /loom/<id>. */
  cgroup_path: string;
}

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const CGROUP_RE = /^(\/[A-Za-z0-9._:@-]{1,255}){1,16}$/;

export function parseRegistration(x: unknown): Registration {
  const r = x as Partial<Registration>;
  for (const k of ['weaver_id', 'org_id', 'owner_user_id'] as const) {
    if (typeof r[k] !== 'string' || !ID_RE.test(r[k]!)) throw new Error(`bad ${k}`);
  }
  if (typeof r.cgroup_path !== 'string' || !CGROUP_RE.test(r.cgroup_path) || r.cgroup_path.split('/').includes('..')) throw new Error('bad cgroup_path');
  return { weaver_id: r.weaver_id!, org_id: r.org_id!, owner_user_id: r.owner_user_id!, cgroup_path: r.cgroup_path };
}

/**
 * The cgroup v2 id of a cgroup path: the inode of its directory in the unified hierarchy, which
 * is what bpf_get_current_cgroup_id() returns (measured: runc joins 0::/loom/<id> on this hybrid host).
 */
export function cgroupIdOf(cgroupPath: string, roots = ['/sys/fs/cgroup/unified', '/sys/fs/cgroup']): bigint {
  for (const root of roots) {
    const dir = join(root, cgroupPath);
    if (existsSync(join(root, 'cgroup.controllers')) && existsSync(dir)) return BigInt(statSync(dir, { bigint: true }).ino);
  }
  throw new Error(`no cgroup v2 directory for ${cgroupPath}`);
}

export function readRegistrationDir(dir: string): Registration[] {
  if (!existsSync(dir)) return [];
  const out: Registration[] = [];
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.json'))) {
    try {
      out.push(parseRegistration(JSON.parse(readFileSync(join(dir, f), 'utf8'))));
    } catch {
      /* a half-written or foreign file: skip */
    }
  }
  return out;
}

export interface ControlHandlers {
  register(r: Registration): bigint;
  unregister(weaverId: string): void;
  /** Tests only (LOOM_AUDIT_TEST_CONTROLS=1): stop and restart consuming the ring buffer. */
  pause?(): void;
  resume?(): void;
}

export function serveControl(path: string, h: ControlHandlers): Promise<Server> {
  if (existsSync(path)) unlinkSync(path);
  const srv = createServer((sock) => {
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('error', () => undefined);
    sock.on('data', (d: string) => {
      buf += d;
      if (buf.length > 65536) return sock.destroy();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        let reply: Record<string, unknown>;
        try {
          const req = JSON.parse(line) as { op?: string; weaver_id?: string };
          if (req.op === 'register') reply = { ok: true, cgroup_id: h.register(parseRegistration(req)).toString() };
          else if (req.op === 'unregister' && typeof req.weaver_id === 'string') {
            h.unregister(req.weaver_id);
            reply = { ok: true };
          } else if (req.op === 'pause' && h.pause) {
            h.pause();
            reply = { ok: true };
          } else if (req.op === 'resume' && h.resume) {
            h.resume();
            reply = { ok: true };
          } else throw new Error('unknown op');
        } catch (e) {
          reply = { ok: false, error: (e as Error).message };
        }
        sock.write(JSON.stringify(reply) + '\n');
      }
    });
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(path, () => {
      chmodSync(path, 0o600);
      resolve(srv);
    });
  });
}

/** One request to a sidecar's control socket. */
export function controlRequest(path: string, req: Record<string, unknown>, timeoutMs = 5000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error('audit sidecar did not answer'));
    }, timeoutMs);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(JSON.stringify(req) + '\n'));
    s.on('data', (d: string) => {
      buf += d;
      const i = buf.indexOf('\n');
      if (i < 0) return;
      clearTimeout(timer);
      s.end();
      try {
        resolve(JSON.parse(buf.slice(0, i)) as Record<string, unknown>);
      } catch (e) {
        reject(e as Error);
      }
    });
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
