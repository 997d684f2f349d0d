/** /api/wg/…: devices (public keys) and sessions. Every request is checked (service.ts). */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from '@sinclair/typebox';
import { Strict } from '../server/http/schema.js';
import { principal } from '../server/http/auth.js';
import { DEVICE_NAME, type Caller, type TunnelService } from './service.js';

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }, Strict);
const caller = (req: FastifyRequest): Caller => {
  const p = principal(req);
  return { user: p.user, tokenId: p.token.id };
};

export async function registerTunnelApi(api: FastifyInstance, svc: () => TunnelService): Promise<void> {
  api.get('/api/wg/devices', async (req) => {
    const devices = svc().listDevices(caller(req));
    return { devices, count: devices.length };
  });

  api.post(
    '/api/wg/devices',
    {
      schema: {
        body: Type.Object(
          { name: Type.String({ minLength: 1, maxLength: 63, pattern: DEVICE_NAME }), public_key: Type.String({ minLength: 1, maxLength: 64 }) },
          Strict,
        ),
      },
    },
    async (req, reply) => {
      const b = req.body as { name: string; public_key: string };
      return reply.status(201).send(svc().registerDevice(caller(req), b.name, b.public_key));
    },
  );

  api.delete('/api/wg/devices/:id', { schema: { params: IdParams } }, async (req, reply) => {
    await svc().revokeDevice(caller(req), (req.params as { id: string }).id);
    return reply.status(204).send();
  });

  api.post(
    '/api/wg/sessions',
    {
      schema: {
        body: Type.Object({ weaver_id: Type.String({ minLength: 1, maxLength: 64 }), device: Type.String({ minLength: 1, maxLength: 64 }) }, Strict),
      },
    },
    async (req, reply) => {
      const b = req.body as { weaver_id: string; device: string };
      return reply.status(201).send(await svc().openSession(caller(req), b.weaver_id, b.device));
    },
  );

  api.get('/api/wg/sessions', async (req) => {
    const sessions = svc().listSessions(caller(req));
    return { sessions, count: sessions.length };
  });

  api.delete('/api/wg/sessions/:id', { schema: { params: IdParams } }, async (req, reply) => {
    await svc().closeSession(caller(req), (req.params as { id: string }).id);
    return reply.status(204).send();
  });
}
