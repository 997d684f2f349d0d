import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from '@sinclair/typebox';
import { Strict } from '../server/http/schema.js';
import type { WebSocket } from 'ws';
import type { AppContext } from '../server/context.js';
import { authenticate, bearerToken, principal, type Principal } from '../server/http/auth.js';
import { LoomError, isLoomError, unauthorized } from '../common/errors.js';
import { WS_CLOSE_CODES } from '../server/streams.js';
import type { Resource } from '../server/orgs/access.js';
import { keepWebSocketAlive } from '../server/keepalive.js';
import { stripTerminalEscapes } from '../common/terminal.js';
import { newSecret, sha256 } from '../common/ids.js';
import { WeaverService } from './service.js';
import type { CreateWeaverRequest } from './validation.js';

const StrMap = Type.Record(Type.String({ maxLength: 256 }), Type.String({ maxLength: 32768 }), { maxProperties: 256 });
const IdParams = Type.Object({ id: Type.String({ maxLength: 64 }) });
const TICKET_TTL_SECONDS = 30;

export const CreateWeaverBody = Type.Object(
  {
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
    org_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    repo: Type.Optional(Type.String({ minLength: 1, maxLength: 2048 })),
    branch: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
    env: Type.Optional(StrMap),
    lifetime_hours: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
    command: Type.Optional(Type.Array(Type.String({ maxLength: 32768 }), { minItems: 1, maxItems: 1024 })),
    resources: Type.Optional(Type.Object({ cpu: Type.Optional(Type.String({ maxLength: 32 })), memory: Type.Optional(Type.String({ maxLength: 32 })) }, Strict)),
    tags: Type.Optional(StrMap),
  },
  Strict,
);

/** /api/weaver…: create, list, get, delete, logs (SSE) and attach tickets. Behind auth. */
export async function registerWeaverApi(api: FastifyInstance, ctx: AppContext, svc: WeaverService): Promise<void> {
  api.post('/api/weaver', { schema: { body: CreateWeaverBody } }, async (req, reply) => {
    const w = await svc.create(principal(req).user, req.body as CreateWeaverRequest);
    return reply.status(202).send(w);
  });

  api.get('/api/weavers', async (req) => {
    const weavers = svc.list(principal(req).user);
    return { weavers, count: weavers.length };
  });

  api.get('/api/weaver/:id', { schema: { params: IdParams } }, async (req) => svc.visible(principal(req).user, (req.params as { id: string }).id));

  api.delete('/api/weaver/:id', { schema: { params: IdParams } }, async (req, reply) => {
    await svc.delete(principal(req).user, (req.params as { id: string }).id);
    return reply.status(204).send();
  });

  api.post('/api/weaver/:id/attach-ticket', { schema: { params: IdParams } }, async (req) => {
    const p = principal(req);
    const w = svc.authorized(p.user, (req.params as { id: string }).id, 'attach');
    const ticket = newSecret('loom_t_');
    ctx.db.prepare('DELETE FROM attach_tickets WHERE expires_at <= ?').run(new Date().toISOString());
    // The ticket remembers the token that asked for it: revoking that token closes the stream it opens.
    ctx.db
      .prepare('INSERT INTO attach_tickets (ticket_hash, weaver_id, user_id, token_id, expires_at) VALUES (?, ?, ?, ?, ?)')
      .run(sha256(ticket), w.id, p.user.id, p.token.id, new Date(Date.now() + TICKET_TTL_SECONDS * 1000).toISOString());
    return { ticket, expires_in: TICKET_TTL_SECONDS, attach_url: `/api/weaver/${w.id}/attach?ticket=${encodeURIComponent(ticket)}` };
  });

  api.get(
    '/api/weaver/:id/logs',
    {
      schema: {
        params: IdParams,
        querystring: Type.Object(
          {
            tail: Type.Optional(Type.String({ pattern: '^[0-9]{1,7}$' })),
            follow: Type.Optional(BoolQ),
            plain: Type.Optional(BoolQ),
          },
          Strict,
        ),
      },
    },
    async (req, reply) => streamLogs(req, reply, ctx, svc),
  );
}

const BoolQ = Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Literal('1'), Type.Literal('0')]);
const truthy = (v: string | undefined) => v === 'true' || v === '1';

/**
 * Server-sent events: one `data:` event per output line, `event: end` when the log ends. Lines
 * carry the terminal's bytes as written (escape sequences included); `?plain=1` strips ANSI/CSI/OSC
 * sequences and other control characters. A following stream is registered with the stream
 * registry (it ends with `event: error` when the token or membership goes) and gets a `: ping`
 * comment line every LOOM_STREAM_PING_SECS so proxies keep it open.
 */
async function streamLogs(req: FastifyRequest, reply: FastifyReply, ctx: AppContext, svc: WeaverService): Promise<void> {
  const p = principal(req);
  const w = svc.authorized(p.user, (req.params as { id: string }).id, 'logs');
  const q = req.query as { tail?: string; follow?: string; plain?: string };
  const follow = truthy(q.follow);
  const plain = truthy(q.plain);
  const abort = new AbortController();
  let revoked: { code: string; message: string } | null = null;
  req.raw.on('close', () => abort.abort());
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no', 'x-request-id': String(req.id) });
  let partial = '';
  const emit = (line: string) => res.write(`data: ${(plain ? stripTerminalEscapes(line) : line).replace(/\r/g, '')}\n\n`);
  const unregister = follow
    ? ctx.streams.register(
        {
          close: (why) => {
            revoked = why;
            abort.abort();
          },
        },
        { tokenId: p.token.id, userId: p.user.id, need: { action: 'logs', resource: WeaverService.resource(w) } },
      )
    : () => undefined;
  const ping = follow ? setInterval(() => res.write(': ping\n\n'), ctx.config.streams.pingSecs * 1000) : null;
  try {
    if (!abort.signal.aborted) {
      const opts = { follow, signal: abort.signal, ...(q.tail !== undefined ? { tail: Number(q.tail) } : {}) };
      for await (const chunk of svc.logs(w.id, opts)) {
        if (abort.signal.aborted) break;
        const lines = (partial + chunk.toString('utf8')).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) emit(l);
      }
    }
    const ended = revoked as { code: string; message: string } | null;
    if (ended) res.write(`event: error\ndata: ${JSON.stringify(ended)}\n\n`);
    else if (!abort.signal.aborted) {
      if (partial) emit(partial);
      res.write('event: end\ndata: {}\n\n');
    }
  } catch (e) {
    if (!abort.signal.aborted) res.write(`event: error\ndata: ${JSON.stringify({ message: isLoomError(e) ? e.message : 'log stream failed' })}\n\n`);
    else if (revoked) res.write(`event: error\ndata: ${JSON.stringify(revoked)}\n\n`);
  } finally {
    if (ping) clearInterval(ping);
    unregister();
  }
  res.end();
}

/**
 * GET /api/weaver/:id/attach over WebSocket. Authenticated by the Authorization header, or
 * for browsers (which cannot set it on a WebSocket) by a short-lived single-use ticket.
 */
export async function registerWeaverAttach(app: FastifyInstance, ctx: AppContext, svc: WeaverService): Promise<void> {
  // The weaver checked before the upgrade, handed to the socket handler.
  const attachTargets = new WeakMap<FastifyRequest, Resource>();
  const authenticateAttach = (req: FastifyRequest): Principal => {
    const ticket = (req.query as Record<string, unknown>)['ticket'];
    if (typeof ticket === 'string' && !bearerToken(req)) {
      const row = ctx.db.prepare('DELETE FROM attach_tickets WHERE ticket_hash = ? RETURNING weaver_id, user_id, token_id, expires_at').get(sha256(ticket)) as
        | { weaver_id: string; user_id: string; token_id: string | null; expires_at: string }
        | undefined;
      const live = row && row.token_id && Date.parse(row.expires_at) > Date.now() && ctx.tokens.isLive(row.token_id);
      const user = live ? ctx.users.byId(row.user_id) : null;
      if (!row || !user || !row.token_id || row.weaver_id !== (req.params as { id: string }).id) throw unauthorized('invalid or expired attach ticket', 'invalid_ticket');
      // The stream is tied to the token that asked for the ticket.
      return { user, token: { id: row.token_id, user_id: user.id, kind: 'web', name: 'attach ticket', created_at: '', last_used_at: null, expires_at: row.expires_at } };
    }
    return authenticate(ctx, bearerToken(req));
  };

  app.get(
    '/api/weaver/:id/attach',
    {
      websocket: true,
      schema: { params: IdParams },
      preValidation: async (req) => {
        // Refuse before the upgrade so errors are plain JSON responses.
        req.principal = authenticateAttach(req);
        const w = svc.authorized(req.principal.user, (req.params as { id: string }).id, 'attach');
        attachTargets.set(req, WeaverService.resource(w));
        if (w.status !== 'running') throw new LoomError(409, 'weaver_not_running', `weaver is ${w.status}${w.reason ? `: ${w.reason}` : ''}; it can be attached once running`);
      },
    },
    async (socket: WebSocket, req: FastifyRequest) => {
      const id = (req.params as { id: string }).id;
      const p = principal(req);
      // Listen at once: frames that arrive while the hub opens are queued, not lost.
      const early: [Buffer, boolean][] = [];
      let onFrame: (data: Buffer, isBinary: boolean) => void = (d, b) => early.push([d, b]);
      let leave: (() => void) | null = null;
      let closed = false;
      const stopKeepalive = keepWebSocketAlive(socket, ctx.config.streams.pingSecs * 1000);
      const unregister = ctx.streams.register(
        {
          close: (why) => {
            if (socket.readyState === socket.OPEN) socket.send(JSON.stringify({ type: 'error', code: why.code, message: why.message }));
            socket.close(WS_CLOSE_CODES[why.code], why.code);
          },
        },
        { tokenId: p.token.id, userId: p.user.id, need: { action: 'attach', resource: attachTargets.get(req)! } },
      );
      socket.on('message', (data: Buffer, isBinary: boolean) => onFrame(data, isBinary));
      socket.on('close', () => {
        closed = true;
        stopKeepalive();
        unregister();
        leave?.();
      });
      if (socket.readyState !== socket.OPEN) return;
      try {
        const hub = await svc.hub(id);
        if (closed) return;
        leave = hub.join({
          sendData: (chunk) => socket.readyState === socket.OPEN && socket.send(chunk, { binary: true }),
          sendControl: (msg) => socket.readyState === socket.OPEN && socket.send(JSON.stringify(msg)),
          close: (code, reason) => socket.close(code, reason),
        });
        onFrame = (data, isBinary) => {
          if (isBinary) return hub.write(data);
          const msg = parseControl(data);
          if (msg) hub.resize(msg.cols, msg.rows);
          else socket.send(JSON.stringify({ type: 'error', message: 'unknown control message; expected {"type":"resize","cols":N,"rows":N}' }));
        };
        for (const [d, b] of early.splice(0)) onFrame(d, b);
      } catch (e) {
        req.log.warn({ weaver: id, err: e }, 'attach failed');
        socket.send(JSON.stringify({ type: 'error', message: isLoomError(e) ? e.message : 'attach failed' }));
        socket.close(1011, 'attach failed');
      }
    },
  );
}


function parseControl(data: Buffer): { cols: number; rows: number } | null {
  try {
    const m = JSON.parse(data.toString('utf8')) as { type?: unknown; cols?: unknown; rows?: unknown };
    const ok = (n: unknown): n is number => Number.isInteger(n) && (n as number) > 0 && (n as number) < 10000;
    return m.type === 'resize' && ok(m.cols) && ok(m.rows) ? { cols: m.cols, rows: m.rows } : null;
  } catch {
    return null;
  }
}
