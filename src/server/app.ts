import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import websocket from '@fastify/websocket';
import { randomUUID } from 'node:crypto';
import type { AppContext } from './context.js';
import type { ServerComponent } from './component.js';
import { installErrorHandling } from './http/errors.js';
import { installJsonParser } from './http/body.js';
import { requireAuth } from './http/auth.js';
import { healthRoutes } from './routes/health.js';
import { authRoutes } from './routes/auth.js';
import { orgRoutes } from './routes/orgs.js';
import { devicePageRoutes } from './routes/device-page.js';
import { installSessionAuth } from './console/session.js';

export const BODY_LIMIT_BYTES = 1024 * 1024;

export async function buildApp(ctx: AppContext, components: ServerComponent[]): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: ctx.log as FastifyBaseLogger,
    bodyLimit: BODY_LIMIT_BYTES,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID();
    },
    // Strict schemas: unknown fields are rejected (not silently dropped) and types are not coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false } },
  });

  installErrorHandling(app);
  installJsonParser(app);
  await app.register(websocket, { options: { maxPayload: 1024 * 1024 } });
  // The web console's cookie session (with its CSRF check) before any route, so /api sees it.
  installSessionAuth(app, ctx);

  app.addHook('onRequest', async (req, reply) => {
    reply.header('x-request-id', req.id);
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    const labels = { method: req.method, route, status: String(reply.statusCode) };
    ctx.metrics.httpRequests.inc(labels);
    ctx.metrics.httpDuration.observe(labels, reply.elapsedTime / 1000);
  });

  await app.register(healthRoutes, { ctx });
  await app.register(authRoutes, { ctx });
  await app.register(devicePageRoutes, { ctx });
  for (const c of components) if (c.registerPublic) await c.registerPublic(app, ctx);

  await app.register(async (api) => {
    api.addHook('onRequest', requireAuth(ctx));
    await api.register(orgRoutes, { ctx });
    for (const c of components) if (c.registerApi) await c.registerApi(api, ctx);
  });
  return app;
}
