import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from '@sinclair/typebox';
import type { AppContext } from '../context.js';
import { authenticate, bearerToken, cookieToken, type Principal } from '../http/auth.js';
import { Strict } from '../http/schema.js';
import { noBody } from '../http/body.js';
import { LoomError, forbidden, tooMany, unauthorized } from '../../common/errors.js';

/** The console's session cookie; separate from the /device page's so either can end alone. */
export const SESSION_COOKIE = 'loom_console';
export const CSRF_HEADER = 'x-loom-csrf';
const SESSION_NAME = 'web console';
const SESSION_SECONDS = 8 * 3600;
const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * The CSRF token is derived from the session token (which only the HttpOnly cookie carries), so a
 * page of another origin can neither read nor compute it, and it dies with the session.
 */
export function csrfFor(sessionToken: string): string {
  return createHash('sha256').update('loom-console-csrf\0').update(sessionToken).digest('base64url');
}

function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** A request that names an Origin must come from this server's own (defence beside SameSite=Strict). */
function checkOrigin(req: FastifyRequest): void {
  const origin = req.headers.origin;
  if (origin === undefined) return;
  const host = req.headers.host;
  let ok = false;
  try {
    ok = !!host && new URL(origin).host === host;
  } catch {
    ok = false;
  }
  if (!ok) throw forbidden('cross-origin request refused', 'cross_origin');
}

function consoleToken(ctx: AppContext, req: FastifyRequest): { token: string; principal: Principal } | null {
  const token = cookieToken(req, SESSION_COOKIE);
  if (!token) return null;
  const principal = authenticate(ctx, token);
  // Only sessions this page issued ride on the cookie; an API token pasted in by hand does not.
  if (principal.token.kind !== 'web' || principal.token.name !== SESSION_NAME) throw unauthorized('invalid or expired session: sign in again', 'invalid_token');
  return { token, principal };
}

const cookie = (value: string, maxAge: number) => `${SESSION_COOKIE}=${encodeURIComponent(value)}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAge}`;

/**
 * Cookie sessions for the console, installed on the root before any route (Fastify applies a
 * hook only to routes declared after it). A request with a bearer token is left exactly as it was; one
 * with only the console cookie is authenticated by it, and every state-changing one must also carry
 * the session's CSRF token in the x-loom-csrf header. The /api routes then apply their org checks
 * to that user as to any other.
 */
export function installSessionAuth(app: FastifyInstance, ctx: AppContext): void {
  app.addHook('onRequest', async (req) => {
    if (req.principal || bearerToken(req) !== null || req.headers.authorization) return;
    const path = req.url.split('?')[0]!;
    if (!path.startsWith('/api/')) return;
    const s = consoleToken(ctx, req);
    if (!s) return;
    if (!SAFE.has(req.method)) {
      checkOrigin(req);
      const given = req.headers[CSRF_HEADER];
      if (typeof given !== 'string' || !sameToken(given, csrfFor(s.token))) {
        throw forbidden(`missing or wrong ${CSRF_HEADER} header: reload the console`, 'csrf_token_invalid');
      }
    }
    req.principal = s.principal;
  });
}

/** GET/POST/DELETE /console/session: who is signed in, sign in, sign out. */
export function registerSessionRoutes(app: FastifyInstance, ctx: AppContext): void {
  const view = (p: Principal, token: string) => ({
    user: { id: p.user.id, username: p.user.username },
    csrf_token: csrfFor(token),
    expires_at: p.token.expires_at,
  });

  app.get('/console/session', async (req, reply) => {
    reply.header('cache-control', 'no-store');
    const s = consoleToken(ctx, req);
    if (!s) throw unauthorized('not signed in', 'missing_token');
    return view(s.principal, s.token);
  });

  // Sign-in takes JSON only: a form on another site cannot send it without a CORS preflight,
  // which this server never answers, so nobody can be signed in to someone else's account.
  app.post(
    '/console/session',
    {
      schema: {
        body: Type.Object({ username: Type.String({ minLength: 1, maxLength: 200 }), password: Type.String({ minLength: 1, maxLength: 1024 }) }, Strict),
      },
    },
    async (req, reply) => {
      checkOrigin(req);
      if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) throw new LoomError(415, 'unsupported_media_type', 'sign-in takes a JSON body');
      const b = req.body as { username: string; password: string };
      const keys = [`user:${b.username.toLowerCase()}`, `addr:${req.ip}`];
      const wait = ctx.loginLimiter.retryAfter(keys);
      if (wait > 0) {
        reply.header('retry-after', String(wait));
        throw tooMany(`too many failed sign-ins; try again in ${wait} seconds`, 'too_many_attempts');
      }
      const user = await ctx.users.verifyPassword(b.username, b.password);
      if (!user) {
        ctx.loginLimiter.fail(keys);
        ctx.log.warn({ username: b.username, ip: req.ip }, 'console: failed sign-in');
        throw unauthorized('wrong username or password', 'invalid_credentials');
      }
      ctx.loginLimiter.succeed(keys[0]!);
      const { token, info } = ctx.tokens.issue(user.id, 'web', SESSION_NAME, { expiresInSeconds: SESSION_SECONDS });
      reply.header('set-cookie', cookie(token, SESSION_SECONDS)).header('cache-control', 'no-store');
      ctx.log.info({ user: user.username }, 'console: signed in');
      return { user: { id: user.id, username: user.username }, csrf_token: csrfFor(token), expires_at: info.expires_at };
    },
  );

  app.delete('/console/session', async (req, reply: FastifyReply) => {
    noBody(req.body);
    const s = consoleToken(ctx, req);
    if (!s) throw unauthorized('not signed in', 'missing_token');
    checkOrigin(req);
    const given = req.headers[CSRF_HEADER];
    if (typeof given !== 'string' || !sameToken(given, csrfFor(s.token))) throw forbidden(`missing or wrong ${CSRF_HEADER} header`, 'csrf_token_invalid');
    // Revoking the session closes every stream it opened (attach tickets are tied to it).
    ctx.tokens.revokeById(s.principal.token.id);
    return reply.header('set-cookie', cookie('', 0)).status(204).send();
  });
}
