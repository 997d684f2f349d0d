import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';

/** Only this server's own origin: no inline script or style, no other host, no framing. */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "font-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const TYPES: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.html': 'text/html; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.map': 'application/json; charset=utf-8',
};

/** dist/web, built by `npm run build` (web/build.mjs) next to dist/server. */
export const WEB_DIR = fileURLToPath(new URL('../../web/', import.meta.url));

export function secureHeaders(reply: FastifyReply): FastifyReply {
  return reply
    .header('content-security-policy', CONSOLE_CSP)
    .header('x-content-type-options', 'nosniff')
    .header('x-frame-options', 'DENY')
    .header('referrer-policy', 'no-referrer')
    .header('cross-origin-opener-policy', 'same-origin')
    .header('cross-origin-resource-policy', 'same-origin');
}

/**
 * Serves the built console: `/` and the files of dist/web/assets, read once at start. The set of
 * names is fixed then, so no request path ever reaches the file system.
 */
export function registerStatic(app: FastifyInstance, dir = WEB_DIR): void {
  const assets = new Map<string, { body: Buffer; type: string }>();
  const index = existsSync(join(dir, 'index.html')) ? readFileSync(join(dir, 'index.html')) : null;
  const assetDir = join(dir, 'assets');
  if (existsSync(assetDir)) {
    for (const name of readdirSync(assetDir)) {
      const ext = name.slice(name.lastIndexOf('.'));
      if (TYPES[ext] && /^[\w.-]+$/.test(name)) assets.set(name, { body: readFileSync(join(assetDir, name)), type: TYPES[ext]! });
    }
  }

  app.get('/', async (_req, reply) => {
    secureHeaders(reply).header('cache-control', 'no-store');
    if (!index) return reply.status(503).header('content-type', 'text/plain; charset=utf-8').send('The web console is not built: run `npm run build`.\n');
    return reply.header('content-type', TYPES['.html']!).send(index);
  });

  app.get('/assets/:name', async (req, reply) => {
    const a = assets.get((req.params as { name: string }).name);
    secureHeaders(reply);
    if (!a) return reply.status(404).header('content-type', 'text/plain; charset=utf-8').send('not found\n');
    return reply.header('content-type', a.type).header('cache-control', 'no-cache').send(a.body);
  });
}
