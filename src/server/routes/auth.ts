import type { FastifyPluginAsync } from 'fastify';
import { Type } from '@sinclair/typebox';
import { Strict } from '../http/schema.js';
import type { AppContext } from '../context.js';
import { authenticate, bearerToken, principal, requireAuth } from '../http/auth.js';


/** Device login (RFC 8628 style) and token management. */
export const authRoutes: FastifyPluginAsync<{ ctx: AppContext }> = async (app, { ctx }) => {
  const base = () => ctx.baseUrl.replace(/\/+$/, '');

  app.post('/auth/device/start', { schema: { body: Type.Optional(Type.Object({}, Strict)) } }, async () => {
    const s = ctx.device.start();
    return { ...s, verification_uri: `${base()}/device`, verification_uri_complete: `${base()}/device?code=${encodeURIComponent(s.user_code)}` };
  });

  app.post(
    '/auth/device/poll',
    { schema: { body: Type.Object({ device_code: Type.String({ minLength: 1, maxLength: 200 }) }, Strict) } },
    async (req) => ctx.device.poll((req.body as { device_code: string }).device_code),
  );

  app.post('/auth/logout', { schema: { body: Type.Optional(Type.Object({}, Strict)) } }, async (req, reply) => {
    const p = authenticate(ctx, bearerToken(req));
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
