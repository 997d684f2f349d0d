/**
 * The container provider (a job with `image:`): each script line runs in a fresh runc/crun
 * container from Loom's own image store (`<data dir>/local/images`, the same store `loom image
 * import` fills; the default image is built offline when missing). No Docker engine. The image
 * root filesystem is mounted read-only; the workspace is at /workspace, either the isolated
 * workspace itself (bind_mount) or a copy made with the copy primitive (ephemeral_volume, not
 * synced back). Only workflow and job variables (plus the predefined ones) reach the process.
 *
 * Kept in this one module, on the public classes of src/provisioners/local, so changes to the
 * local runtime land in one place.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { copyTree, removeTree } from '../branching/copy.js';
import { createLogger } from '../common/log.js';
import { DEFAULT_LOCAL_IMAGE, ensureDefaultImage } from '../provisioners/local/default-image.js';
import { ImageStore, normalizeRef, type ResolvedImage } from '../provisioners/local/images.js';
import { detectRuntime, type RuntimeInfo } from '../provisioners/local/runtime.js';
import { buildOciSpec } from '../provisioners/local/spec.js';
import { runProcess, type JobProvider, type StepOutput } from './host-provider.js';
import { setContainerProviderFactory, type MountMode } from './runner.js';
import { env } from '../server/config/load.js';

export function localDataDir(): string {
  return env('LOOM_DATA_DIR') || join(process.env['XDG_DATA_HOME'] || join(homedir(), '.local', 'share'), 'loom');
}

let runtime: Promise<RuntimeInfo> | undefined;

class ContainerProvider implements JobProvider {
  readonly name = 'container' as const;
  readonly projectDir = '/workspace';
  private image: ResolvedImage | undefined;
  private rt: RuntimeInfo | undefined;
  private volume: string | undefined;
  private scratch: string | undefined;
  private steps = 0;

  constructor(private readonly o: { workspace: string; image: string; mount: MountMode; jobId: string; runId: string; secretDir?: string }) {}

  async prepare(log: (m: string) => void): Promise<void> {
    const base = join(localDataDir(), 'local');
    const tmp = join(base, 'tmp');
    await mkdir(tmp, { recursive: true });
    runtime ??= detectRuntime('auto', tmp);
    this.rt = await runtime;
    const store = new ImageStore({ root: join(base, 'images'), log: createLogger('silent', process.stderr) });
    const ref = normalizeRef(this.o.image);
    if (ref === DEFAULT_LOCAL_IMAGE) await ensureDefaultImage(store, tmp);
    if (!(await store.get(ref))) throw new Error(`image ${ref} is not in the local image store (${join(base, 'images')}); add it with loom image import`);
    this.image = await store.resolve(ref);
    log(`container provider: ${this.rt.name} ${this.rt.version}, image ${ref} (${this.image.image.digest.slice(0, 19)})`);
    this.scratch = await mkdtemp(join(tmpdir(), `loom-run-ctr-${this.o.runId}-`));
    if (this.o.mount === 'ephemeral_volume') {
      this.volume = join(this.scratch, 'volume');
      const r = await copyTree(this.o.workspace, this.volume);
      log(`workspace copied into an ephemeral volume (${r.strategy}, ${r.files} files) at ${this.volume}; changes are not synced back`);
    } else log(`workspace bind-mounted at /workspace from ${this.o.workspace}`);
  }

  async runStep(line: string, env: Record<string, string>, out: StepOutput): Promise<number> {
    const img = this.image!;
    const id = `loom-run-${this.o.runId}-${this.o.jobId}-${++this.steps}-${randomBytes(3).toString('hex')}`;
    const bundle = join(this.scratch!, `step-${this.steps}`);
    await mkdir(bundle);
    const imgEnv = Object.fromEntries(img.config.env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
    const binds = [{ source: this.volume ?? this.o.workspace, destination: '/workspace' }];
    if (this.o.secretDir) binds.push({ source: this.o.secretDir, destination: this.o.secretDir, readonly: true } as (typeof binds)[number]);
    const spec = buildOciSpec({
      rootfs: img.rootfs,
      args: ['/bin/sh', '-lc', line],
      env: { ...imgEnv, HOME: '/workspace', ...env },
      cwd: '/workspace',
      uid: 0,
      gid: 0,
      terminal: false,
      hostname: this.o.jobId.slice(0, 63),
      cgroupsPath: `/loom-run/${id}`,
      readonlyRootfs: true,
      binds,
      privateNetwork: false,
    });
    // /tmp before the binds, so the secrets bind (under the host's temp dir) is not hidden by it.
    const firstBind = spec.mounts.findIndex((m) => m.type === 'bind');
    spec.mounts.splice(firstBind < 0 ? spec.mounts.length : firstBind, 0, { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] });
    await writeFile(join(bundle, 'config.json'), JSON.stringify(spec));
    try {
      return await runProcess(this.rt!.path, ['run', '--bundle', bundle, id], { cwd: bundle, env: { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin' } }, out);
    } finally {
      await runProcess(this.rt!.path, ['delete', '--force', id], { cwd: bundle, env: { PATH: process.env['PATH'] ?? '/usr/bin' } }, () => undefined);
    }
  }

  async cleanup(log: (m: string) => void): Promise<void> {
    if (this.scratch) {
      await removeTree(this.scratch).catch(() => rm(this.scratch!, { recursive: true, force: true }));
      log(`removed ${this.scratch}`);
    }
  }
}

setContainerProviderFactory((o) => new ContainerProvider(o));
