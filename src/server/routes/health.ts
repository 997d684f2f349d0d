import type { FastifyPluginAsync } from 'fastify';
import type { AppContext } from '../context.js';

/** GET /health (no auth): database and backend state; 503 when any part is down. */
export const healthRoutes: FastifyPluginAsync<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.get('/health', async (_req, reply) => {
    const checks: Record<string, { ok: boolean; detail: string }> = {};
    try {
      ctx.db.prepare('SELECT 1').get();
      checks['database'] = { ok: true, detail: 'sqlite (WAL)' };
    } catch (e) {
      checks['database'] = { ok: false, detail: String(e) };
    }
    for (const [name, check] of ctx.healthChecks) {
      try {
        checks[name] = await check();
      } catch (e) {
        checks[name] = { ok: false, detail: e instanceof Error ? e.message : String(e) };
      }
    }
    const ok = Object.values(checks).every((c) => c.ok);
    return reply.status(ok ? 200 : 503).send({ status: ok ? 'ok' : 'degraded', checks });
  });

  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
};
