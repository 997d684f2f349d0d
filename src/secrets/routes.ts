/**
 * /api/secrets…: write-only values (no user route returns one), metadata, versions, the access
 * log. /internal/secrets/fetch: the one route that returns values, to a weaver's identity.
 */
import type { FastifyInstance } from 'fastify';
import { Type } from '@sinclair/typebox';
import { Strict } from '../server/http/schema.js';
import { bearerToken, principal } from '../server/http/auth.js';
import { LoomError, badRequest, isLoomError } from '../common/errors.js';
import { tarFiles } from './tar.js';
import { GIT_TOKEN_FILE } from '../provisioners/kubernetes/pod-spec.js';
import type { WeaverDirectory } from './policy.js';
import { MAX_VALUE_BYTES, type Scope } from './model.js';
import type { SecretsService } from './service.js';

// base64 of 64 KiB, with room for one value too many so the size error names the real size.
const B64_MAX = Math.ceil(((MAX_VALUE_BYTES + 4) * 4) / 3) + 4;
const ScopeT = Type.Union([Type.Literal('org'), Type.Literal('repo'), Type.Literal('weaver')]);
const Id = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }, Strict);
const ValueB64 = Type.String({ maxLength: B64_MAX, pattern: '^[A-Za-z0-9+/]*={0,2}$' });

function decodeValue(b64: string): Buffer {
  const buf = Buffer.from(b64, 'base64');
  if (buf.toString('base64') !== b64) throw badRequest('value_b64 is not canonical base64', 'invalid_secret_value');
  return buf;
}

export async function registerSecretsApi(api: FastifyInstance, svc: SecretsService): Promise<void> {
  api.post(
    '/api/secrets',
    {
      bodyLimit: B64_MAX + 4096,
      schema: {
        body: Type.Object(
          {
            name: Type.String({ minLength: 1, maxLength: 256 }),
            scope: ScopeT,
            org_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
            repo: Type.Optional(Type.String({ minLength: 1, maxLength: 2048 })),
            weaver_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
            value_b64: ValueB64,
            create_only: Type.Optional(Type.Boolean()),
          },
          Strict,
        ),
      },
    },
    async (req, reply) => {
      const user = principal(req).user;
      const b = req.body as { name: string; scope: Scope; org_id?: string; repo?: string; weaver_id?: string; value_b64: string; create_only?: boolean };
      const t = svc.resolveTarget(user, b);
      const s = svc.put(user, t, b.name, decodeValue(b.value_b64), b.create_only ? 'create' : 'set');
      return reply.status(s.current_version === 1 ? 201 : 200).send(s);
    },
  );

  api.get(
    '/api/secrets',
    {
      schema: {
        querystring: Type.Object(
          {
            org_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
            scope: Type.Optional(ScopeT),
            repo: Type.Optional(Type.String({ minLength: 1, maxLength: 2048 })),
            weaver_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
          },
          Strict,
        ),
      },
    },
    async (req) => {
      const secrets = svc.list(principal(req).user, req.query as { org_id?: string; scope?: Scope; repo?: string; weaver_id?: string });
      return { secrets, count: secrets.length };
    },
  );

  api.get(
    '/api/secrets/log',
    {
      schema: {
        querystring: Type.Object({ org_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })), limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,5}$' })) }, Strict),
      },
    },
    async (req) => {
      const q = req.query as { org_id?: string; limit?: string };
      const limit = Math.min(Math.max(Number(q.limit ?? 200), 1), 10_000);
      const entries = svc.accessLog(principal(req).user, q.org_id, limit);
      return { entries, count: entries.length };
    },
  );

  api.get('/api/secrets/:id', { schema: { params: Id } }, async (req) => {
    const user = principal(req).user;
    const id = (req.params as { id: string }).id;
    return svc.list(user, { org_id: svc.visible(user, id).org_id }).find((s) => s.id === id);
  });

  api.get('/api/secrets/:id/versions', { schema: { params: Id } }, async (req) => {
    const versions = svc.versions(principal(req).user, (req.params as { id: string }).id);
    return { versions, count: versions.length };
  });

  api.post(
    '/api/secrets/:id/rotate',
    { bodyLimit: B64_MAX + 4096, schema: { params: Id, body: Type.Object({ value_b64: ValueB64 }, Strict) } },
    async (req) => svc.rotate(principal(req).user, (req.params as { id: string }).id, decodeValue((req.body as { value_b64: string }).value_b64)),
  );

  api.delete('/api/secrets/:id', { schema: { params: Id } }, async (req, reply) => {
    svc.remove(principal(req).user, (req.params as { id: string }).id);
    return reply.status(204).send();
  });
}

/** Outside /api: authenticated by a weaver identity (Authorization: Bearer loom_w_…), not a user token. */
export async function registerSecretsInternal(app: FastifyInstance, svc: SecretsService): Promise<void> {
  app.post(
    '/internal/secrets/fetch',
    { schema: { body: Type.Optional(Type.Object({ names: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 256 }), { maxItems: 256 })) }, Strict)) } },
    async (req, reply) => {
      const names = (req.body as { names?: string[] } | undefined)?.names;
      const r = svc.fetch(bearerToken(req), names, 'fetch');
      reply.header('cache-control', 'no-store');
      return { weaver_id: r.weaver.id, secrets: r.secrets.map((s) => ({ name: s.name, scope: s.scope, version: s.version, value_b64: s.value.toString('base64') })) };
    },
  );
}

/** Who a pod is, from its projected service-account token (the kubernetes backend answers). */
export interface PodIdentifier {
  identifyPod(token: string, audience: string): Promise<{ weaverId: string; podName: string; gitSecret?: string }>;
}

export const K8S_AUDIENCE = 'loom-secrets';

/**
 * POST /internal/secrets/k8s/fetch (Bearer: the pod's projected token, audience loom-secrets):
 * the pod is identified by TokenReview and the live pod (never by the request), a weaver identity
 * is minted for it, and its secrets are fetched with that identity and answered as a tar of 0400
 * files for the init container to unpack into its in-memory volume.
 */
export async function registerSecretsK8s(app: FastifyInstance, svc: SecretsService, pods: PodIdentifier, weavers: WeaverDirectory): Promise<void> {
  app.post('/internal/secrets/k8s/fetch', async (req, reply) => {
    const token = bearerToken(req);
    if (!token) {
      svc.deny('k8s-init', 'no pod token');
      throw new LoomError(401, 'pod_identity_refused', 'send the pod\'s projected service-account token (audience loom-secrets)');
    }
    let who;
    try {
      who = await pods.identifyPod(token, K8S_AUDIENCE);
    } catch (e) {
      if (isLoomError(e) && e.status === 401) svc.deny('k8s-init', e.message);
      throw e;
    }
    const w = weavers.get(who.weaverId);
    if (!w) {
      svc.deny('k8s-init', `pod ${who.podName} has no weaver record`);
      throw new LoomError(401, 'pod_identity_refused', 'the pod is not a known weaver');
    }
    const r = svc.fetch(svc.mintIdentity(w), undefined, 'k8s-init');
    const files = r.secrets.map((s) => ({ name: s.name, data: s.value, mode: 0o400, uid: 1000, gid: 1000 }));
    // The clone token by the same rule as on the local backend (named, or a repo/weaver GIT_TOKEN).
    const gitToken = w.repo ? svc.gitToken(w, who.gitSecret) : null;
    if (gitToken) files.push({ name: GIT_TOKEN_FILE, data: Buffer.from(gitToken), mode: 0o400, uid: 1000, gid: 1000 });
    const tar = tarFiles(files);
    for (const s of r.secrets) s.value.fill(0);
    return reply.header('cache-control', 'no-store').type('application/x-tar').send(tar);
  });
}
