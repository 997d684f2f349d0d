import type { FastifyPluginAsync } from 'fastify';
import { Type } from '@sinclair/typebox';
import { Strict } from '../http/schema.js';
import type { AppContext } from '../context.js';
import { authenticate, bearerToken, principal, requireAuth } from '../http/auth.js';
import { noBody } from '../http/body.js';
import { badRequest, isLoomError } from '../../common/errors.js';
import { hasControlChars } from '../../common/terminal.js';


/** Device login (RFC 8628 style) and token management. */
export const authRoutes: FastifyPluginAsync<{ ctx: AppContext }> = async (app, { ctx }) => {
  const base = () => ctx.baseUrl.replace(/\/+$/, '');

  app.post('/auth/device/start', async (req) => {
    noBody(req.body);
    const s = ctx.device.start();
    return { ...s, verification_uri: `${base()}/device`, verification_uri_complete: `${base()}/device?code=${encodeURIComponent(s.user_code)}` };
  });

  app.post(
    '/auth/device/poll',
    { schema: { body: Type.Object({ device_code: Type.String({ minLength: 1, maxLength: 200 }) }, Strict) } },
    async (req) => {
      // Unknown device codes count against the address like failed sign-ins.
      const keys = [`addr:${req.ip}`];
      ctx.loginLimiter.check(keys);
      try {
        return ctx.device.poll((req.body as { device_code: string }).device_code);
      } catch (e) {
        if (isLoomError(e) && e.code === 'invalid_device_code') ctx.loginLimiter.fail(keys);
        throw e;
      }
    },
  );

  app.post('/auth/logout', async (req, reply) => {
    const p = authenticate(ctx, bearerToken(req));
    noBody(req.body);
    ctx.tokens.revokeById(p.token.id);
    return reply.status(204).send();
  });

  // Token management for automation, behind auth like every /api route.
  await app.register(async (api) => {
    api.addHook('onRequest', requireAuth(ctx));
    api.get('/api/me', async (req) => {
      const p = principal(req);
      return { ...p.user, token: { id: p.token.id, kind: p.token.kind, expires_at: p.token.expires_at } };
    });
    api.get('/api/tokens', async (req) => ({ tokens: ctx.tokens.list(principal(req).user.id) }));
    api.post(
      '/api/tokens',
      {
        schema: {
          body: Type.Object(
            { name: Type.String({ minLength: 1, maxLength: 100 }), expires_in_days: Type.Optional(Type.Integer({ minimum: 1, maximum: 3650 })) },
            Strict,
          ),
        },
      },
      async (req, reply) => {
        const b = req.body as { name: string; expires_in_days?: number };
        if (hasControlChars(b.name) || b.name.trim() === '') throw badRequest('token name may not be blank or contain NUL or other control characters', 'invalid_token_name');
        const { token, info } = ctx.tokens.issue(principal(req).user.id, 'api', b.name, b.expires_in_days ? { expiresInSeconds: b.expires_in_days * 86400 } : {});
        return reply.status(201).send({ token, ...info });
      },
    );
    api.delete('/api/tokens/:id', { schema: { params: Type.Object({ id: Type.String({ maxLength: 64 }) }) } }, async (req, reply) => {
      ctx.tokens.revoke(principal(req).user.id, (req.params as { id: string }).id);
      return reply.status(204).send();
    });
  });
};
