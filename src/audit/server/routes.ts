/**
 * POST /internal/audit/events — sidecars deliver batches. The credential decides which weavers a
 * batch may speak for (a local sidecar: the weavers loom-server registered with it; a pod: its
 * weaver); the identity in each event must match what the server bound (403 otherwise).
 * GET /api/weaver/:id/audit — a page of events with the gaps in range; follow=true streams (SSE).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from '@sinclair/typebox';
import { Strict } from '../../server/http/schema.js';
import type { AppContext } from '../../server/context.js';
import { bearerToken, principal, type Principal } from '../../server/http/auth.js';
import { badRequest, forbidden, unauthorized } from '../../common/errors.js';
import { EVENT_TYPES } from '../decode.js';
import type { AuditEvent } from '../types.js';
import type { AuditStore } from './store.js';
import type { User } from '../../server/auth/users.js';
import type { Resource } from '../../server/orgs/access.js';

export const MAX_INGEST_EVENTS = 1000;

const Id = Type.String({ minLength: 1, maxLength: 128 });
const Int = (min: number, max: number) => Type.Integer({ minimum: min, maximum: max });
const EventSchema = Type.Object(
  {
    weaver_id: Id,
    org_id: Id,
    owner_user_id: Id,
    boot_id: Type.String({ minLength: 1, maxLength: 64 }),
    seq: Int(1, Number.MAX_SAFE_INTEGER),
    timestamp_ns: Type.String({ pattern: '^[0-9]{1,19}$' }),
    pid: Int(0, 2 ** 32), ppid: Int(0, 2 ** 32), tid: Int(0, 2 ** 32), uid: Int(0, 2 ** 32),
    comm: Type.String({ maxLength: 64 }),
    exec_id: Type.String({ maxLength: 32 }),
    parent_exec_id: Type.String({ maxLength: 32 }),
    event_type: Type.Union(EVENT_TYPES.map((t) => Type.Literal(t))),
    ret: Type.Number(),
    details: Type.Record(Type.String({ maxLength: 64 }), Type.Unknown(), { maxProperties: 32 }),
  },
  Strict,
);
export const IngestBody = Type.Object({ events: Type.Array(EventSchema, { minItems: 1, maxItems: MAX_INGEST_EVENTS }) }, Strict);

const TS_RE = /^[0-9]{1,19}$/;
function parseTime(name: string, v: string | undefined): bigint | undefined {
  if (v === undefined) return undefined;
  if (TS_RE.test(v)) return BigInt(v);
  const ms = Date.parse(v);
  if (!/^\d{4}-\d{2}-\d{2}T/.test(v) || Number.isNaN(ms)) throw badRequest(`${name} must be an RFC 3339 time or nanoseconds since the epoch`, 'bad_query');
  return BigInt(ms) * 1_000_000n;
}

export const encodeCursor = (id: number) => Buffer.from(`a1:${id}`).toString('base64url');
function decodeCursor(c: string): number {
  const m = /^a1:(\d{1,15})$/.exec(Buffer.from(c, 'base64url').toString('utf8'));
  if (!m) throw badRequest('cursor is not one this server gave out', 'bad_query');
  return Number(m[1]);
}

export const AuditQuery = Type.Object(
  {
    type: Type.Optional(Type.String({ maxLength: 512 })),
    since: Type.Optional(Type.String({ maxLength: 40 })),
    until: Type.Optional(Type.String({ maxLength: 40 })),
    pid: Type.Optional(Type.String({ pattern: '^[0-9]{1,10}$' })),
    limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,5}$' })),
    cursor: Type.Optional(Type.String({ maxLength: 64 })),
    follow: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Literal('1'), Type.Literal('0')])),
  },
  Strict,
);

export interface AuditRouteDeps {
  store: AuditStore;
  /** The weaver if the user may read its audit; throws 404 (not visible) or 403 otherwise. */
  readableWeaver(user: User, id: string): { id: string; resource: Resource };
  /** Subscribe to news of stored events (the weavers they belong to); returns an unsubscribe. */
  onStored(fn: (weaverIds: Set<string>) => void): () => void;
  stored(weaverIds: Set<string>): void;
}

export async function registerIngest(app: FastifyInstance, deps: AuditRouteDeps): Promise<void> {
  app.post('/internal/audit/events', { bodyLimit: 4 << 20, schema: { body: IngestBody } }, async (req, reply) => {
    const token = bearerToken(req);
    const cred = token ? deps.store.credentialOf(token) : null;
    if (!cred) throw unauthorized('missing or invalid audit credential');
    const bound = deps.store.bindings(cred.id);
    const events = (req.body as { events: AuditEvent[] }).events;
    for (const e of events) {
      const b = bound.get(e.weaver_id);
      // the weaver comes from the credential: an event for any other weaver, or naming another org or owner, is refused whole
      if (!b || (cred.kind === 'pod' && cred.weaver_id !== e.weaver_id)) throw forbidden(`this credential may not report for weaver ${e.weaver_id}`);
      if (b.org_id !== e.org_id || b.owner_user_id !== e.owner_user_id) throw forbidden(`org or owner of weaver ${e.weaver_id} does not match`);
    }
    const r = deps.store.insert(events);
    if (r.inserted) deps.stored(new Set(events.map((e) => e.weaver_id)));
    return reply.status(200).send({ accepted: events.length, inserted: r.inserted, duplicates: events.length - r.inserted });
  });
}

export async function registerRead(api: FastifyInstance, ctx: AppContext, deps: AuditRouteDeps): Promise<void> {
  api.get('/api/weaver/:id/audit', { schema: { params: Type.Object({ id: Type.String({ maxLength: 64 }) }), querystring: AuditQuery } }, async (req, reply) => {
    const p = principal(req);
    const w = deps.readableWeaver(p.user, (req.params as { id: string }).id);
    const q = req.query as { type?: string; since?: string; until?: string; pid?: string; limit?: string; cursor?: string; follow?: string };
    const types = q.type ? q.type.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
    for (const t of types ?? []) if (!(EVENT_TYPES as readonly string[]).includes(t)) throw badRequest(`type ${t} is not one of ${EVENT_TYPES.join(', ')}`, 'bad_query');
    const sinceNs = parseTime('since', q.since);
    const untilNs = parseTime('until', q.until);
    if (sinceNs !== undefined && untilNs !== undefined && untilNs < sinceNs) throw badRequest('until is before since', 'bad_query');
    const limit = q.limit === undefined ? 500 : Number(q.limit);
    if (limit < 1 || limit > 5000) throw badRequest('limit must be from 1 to 5000', 'bad_query');
    const pid = q.pid === undefined ? undefined : Number(q.pid);
    const afterId = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
    const base = { weaverId: w.id, ...(types ? { types } : {}), ...(sinceNs !== undefined ? { sinceNs } : {}), ...(untilNs !== undefined ? { untilNs } : {}), ...(pid !== undefined ? { pid } : {}) };
    if (q.follow === 'true' || q.follow === '1') return follow(req, reply, ctx, deps, p, w, base, afterId);
    const events = deps.store.query({ ...base, ...(afterId !== undefined ? { afterId } : {}), limit: limit + 1 });
    const more = events.length > limit;
    if (more) events.pop();
    const gaps = deps.store.gaps(w.id, sinceNs, untilNs);
    return { events, gaps, next_cursor: more ? encodeCursor(events[events.length - 1]!.id) : null };
  });
}

/**
 * SSE: stored events first (from the cursor), then new ones as they are stored. Registered with
 * the stream registry: it ends (`event: error`) the moment the token or the membership goes.
 */
async function follow(
  req: FastifyRequest, reply: FastifyReply, ctx: AppContext, deps: AuditRouteDeps, p: Principal, w: { id: string; resource: Resource },
  base: { weaverId: string; types?: string[]; sinceNs?: bigint; untilNs?: bigint; pid?: number }, afterId: number | undefined,
): Promise<void> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no', 'x-request-id': String(req.id) });
  let last = afterId ?? 0;
  let closed = false;
  const send = () => {
    if (closed) return;
    for (;;) {
      const page = deps.store.query({ ...base, afterId: last, limit: 1000 });
      for (const e of page) res.write(`event: ${e.event_type === 'audit_gap' ? 'gap' : 'event'}\nid: ${encodeCursor(e.id)}\ndata: ${JSON.stringify(e)}\n\n`);
      if (page.length) last = page[page.length - 1]!.id;
      if (page.length < 1000) break;
    }
  };
  const finish = () => {
    closed = true;
    off();
    clearInterval(ping);
    unregister();
  };
  const off = deps.onStored((ids) => {
    if (ids.has(w.id)) send();
  });
  const ping = setInterval(() => res.write(': ping\n\n'), ctx.config.streams.pingSecs * 1000);
  const unregister = ctx.streams.register(
    {
      close: (why) => {
        if (closed) return;
        finish();
        res.write(`event: error\ndata: ${JSON.stringify(why)}\n\n`);
        res.end();
      },
    },
    { tokenId: p.token.id, userId: p.user.id, need: { action: 'logs', resource: w.resource } },
  );
  req.raw.on('close', finish);
  send();
}
