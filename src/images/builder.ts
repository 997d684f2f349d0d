/**
 * One image build at a time into a store: scratch directory, timeout, cleanup, import.
 * Used by the API route (POST /api/images/build) and by `loom-server admin build-image` (set-up).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { LoomError } from '../common/errors.js';
import type { ImagesConfig } from '../server/config/load.js';
import type { ImageStore, LocalImage } from '../provisioners/local/images.js';
import { isValidRef, normalizeRef } from '../provisioners/local/images.js';
import { buildImageLayout, validateBuild, type BuildProgress, type BuildRequest } from './build.js';

/** The default development image: a lean, useful Debian set. */
export const DEV_IMAGE = 'loom/dev:bookworm';
export const DEV_IMAGE_REQUEST: BuildRequest = {
  name: DEV_IMAGE,
  suite: 'bookworm',
  packages: ['bash', 'ca-certificates', 'curl', 'gcc', 'git', 'less', 'libc6-dev', 'make', 'openssh-client', 'procps', 'python3', 'vim-tiny'],
};

export class ImageBuilder {
  private busy: string | null = null;

  constructor(private readonly store: ImageStore, private readonly scratchRoot: string, private readonly cfg: ImagesConfig) {}

  /** Checks a request (400 on bad input) without building. */
  check(req: BuildRequest): BuildRequest {
    const name = normalizeRef(req.name);
    if (!isValidRef(req.name) || !isValidRef(name)) throw new LoomError(400, 'invalid_image_name', `invalid image name ${JSON.stringify(req.name)}: letters, digits and . _ / : @ + -, no "." or ".." segments`);
    const r = { ...req, name };
    validateBuild(r);
    return r;
  }

  /** Builds and stores; 409 while another build runs. */
  async build(input: BuildRequest, progress: BuildProgress, signal?: AbortSignal): Promise<LocalImage> {
    const req = this.check(input);
    if (this.busy) throw new LoomError(409, 'build_in_progress', `another image build (${this.busy}) is running; try again when it is done`);
    this.busy = req.name;
    const timeout = AbortSignal.timeout(this.cfg.buildTimeoutSecs * 1000);
    const stop = signal ? AbortSignal.any([signal, timeout]) : timeout;
    await fsp.mkdir(this.scratchRoot, { recursive: true });
    const dir = await fsp.mkdtemp(join(this.scratchRoot, 'build-'));
    try {
      const layout = await buildImageLayout(req, { mirror: this.cfg.buildMirror, extraSources: this.cfg.buildExtraSources }, dir, progress, stop).catch((e: unknown) => {
        if (timeout.aborted) throw new LoomError(504, 'image_build_timeout', `the build took longer than LOOM_IMAGE_BUILD_TIMEOUT_SECS (${this.cfg.buildTimeoutSecs} s)`);
        throw e;
      });
      progress({ phase: 'storing the image' });
      return await this.store.import(layout, req.name, `build:${req.suite}:${[...new Set(req.packages)].sort().join(',')}`);
    } finally {
      this.busy = null;
      await fsp.rm(dir, { recursive: true, force: true });
    }
  }
}
