import type { FastifyPluginAsync } from 'fastify';
import { Type } from '@sinclair/typebox';
import { Strict } from '../http/schema.js';
import type { AppContext } from '../context.js';
import { principal } from '../http/auth.js';
import { badRequest, notFound } from '../../common/errors.js';
import type { Role } from '../orgs/orgs.js';

const OrgParams = Type.Object({ id: Type.String({ maxLength: 64 }) });
const RoleT = Type.Union([Type.Literal('owner'), Type.Literal('admin'), Type.Literal('member')]);

/** /api/orgs: listing, creation and membership. Every handler checks membership again. */
export const orgRoutes: FastifyPluginAsync<{ ctx: AppContext }> = async (app, { ctx }) => {
  app.get('/api/orgs', async (req) => ({ orgs: ctx.orgs.listForUser(principal(req).user.id) }));

  app.post(
    '/api/orgs',
    {
      schema: {
        body: Type.Object({ name: Type.String({ minLength: 1, maxLength: 100 }), slug: Type.Optional(Type.String({ minLength: 1, maxLength: 40 })) }, Strict),
      },
    },
    async (req, reply) => {
      const b = req.body as { name: string; slug?: string };
      return reply.status(201).send(ctx.orgs.create(principal(req).user.id, b.name, b.slug));
    },
  );

  app.get('/api/orgs/:id', { schema: { params: OrgParams } }, async (req) => ctx.orgs.requireRole(principal(req).user.id, (req.params as { id: string }).id));

  app.get('/api/orgs/:id/members', { schema: { params: OrgParams } }, async (req) => {
    const org = ctx.orgs.requireRole(principal(req).user.id, (req.params as { id: string }).id);
    return { members: ctx.orgs.members(org.id) };
  });

  app.post(
    '/api/orgs/:id/members',
    {
      schema: {
        params: OrgParams,
        body: Type.Object({ username: Type.Optional(Type.String({ maxLength: 64 })), user_id: Type.Optional(Type.String({ maxLength: 64 })), role: Type.Optional(RoleT) }, Strict),
      },
    },
    async (req, reply) => {
      const org = ctx.orgs.requireRole(principal(req).user.id, (req.params as { id: string }).id, 'admin');
      const b = req.body as { username?: string; user_id?: string; role?: Role };
      if (!b.username === !b.user_id) throw badRequest('give exactly one of username or user_id', 'invalid_request');
      const user = b.username ? ctx.users.byUsername(b.username) : ctx.users.byId(b.user_id!);
      if (!user) throw notFound('user');
      return reply.status(201).send(ctx.orgs.addMember(org, user.id, b.role ?? 'member'));
    },
  );

  // Changing a role takes effect at once, on open streams too (src/server/streams.ts).
  app.patch(
    '/api/orgs/:id/members/:user',
    { schema: { params: Type.Object({ id: Type.String({ maxLength: 64 }), user: Type.String({ maxLength: 64 }) }), body: Type.Object({ role: RoleT }, Strict) } },
    async (req) => {
      const me = principal(req).user.id;
      const p = req.params as { id: string; user: string };
      const org = ctx.orgs.requireRole(me, p.id);
      const target = ctx.users.byId(p.user) ?? ctx.users.byUsername(p.user);
      if (!target || !ctx.orgs.roleOf(target.id, org.id)) throw notFound('member');
      return ctx.orgs.setRole(org, target.id, (req.body as { role: Role }).role);
    },
  );

  app.delete('/api/orgs/:id/members/:user', { schema: { params: Type.Object({ id: Type.String({ maxLength: 64 }), user: Type.String({ maxLength: 64 }) }) } }, async (req, reply) => {
    const me = principal(req).user.id;
    const p = req.params as { id: string; user: string };
    const org = ctx.orgs.requireRole(me, p.id);
    const target = ctx.users.byId(p.user) ?? ctx.users.byUsername(p.user);
    if (!target) throw notFound('member');
    ctx.orgs.removeMember(org, me, target.id);
    return reply.status(204).send();
  });
};
