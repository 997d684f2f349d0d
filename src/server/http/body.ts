import type { FastifyInstance } from 'fastify';
import { LoomError } from '../../common/errors.js';

/**
 * JSON bodies: an empty body sent with `content-type: application/json` is no body (many HTTP
 * clients send that header on every request, DELETE included), not a 400. Routes that need a body
 * still say so through their schema; everything else parses as before (prototype poisoning refused).
 */
export function installJsonParser(app: FastifyInstance): void {
  const json = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    if ((body as string).trim() === '') return done(null, undefined);
    json(req, body as string, done);
  });
}

/** For actions that take no parameters: no body, or an empty JSON object. */
export function noBody(body: unknown): true {
  if (body === undefined || body === null) return true;
  if (typeof body === 'object' && !Array.isArray(body) && Object.keys(body).length === 0) return true;
  throw new LoomError(400, 'invalid_request', 'body: this action takes no fields (send {} or nothing)');
}
