import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AppContext } from '../context.js';
import type { User } from '../auth/users.js';
import type { TokenInfo } from '../auth/tokens.js';
import { unauthorized } from '../../common/errors.js';

export interface Principal {
  user: User;
  token: TokenInfo;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
}

export function bearerToken(req: FastifyRequest): string | null {
  const h = req.headers.authorization;
  if (!h) return null;
  const m = /^Bearer\s+(\S+)$/i.exec(h);
  return m ? m[1]! : null;
}

export function cookieToken(req: FastifyRequest, name: string): string | null {
  const raw = req.headers.cookie;
  if (!raw) return null;
  for (const part of raw.split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return decodeURIComponent(v.join('='));
  }
  return null;
}

export function authenticate(ctx: AppContext, token: string | null): Principal {
  if (!token) throw unauthorized('missing bearer token: run `loom login` or pass Authorization: Bearer <token>', 'missing_token');
  const info = ctx.tokens.verify(token);
  if (!info) throw unauthorized('invalid or expired token: run `loom login` again', 'invalid_token');
  const user = ctx.users.byId(info.user_id);
  if (!user) throw unauthorized('invalid or expired token', 'invalid_token');
  return { user, token: info };
}

/** An onRequest hook for /api: every route behind it has a principal. */
export function requireAuth(ctx: AppContext) {
  return async (req: FastifyRequest, _reply: FastifyReply): Promise<void> => {
    if (req.principal) return;
    req.principal = authenticate(ctx, bearerToken(req));
  };
}

export function principal(req: FastifyRequest): Principal {
  if (!req.principal) throw unauthorized();
  return req.principal;
}
