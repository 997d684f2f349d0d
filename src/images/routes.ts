/**
 * Image management routes of the local backend:
 *   GET    /api/images                 list with size and how many use each (admins also see who)
 *   POST   /api/images/build           (admins) build from Debian packages; NDJSON progress stream
 *   POST   /api/images/pull            (admins) pull from a registry with skopeo
 *   DELETE /api/images?name=…          (admins) remove; 409 image_in_use while anything uses it
 *   POST   /api/images/prune           (admins) remove every image nothing uses (the default images stay)
 * The image store is shared by every org, so changing it is a server-admin right.
 */
import { PassThrough } from 'node:stream';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { LoomError, errorMessage, forbidden, isLoomError } from '../common/errors.js';
import { principal } from '../server/http/auth.js';
import type { ImageStore, LocalImage } from '../provisioners/local/images.js';
import { isValidRef, normalizeRef } from '../provisioners/local/images.js';
import type { ImageBuilder } from './builder.js';
import { MAX_PACKAGES } from './build.js';

export interface ImageView extends LocalImage {
  size: number;
  in_use: number;
  /** Who uses it ("weaver …", "snapshot …"): server admins only (other orgs' ids are not everyone's business). */
  users?: string[];
}

const BuildBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 255 }),
    suite: Type.Optional(Type.String({ minLength: 1, maxLength: 32 })),
    packages: Type.Array(Type.String({ minLength: 1, maxLength: 100 }), { maxItems: MAX_PACKAGES }),
    source_date_epoch: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);

function requireAdmin(req: Parameters<typeof principal>[0], what: string): void {
  if (!principal(req).user.is_admin) throw forbidden(`${what} needs a server admin (the image store is shared by every org)`);
}

function checkName(name: string): string {
  if (!isValidRef(name)) throw new LoomError(400, 'invalid_image_name', `invalid image name ${JSON.stringify(name)}: letters, digits and . _ / : @ + -, no "." or ".." segments`);
  return name;
}

export async function registerImageManagementRoutes(
  api: FastifyInstance,
  o: { images: ImageStore; builder: ImageBuilder; keep: () => string[] },
): Promise<void> {
  const view = async (img: LocalImage, admin: boolean): Promise<ImageView> => {
    const users = await o.images.users(img);
    return { ...img, size: await o.images.size(img), in_use: users.length, ...(admin ? { users } : {}) };
  };

  api.get('/api/images', async (req) => {
    const admin = principal(req).user.is_admin;
    const list = await Promise.all((await o.images.list()).map((i) => view(i, admin)));
    return { images: list, count: list.length };
  });

  api.post('/api/images/build', { schema: { body: BuildBody } }, async (req, reply) => {
    requireAdmin(req, 'building images');
    const b = req.body as { name: string; suite?: string; packages: string[]; source_date_epoch?: number };
    const request = o.builder.check({ name: b.name, suite: b.suite ?? 'bookworm', packages: b.packages, ...(b.source_date_epoch !== undefined ? { sourceDateEpoch: b.source_date_epoch } : {}) });
    // Bad input is a plain JSON error above; from here the answer is a stream of progress lines.
    const out = new PassThrough();
    const line = (v: unknown) => out.write(`${JSON.stringify(v)}\n`);
    const abort = new AbortController();
    req.raw.socket.on('close', () => abort.abort(new Error('the client went away')));
    void o.builder
      .build(request, (p) => line({ type: 'progress', ...p }), abort.signal)
      .then(
        async (img) => line({ type: 'done', image: await view(img, true) }),
        (e: unknown) => line({ type: 'error', error: { code: isLoomError(e) ? e.code : 'image_build', message: errorMessage(e) } }),
      )
      .finally(() => out.end());
    return reply.status(200).type('application/x-ndjson').send(out);
  });

  api.post('/api/images/pull', { schema: { body: Type.Object({ name: Type.String({ minLength: 1, maxLength: 255 }) }, { additionalProperties: false }) } }, async (req, reply) => {
    requireAdmin(req, 'pulling images');
    const name = checkName((req.body as { name: string }).name);
    const img = await o.images.pull(name);
    return reply.status(201).send(await view(img, true));
  });

  api.delete('/api/images', { schema: { querystring: Type.Object({ name: Type.String({ minLength: 1, maxLength: 255 }) }, { additionalProperties: false }) } }, async (req, reply) => {
    requireAdmin(req, 'removing images');
    const name = checkName((req.query as { name: string }).name);
    if (!(await o.images.remove(name))) throw new LoomError(404, 'image_not_found', `no image ${normalizeRef(name)} in the store`);
    return reply.status(204).send();
  });

  api.post('/api/images/prune', async (req) => {
    requireAdmin(req, 'pruning images');
    const keep = new Set(o.keep().map(normalizeRef));
    const before = await o.images.diskUsage();
    const removed: string[] = [];
    const kept: { name: string; users: number }[] = [];
    for (const img of await o.images.list()) {
      if (keep.has(img.name)) continue;
      const users = await o.images.users(img);
      if (users.length) {
        kept.push({ name: img.name, users: users.length });
        continue;
      }
      try {
        if (await o.images.remove(img.name)) removed.push(img.name);
      } catch (e) {
        // Came into use between the check and the removal: it stays.
        if (isLoomError(e) && e.code === 'image_in_use') kept.push({ name: img.name, users: 1 });
        else throw e;
      }
    }
    const after = await o.images.diskUsage();
    return { removed, kept_in_use: kept, freed_bytes: Math.max(0, before - after) };
  });
}
