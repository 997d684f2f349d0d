/**
 * Routes for exec and files: POST /api/weaver/:id/exec (one-shot), GET /api/weaver/:id/exec
 * (WebSocket, protocol in exec.ts), PUT/GET /api/weaver/:id/files, GET /api/weaver/:id/files/stat.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { Readable } from 'node:stream';
import { Type } from '@sinclair/typebox';
import { Strict } from '../server/http/schema.js';
import type { AppContext } from '../server/context.js';
import type { WeaverConfig } from '../server/config/load.js';
import { authenticate, bearerToken, principal } from '../server/http/auth.js';
import { WS_CLOSE_CODES } from '../server/streams.js';
import { keepWebSocketAlive } from '../server/keepalive.js';
import type { Resource } from '../server/orgs/access.js';
import { LoomError, badRequest, isLoomError } from '../common/errors.js';
import type { User } from '../server/auth/users.js';
import type { Provisioner } from './provisioner.js';
import { WeaverService } from './service.js';
import type { Weaver } from './store.js';
import { bridgeExec, execOneShot, parseExecRequest, parseStartFrame } from './exec.js';
import { WeaverFiles, checkPath, toolError } from './files.js';

const IdParams = Type.Object({ id: Type.String({ maxLength: 64 }) });
const PathQuery = Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }) }, Strict);

/**
 * Access for exec and files through the one role matrix (src/server/orgs/access.ts): as strong as
 * attach — the weaver's owner or an org admin; a plain member 403, another org 404 — and the
 * weaver must be running.
 */
export function authorizeExec(svc: WeaverService, user: User, id: string, action: 'exec' | 'files'): Weaver {
  const w = svc.authorized(user, id, action);
  if (w.status !== 'running') throw new LoomError(409, 'weaver_not_running', `weaver is ${w.status}${w.reason ? `: ${w.reason}` : ''}; exec and files need it running`);
  return w;
}

export async function registerExecApi(api: FastifyInstance, ctx: AppContext, svc: WeaverService, p: Provisioner, cfg: WeaverConfig): Promise<void> {
  const files = new WeaverFiles(p);

  api.post('/api/weaver/:id/exec', { schema: { params: IdParams } }, async (req) => {
    const id = (req.params as { id: string }).id;
    const pr = principal(req);
    const w = authorizeExec(svc, pr.user, id, 'exec');
    const body = (req.body ?? {}) as Record<string, unknown>;
    const { stdin, timeout_secs: timeoutSecs, ...rest } = body;
    if (stdin !== undefined && typeof stdin !== 'string') throw badRequest('stdin must be a string (the bytes fed to the command)', 'bad_exec_request');
    if (rest['tty'] === true) throw badRequest('a one-shot exec has no terminal; use the WebSocket for tty', 'bad_exec_request');
    if (timeoutSecs !== undefined && (!Number.isInteger(timeoutSecs) || (timeoutSecs as number) < 1)) throw badRequest('timeout_secs must be a positive integer', 'bad_exec_request');
    if ((timeoutSecs as number | undefined) !== undefined && (timeoutSecs as number) > cfg.execTimeoutSecs) {
      throw badRequest(`timeout_secs is over the server's limit of ${cfg.execTimeoutSecs}`, 'bad_exec_request');
    }
    const er = parseExecRequest(rest, { tty: false, stdin: false });
    const abort = new AbortController();
    req.raw.socket.on('close', () => abort.abort());
    // A long one-shot dies with its credential or membership like any stream.
    const unregister = ctx.streams.register({ close: () => abort.abort() }, { tokenId: pr.token.id, userId: pr.user.id, need: { action: 'exec', resource: WeaverService.resource(w) } });
    return execOneShot(p, id, er, {
      ...(typeof stdin === 'string' ? { input: stdin } : {}),
      maxOutputBytes: cfg.execOutputMaxBytes,
      timeoutMs: ((timeoutSecs as number | undefined) ?? cfg.execTimeoutSecs) * 1000,
      signal: abort.signal,
    }).finally(unregister);
  });

  api.get('/api/weaver/:id/files/stat', { schema: { params: IdParams, querystring: PathQuery } }, async (req) => {
    const id = (req.params as { id: string }).id;
    authorizeExec(svc, principal(req).user, id, 'files');
    return files.stat(id, checkPath((req.query as { path: string }).path));
  });

  api.get(
    '/api/weaver/:id/files',
    { schema: { params: IdParams, querystring: PathQuery } },
    async (req, reply) => {
      const id = (req.params as { id: string }).id;
      authorizeExec(svc, principal(req).user, id, 'files');
      const path = checkPath((req.query as { path: string }).path);
      // Output arrives in the sink (one reused buffer, nothing allocated per chunk) where the backend
      // supports it; until the answer is decided below, chunks wait in `early`.
      const early: [Buffer, () => void][] = [];
      let deliver: ((b: Buffer, done: () => void) => void) | null = null;
      let firstChunk = () => undefined as void;
      const gotFirst = new Promise<void>((r) => (firstChunk = r));
      const sink = (b: Buffer, done: () => void) => {
        if (deliver) return deliver(b, done);
        early.push([b, done]);
        firstChunk();
      };
      const { stat, proc } = await files.read(id, path, sink);
      if (stat.type === 'file' && stat.size > cfg.filesMaxBytes) {
        proc.kill();
        throw new LoomError(413, 'too_large', `${path} is ${stat.size} bytes, over the limit of ${cfg.filesMaxBytes}`);
      }
      const errText: Buffer[] = [];
      proc.stderr.on('data', (b: Buffer) => errText.length < 64 && errText.push(b));
      const headers = (): Record<string, string> => ({
        'x-request-id': String(req.id),
        'x-loom-file-type': stat.type,
        ...(stat.type === 'file'
          ? { 'content-type': 'application/octet-stream', 'x-loom-file-size': String(stat.size), 'x-loom-file-mode': stat.mode }
          : { 'content-type': 'application/x-tar' }),
      });
      if (proc.sunk) {
        // Answer only once the tool produced its first bytes or ended, so a failure (say, a file
        // the weaver's user may not read) is still a proper 403/404 rather than a cut-off 200.
        await Promise.race([gotFirst, proc.exit]);
        if (early.length === 0) {
          const e = await proc.exit;
          if (e.exitCode !== 0) throw toolError(Buffer.concat(errText).toString('utf8'), path, `reading ${path} failed`);
        }
        reply.hijack();
        const res = reply.raw;
        res.writeHead(200, headers());
        let sent = 0;
        let dead = false;
        req.raw.on('close', () => {
          dead = true;
          proc.kill();
        });
        deliver = (b, done) => {
          if (dead) return done();
          sent += b.length;
          if (sent > cfg.filesMaxBytes) {
            dead = true;
            proc.kill();
            res.destroy();
            return done();
          }
          // The buffer is reused once the socket has taken the bytes.
          res.write(b, () => done());
        };
        for (const [b, done] of early.splice(0)) deliver(b, done);
        void proc.exit.then((exit) => {
          if (dead) return;
          // A failure mid-way ends the response with a reset, not a clean end.
          if (exit.exitCode === 0) res.end();
          else res.destroy();
        });
        return reply;
      }
      // Without a sink (the Kubernetes backend): the same first-bytes-or-exit rule on the stream.
      const stdout = proc.stdout as Readable;
      await new Promise<void>((resolve) => {
        stdout.once('readable', () => resolve());
        void proc.exit.then(() => resolve());
      });
      if (stdout.readableLength === 0) {
        const e = await proc.exit;
        if (e.exitCode !== 0) throw toolError(Buffer.concat(errText).toString('utf8'), path, `reading ${path} failed`);
      }
      // Ends the response with an error (a reset, not a clean end) when the tool fails mid-way.
      let sent = 0;
      const out = new Readable({ highWaterMark: 1024 * 1024, read() { proc.stdout.resume(); } });
      proc.stdout.on('data', (b: Buffer) => {
        sent += b.length;
        if (sent > cfg.filesMaxBytes) {
          proc.kill();
          out.destroy(new LoomError(413, 'too_large', `download exceeds the limit of ${cfg.filesMaxBytes} bytes`));
          return;
        }
        if (!out.push(b)) proc.stdout.pause();
      });
      void proc.exit.then((exit) => {
        if (exit.exitCode === 0) out.push(null);
        else out.destroy(new Error(`reading ${path} failed: ${Buffer.concat(errText).toString('utf8').trim() || `exit ${exit.exitCode}`}`));
      });
      req.raw.on('close', () => proc.kill());
      reply.headers(headers());
      return reply.send(out);
    },
  );

  api.register(async (scoped) => {
    // The body is the file (or a tar), streamed into the weaver: never buffered here.
    scoped.removeAllContentTypeParsers();
    scoped.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
    scoped.put(
      '/api/weaver/:id/files',
      {
        schema: {
          params: IdParams,
          querystring: Type.Object(
            {
              path: Type.String({ minLength: 1, maxLength: 4096 }),
              archive: Type.Optional(Type.Literal('tar')),
              mode: Type.Optional(Type.String({ pattern: '^[0-7]{3,4}$' })),
            },
            Strict,
          ),
        },
      },
      async (req, reply) => {
        const id = (req.params as { id: string }).id;
        authorizeExec(svc, principal(req).user, id, 'files');
        const q = req.query as { path: string; archive?: 'tar'; mode?: string };
        const path = checkPath(q.path);
        if (q.archive && q.mode) throw badRequest('mode applies to a single file, not to ?archive=tar', 'bad_request');
        const len = Number(req.headers['content-length'] ?? NaN);
        if (Number.isFinite(len) && len > cfg.filesMaxBytes) throw new LoomError(413, 'too_large', `upload of ${len} bytes is over the limit of ${cfg.filesMaxBytes}`);
        const body = (req.body as Readable | undefined) ?? Readable.from([]);
        const r = await files.write(id, path, body, { archive: q.archive === 'tar', maxBytes: cfg.filesMaxBytes, ...(q.mode ? { mode: q.mode } : {}) });
        return reply.status(q.archive ? 200 : 201).send({ path, bytes: r.bytes });
      },
    );
  });
}

/** GET /api/weaver/:id/exec over WebSocket (Authorization header; refused before the upgrade). */
export async function registerExecSocket(app: FastifyInstance, ctx: AppContext, svc: WeaverService, p: Provisioner): Promise<void> {
  const targets = new WeakMap<FastifyRequest, Resource>();
  app.get(
    '/api/weaver/:id/exec',
    {
      websocket: true,
      schema: { params: IdParams },
      preValidation: async (req) => {
        req.principal = authenticate(ctx, bearerToken(req));
        targets.set(req, WeaverService.resource(authorizeExec(svc, req.principal.user, (req.params as { id: string }).id, 'exec')));
      },
    },
    async (socket: WebSocket, req: FastifyRequest) => {
      const id = (req.params as { id: string }).id;
      const early: [Buffer, boolean][] = [];
      let handler: ((d: Buffer, b: boolean) => void) | null = null;
      let onClose: (() => void) | null = null;
      let closed = false;
      let starting = false;
      const fail = (e: unknown) => {
        const le = isLoomError(e) ? e : new LoomError(500, 'exec_failed', 'exec failed');
        if (!isLoomError(e)) req.log.warn({ weaver: id, err: e }, 'exec failed');
        if (socket.readyState === socket.OPEN) socket.send(JSON.stringify({ type: 'error', code: le.code, message: le.message }));
        socket.close(le.status < 500 ? 4000 + le.status : 1011, le.code.slice(0, 100));
      };
      const pr = principal(req);
      const stopKeepalive = keepWebSocketAlive(socket, ctx.config.streams.pingSecs * 1000);
      // Closing the socket kills the process: a revoked token or membership ends the exec too.
      const unregister = ctx.streams.register(
        {
          close: (why) => {
            if (socket.readyState === socket.OPEN) socket.send(JSON.stringify({ type: 'error', code: why.code, message: why.message }));
            socket.close(WS_CLOSE_CODES[why.code], why.code);
          },
        },
        { tokenId: pr.token.id, userId: pr.user.id, need: { action: 'exec', resource: targets.get(req)! } },
      );
      socket.on('close', () => {
        closed = true;
        stopKeepalive();
        unregister();
        onClose?.();
      });
      socket.on('message', (data: Buffer, isBinary: boolean) => {
        if (handler) return handler(data, isBinary);
        if (starting) return void early.push([data, isBinary]);
        starting = true;
        void (async () => {
          try {
            const er = parseStartFrame(data, isBinary);
            // Checked again at start: the weaver may have stopped, or access gone, since the upgrade.
            authorizeExec(svc, pr.user, id, 'exec');
            const proc = await p.exec(id, er);
            if (closed) return proc.kill();
            const bridge = bridgeExec(proc, {
              sendBinary: (d, sent) => (socket.readyState === socket.OPEN ? socket.send(d, { binary: true }, () => sent?.()) : sent?.()),
              sendText: (m) => socket.readyState === socket.OPEN && socket.send(JSON.stringify(m)),
              close: (code, reason) => socket.close(code, reason),
              buffered: () => socket.bufferedAmount,
              pause: () => socket.pause(),
              resume: () => socket.resume(),
            });
            handler = bridge.onFrame;
            onClose = bridge.onClose;
            for (const [d, b] of early.splice(0)) bridge.onFrame(d, b);
          } catch (e) {
            fail(e);
          }
        })();
      });
    },
  );
}
