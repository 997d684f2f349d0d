import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Type } from '@sinclair/typebox';
import type { Config } from '../../server/config/load.js';
import type { Logger } from '../../common/log.js';
import { LoomError, forbidden, isLoomError } from '../../common/errors.js';
import { principal } from '../../server/http/auth.js';
import type { BackendHandle } from '../../weaver/component.js';
import { LocalProvisioner } from './provisioner.js';
import { OutboundNetwork } from './outbound.js';
import { DEFAULT_LOCAL_IMAGE, MINIMAL_LOCAL_IMAGE } from './default-image.js';
import { DEV_IMAGE, ImageBuilder } from '../../images/builder.js';
import { registerImageManagementRoutes } from '../../images/routes.js';
import { readFileSync } from 'node:fs';
import { isValidRef, type ImageStore } from './images.js';

const IMAGE_UPLOAD_LIMIT = 16 * 1024 * 1024 * 1024;

/** The local backend with its image-store routes: GET /api/images, POST /api/images (admins). */
export function localBackend(config: Config, log: Logger): BackendHandle {
  const provisioner = new LocalProvisioner({
    dataDir: config.dataDir,
    log,
    runtime: config.weaver.runtime,
    network: config.weaver.network,
    defaultCpu: config.weaver.defaultCpu,
    defaultMemory: config.weaver.defaultMemory,
    pidsLimit: config.weaver.pidsLimit,
    usernsBase: config.weaver.usernsBase,
    git: config.weaver.git,
    testDelayMs: config.branching.testDelayMs,
    pullTimeoutMs: config.images.pullTimeoutSecs * 1000,
  });
  // Outbound network through slirp4netns, filtered in the weaver's netns, set up before its first process runs.
  if (config.weaver.network === 'slirp4netns') provisioner.hooks.add(new OutboundNetwork({ allowed: config.weaver.networkAllowedNetworks }));
  provisioner.images.addUsersSource((img) => provisioner.imageUsers(img));
  provisioner.images.addReclaimer((digest) => provisioner.dropImageLayers(digest));
  return {
    provisioner,
    // The Debian dev image once set-up (or an admin) built it; else the built-in busybox image.
    defaultImage: storeHasSync(provisioner.images.root, DEV_IMAGE) ? DEV_IMAGE : DEFAULT_LOCAL_IMAGE,
    async registerApi(api) {
      await registerImageRoutes(api, provisioner.images, join(config.dataDir, 'local', 'tmp'));
      await registerImageManagementRoutes(api, {
        images: provisioner.images,
        builder: new ImageBuilder(provisioner.images, join(config.dataDir, 'local', 'tmp'), config.images),
        keep: () => [DEFAULT_LOCAL_IMAGE, MINIMAL_LOCAL_IMAGE, DEV_IMAGE, ...(config.weaver.defaultImage ? [config.weaver.defaultImage] : [])],
      });
    },
  };
}

async function registerImageRoutes(api: Parameters<NonNullable<BackendHandle['registerApi']>>[0], images: ImageStore, tmpRoot: string): Promise<void> {
  // The body is the image archive itself (OCI archive or docker-archive tar), streamed to disk.
  api.register(async (scoped) => {
    scoped.addContentTypeParser(['application/x-tar', 'application/octet-stream'], (_req, payload, done) => done(null, payload));
    scoped.post(
      '/api/images',
      {
        bodyLimit: IMAGE_UPLOAD_LIMIT,
        schema: { querystring: Type.Object({ name: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })) }, { additionalProperties: false }) },
      },
      async (req, reply) => {
        if (!principal(req).user.is_admin) throw forbidden('importing images needs a server admin (the image store is shared by every org)');
        // Validate everything the request names before reading a byte of the body.
        const name = (req.query as { name?: string }).name;
        if (name !== undefined && !isValidRef(name)) {
          throw new LoomError(400, 'invalid_image_name', `invalid image name ${JSON.stringify(name)}: letters, digits and . _ / : @ + -, no "." or ".." segments`);
        }
        const { mkdir } = await import('node:fs/promises');
        await mkdir(tmpRoot, { recursive: true });
        const dir = await mkdtemp(join(tmpRoot, 'upload-'));
        const file = join(dir, 'image.tar');
        try {
          await pipeline(req.body as NodeJS.ReadableStream, createWriteStream(file));
          const img = await images.import(file, name);
          return reply.status(201).send(img);
        } catch (e) {
          // Messages name the upload, never the server's temp path.
          if (isLoomError(e)) throw new LoomError(e.status, e.code, e.message.split(file).join('the uploaded archive').split(dir).join('the upload'));
          throw e;
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    );
  });
}

/** Whether the store's index names an image (read once at start: the default image is fixed for the server's life). */
function storeHasSync(root: string, name: string): boolean {
  try {
    const idx = JSON.parse(readFileSync(join(root, 'index.json'), 'utf8')) as { images?: Record<string, unknown> };
    return !!idx.images?.[name];
  } catch {
    return false;
  }
}
