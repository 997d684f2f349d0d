import type { FastifyError, FastifyInstance } from 'fastify';
import { LoomError } from '../../common/errors.js';

/** Every error leaves as {"error":{"code","message"}}; 5xx details stay in the log, not the body. */
export function installErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError | LoomError | Error, req, reply) => {
    if (err instanceof LoomError) {
      if (err.status >= 500) req.log.error({ err }, err.message);
      const retry = err.details?.['retry_after_seconds'];
      if (err.status === 429 && typeof retry === 'number') reply.header('retry-after', String(retry));
      return reply.status(err.status).send(err.toBody());
    }
    const fe = err as FastifyError;
    if (fe.validation) {
      return reply.status(400).send({ error: { code: 'invalid_request', message: describeValidation(fe) } });
    }
    switch (fe.code) {
      case 'FST_ERR_CTP_BODY_TOO_LARGE':
        return reply.status(413).send({ error: { code: 'body_too_large', message: 'request body is too large' } });
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
        return reply.status(415).send({ error: { code: 'unsupported_media_type', message: fe.message } });
      case 'FST_ERR_CTP_EMPTY_JSON_BODY':
        return reply.status(400).send({ error: { code: 'malformed_json', message: 'body is empty; send a JSON object' } });
      case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
        return reply.status(400).send({ error: { code: 'bad_request', message: fe.message } });
    }
    if (fe.statusCode === 400 && (err instanceof SyntaxError || /JSON/.test(fe.message))) {
      return reply.status(400).send({ error: { code: 'malformed_json', message: `malformed JSON body: ${fe.message}` } });
    }
    if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
      return reply.status(fe.statusCode).send({ error: { code: 'bad_request', message: fe.message } });
    }
    req.log.error({ err }, 'unhandled error');
    return reply.status(500).send({ error: { code: 'internal', message: 'internal server error' } });
  });
  app.setNotFoundHandler((req, reply) => {
    reply.status(404).send({ error: { code: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` } });
  });
}

function describeValidation(err: FastifyError): string {
  const v = err.validation?.[0];
  if (!v) return err.message;
  const where = `${err.validationContext ?? 'body'}${v.instancePath ? v.instancePath.replace(/\//g, '.') : ''}`;
  const params = v.params as Record<string, unknown>;
  if (v.keyword === 'additionalProperties') return `${where}: unknown field ${JSON.stringify(params['additionalProperty'])}`;
  if (v.keyword === 'required') return `${where}: missing field ${JSON.stringify(params['missingProperty'])}`;
  return `${where} ${v.message ?? 'is invalid'}`;
}
