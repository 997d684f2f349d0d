import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { Strict } from '../server/http/schema.js';
import { principal } from '../server/http/auth.js';
import { noBody } from '../server/http/body.js';
import { LoomError } from '../common/errors.js';
import type { Readable } from 'node:stream';
import { Value } from '@sinclair/typebox/value';
import type { TSchema, Static } from '@sinclair/typebox';
import type { ArchiveRequest, BranchingService, CloneRequest, CreateContainerRequest, ForkRequest, SnapshotRequest, WeaverSnapshotRequest } from './service.js';
import type { ForkOverrides } from '../weaver/branching-port.js';

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }, Strict);
const StrMap = (maxProps: number) => Type.Record(Type.String({ minLength: 1, maxLength: 256 }), Type.String({ maxLength: 32768 }), { maxProperties: maxProps });
const Argv = Type.Array(Type.String({ maxLength: 32768 }), { minItems: 1, maxItems: 1024 });
const Consistency = Type.Union([Type.Literal('crash-consistent'), Type.Literal('app-consistent')]);
const IdemKey = Type.String({ minLength: 1, maxLength: 255 });
const ResumePolicy = Type.Union([Type.Literal('manual'), Type.Literal('immediate')]);
const Name = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]*$' });

export const CreateContainerBody = Type.Object(
  {
    name: Name,
    rootfs_path: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
    command: Argv,
    env: Type.Optional(StrMap(256)),
    start_immediately: Type.Optional(Type.Boolean()),
    org_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  },
  Strict,
);

export const SnapshotBody = Type.Object(
  {
    consistency_mode: Consistency,
    ttl_seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 10 * 365 * 86400 })),
    labels: Type.Optional(StrMap(64)),
    idempotency_key: Type.Optional(IdemKey),
  },
  Strict,
);

export const CloneBody = Type.Object(
  { resume_policy: ResumePolicy, name: Type.Optional(Name), command: Type.Optional(Argv), idempotency_key: Type.Optional(IdemKey) },
  Strict,
);

export const ForkBody = Type.Object(
  {
    resume_policy: ResumePolicy,
    name: Type.Optional(Name),
    command: Type.Optional(Argv),
    consistency_mode: Type.Optional(Consistency),
    idempotency_key: Type.Optional(IdemKey),
  },
  Strict,
);

/** POST /api/containers/archive: the tar is the body; the other fields travel in the query (JSON for argv and env). */
const ArchiveQuery = Type.Object(
  {
    name: Name,
    command: Type.String({ minLength: 2, maxLength: 65536 }),
    env: Type.Optional(Type.String({ maxLength: 65536 })),
    start_immediately: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false')])),
    org_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  },
  Strict,
);

function jsonParam<T>(raw: string | undefined, field: string, check: (v: unknown) => v is T): T | undefined {
  if (raw === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new LoomError(400, 'invalid_request', `querystring/${field} must be JSON`);
  }
  if (!check(v)) throw new LoomError(400, 'invalid_request', `querystring/${field} has the wrong shape`);
  return v;
}
const isArgv = (v: unknown): v is string[] => Array.isArray(v) && v.length > 0 && v.length <= 1024 && v.every((a) => typeof a === 'string' && a.length <= 32768);
const isStrMap = (v: unknown): v is Record<string, string> =>
  !!v && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length <= 256 && Object.values(v).every((x) => typeof x === 'string' && x.length <= 32768);
export const WeaverSnapshotBody = Type.Object(
  { consistency_mode: Type.Optional(Consistency), ttl_seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 10 * 365 * 86400 })), labels: Type.Optional(StrMap(64)) },
  Strict,
);

export const WeaverForkBody = Type.Object(
  { lifetime_hours: Type.Optional(Type.Number({ exclusiveMinimum: 0 })), tags: Type.Optional(StrMap(64)), env: Type.Optional(StrMap(256)) },
  Strict,
);

const WaitQuery = Type.Object({ wait: Type.Optional(Type.String({ pattern: '^[0-9]{1,3}(\\.[0-9]{1,3})?$' })) }, Strict);
const SnapshotListQuery = Type.Object({ container_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })) }, Strict);

/** A body checked against schema, or {} when none was sent. */
function optionalBody<T extends TSchema>(schema: T, body: unknown): Static<T> {
  if (body === undefined || body === null) return {} as Static<T>;
  if (!Value.Check(schema, body)) {
    const first = Value.Errors(schema, body).First();
    throw new LoomError(400, 'invalid_request', `body${first?.path ?? ''} ${first?.message ?? 'is invalid'}`);
  }
  return body as Static<T>;
}

/** Longest long-poll on GET /api/operations/:id?wait=SECONDS. */
const MAX_WAIT_SECONDS = 60;

/** The branching API (behind auth): containers, snapshots, lineage, pins, clone/fork and operations. */
export async function registerBranchingApi(api: FastifyInstance, svc: BranchingService): Promise<void> {
  const id = (req: { params: unknown }) => (req.params as { id: string }).id;

  api.post('/api/containers', { schema: { body: CreateContainerBody } }, async (req, reply) =>
    reply.status(202).send(await svc.createContainer(principal(req).user, req.body as CreateContainerRequest)),
  );
  api.register(async (scoped) => {
    // The body is the tar itself, streamed to the unpacker (size-capped there, not buffered here).
    scoped.addContentTypeParser(['application/x-tar', 'application/gzip', 'application/octet-stream'], (_req, payload, done) => done(null, payload));
    scoped.post('/api/containers/archive', { schema: { querystring: ArchiveQuery }, bodyLimit: Number.MAX_SAFE_INTEGER }, async (req, reply) => {
      const q = req.query as { name: string; command: string; env?: string; start_immediately?: 'true' | 'false'; org_id?: string };
      if (!req.body || typeof (req.body as Readable).pipe !== 'function') throw new LoomError(400, 'invalid_request', 'send the archive as the body with content-type application/x-tar');
      const body: ArchiveRequest = { name: q.name, command: jsonParam(q.command, 'command', isArgv)! };
      const env = jsonParam(q.env, 'env', isStrMap);
      if (env) body.env = env;
      if (q.start_immediately) body.start_immediately = q.start_immediately === 'true';
      if (q.org_id) body.org_id = q.org_id;
      return reply.status(202).send(await svc.createFromArchive(principal(req).user, body, req.body as Readable));
    });
  });
  api.get('/api/containers', async (req) => {
    const containers = await svc.listContainers(principal(req).user);
    return { containers, count: containers.length };
  });
  api.get('/api/containers/:id', { schema: { params: IdParams } }, async (req) => svc.getContainer(principal(req).user, id(req)));
  api.delete('/api/containers/:id', { schema: { params: IdParams } }, async (req, reply) => reply.status(202).send(svc.deleteContainer(principal(req).user, id(req))));
  api.post('/api/containers/:id/kill', { schema: { params: IdParams } }, async (req, reply) => noBody(req.body) && reply.status(202).send(await svc.kill(principal(req).user, id(req))));
  api.post('/api/containers/:id/resume', { schema: { params: IdParams } }, async (req, reply) => noBody(req.body) && reply.status(202).send(await svc.resume(principal(req).user, id(req))));
  api.post('/api/containers/:id/snapshot', { schema: { params: IdParams, body: SnapshotBody } }, async (req, reply) =>
    reply.status(202).send(svc.snapshot(principal(req).user, id(req), req.body as SnapshotRequest)),
  );
  api.post('/api/containers/:id/fork', { schema: { params: IdParams, body: ForkBody } }, async (req, reply) =>
    reply.status(202).send(svc.fork(principal(req).user, id(req), req.body as ForkRequest)),
  );

  api.get('/api/snapshots', { schema: { querystring: SnapshotListQuery } }, async (req) => {
    const snapshots = await svc.listSnapshots(principal(req).user, (req.query as { container_id?: string }).container_id);
    return { snapshots, count: snapshots.length };
  });
  api.get('/api/snapshots/:id', { schema: { params: IdParams } }, async (req) => svc.getSnapshot(principal(req).user, id(req)));
  api.delete('/api/snapshots/:id', { schema: { params: IdParams } }, async (req, reply) => {
    await svc.deleteSnapshot(principal(req).user, id(req));
    return reply.status(204).send();
  });
  api.get('/api/snapshots/:id/lineage', { schema: { params: IdParams } }, async (req) => {
    const lineage = svc.lineage(principal(req).user, id(req));
    return { snapshot_id: id(req), lineage, count: lineage.length, weavers: svc.weaversFrom(principal(req).user, id(req)) };
  });
  api.post('/api/snapshots/:id/pin', { schema: { params: IdParams } }, async (req) => noBody(req.body) && svc.setPinned(principal(req).user, id(req), true));
  api.post('/api/snapshots/:id/unpin', { schema: { params: IdParams } }, async (req) => noBody(req.body) && svc.setPinned(principal(req).user, id(req), false));
  api.post('/api/snapshots/:id/clone', { schema: { params: IdParams, body: CloneBody } }, async (req, reply) =>
    reply.status(202).send(svc.clone(principal(req).user, id(req), req.body as CloneRequest)),
  );

  // Every field is optional, so no body at all is fine too.
  api.post('/api/weaver/:id/snapshot', { schema: { params: IdParams } }, async (req, reply) =>
    reply.status(202).send(svc.snapshotWeaver(principal(req).user, id(req), optionalBody(WeaverSnapshotBody, req.body) as WeaverSnapshotRequest)),
  );
  api.post('/api/weaver/:id/fork', { schema: { params: IdParams } }, async (req, reply) => {
    const f = await svc.forkWeaver(principal(req).user, id(req), optionalBody(WeaverForkBody, req.body) as ForkOverrides);
    return reply.status(202).send({ ...f.weaver, snapshot_id: f.snapshot_id });
  });
  api.get('/api/operations/:id', { schema: { params: IdParams, querystring: WaitQuery } }, async (req) => {
    const w = (req.query as { wait?: string }).wait;
    const waitMs = w ? Math.min(MAX_WAIT_SECONDS, Number(w)) * 1000 : 0;
    return svc.operation(principal(req).user, id(req), waitMs);
  });
}
