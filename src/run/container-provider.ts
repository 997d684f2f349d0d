/**
 * The container provider (a job with `image:`): each script line runs in a fresh runc/crun
 * container from Loom's own image store (`<data dir>/local/images`, the same store `loom image
 * import` fills; the default image is built offline when missing). No Docker engine. The image
 * root filesystem is mounted read-only; the workspace is at /workspace, either the isolated
 * workspace itself (bind_mount) or a copy made with the copy primitive (ephemeral_volume, not
 * synced back). Only workflow and job variables (plus the predefined ones) reach the process.
 *
 * Every container runs in a user namespace (./userns.ts): uid/gid 0 inside is host base (100000
 * unless LOOM_RUN_USERNS_BASE says otherwise). The image root is the store's ownership-shifted
 * unpack (the one weavers use); the workspace is shifted into the range before the first step
 * and a bind-mounted one handed back to the invoking user at cleanup. runc's init enters the
 * rootfs and bind sources as that unprivileged uid, so it must be able to search every directory
 * above them: rather than open up the data dir's parents (e.g. /root), runc runs in a private
 * mount namespace of its own where they are bind-mounted into the bundle (under the temp dir),
 * and those mounts die with that runc process.
 *
 * Kept in this one module, on the public classes of src/provisioners/local, so changes to the
 * local runtime land in one place.
 */
import { randomBytes } from 'node:crypto';
import { chown, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { copyTree, removeTree } from '../branching/copy.js';
import { createLogger } from '../common/log.js';
import { DEFAULT_LOCAL_IMAGE, ensureDefaultImage } from '../provisioners/local/default-image.js';
import { ImageStore, normalizeRef, type ResolvedImage } from '../provisioners/local/images.js';
import { detectRuntime, which, type RuntimeInfo } from '../provisioners/local/runtime.js';
import { buildOciSpec } from '../provisioners/local/spec.js';
import { grantSearch, hostId, type IdMap } from '../provisioners/local/idmap.js';
import { checkUsernsHost, leaseWorkspace, releaseWorkspace, runIdMap, shiftInto } from './userns.js';
import { runProcess, type JobProvider, type StepOutput } from './host-provider.js';
import { setContainerProviderFactory, type ContainerProviderFactory, type MountMode } from './runner.js';
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
  private ids: IdMap = { base: 0 };
  /** The bind-mounted workspace has been shifted into the range for this job (handed back at cleanup). */
  private leased = false;
  private shifted = false;

  constructor(private readonly o: { workspace: string; image: string; mount: MountMode; jobId: string; runId: string; secretDir?: string }) {}

  async prepare(log: (m: string) => void): Promise<void> {
    this.ids = runIdMap();
    checkUsernsHost();
    if (!which('unshare') || !which('mount')) throw new Error('container jobs need unshare and mount (util-linux) in PATH: runc runs in a private mount namespace of its own');
    const base = join(localDataDir(), 'local');
    const tmp = join(base, 'tmp');
    await mkdir(tmp, { recursive: true });
    runtime ??= detectRuntime('auto', tmp);
    this.rt = await runtime;
    const store = new ImageStore({ root: join(base, 'images'), log: createLogger('silent', process.stderr) });
    const ref = normalizeRef(this.o.image);
    if (ref === DEFAULT_LOCAL_IMAGE) await ensureDefaultImage(store, tmp);
    if (!(await store.get(ref))) throw new Error(`image ${ref} is not in the local image store (${join(base, 'images')}); add it with loom image import`);
    // The store's unpack with every owner shifted into the range (made once per digest and base).
    this.image = await store.resolve(ref, this.ids.base);
    const root = hostId(this.ids, 0);
    log(`container provider: ${this.rt.name} ${this.rt.version}, image ${ref} (${this.image.image.digest.slice(0, 19)}), user namespace: ids 0-65535 inside are ${root}-${root + 65535} on the host`);
    this.scratch = await mkdtemp(join(tmpdir(), `loom-run-ctr-${this.o.runId}-`));
    await grantSearch(this.scratch, root);
    if (this.o.secretDir) {
      // Secret files are 0600: the job's root (host uid base) must own them to read them.
      await chown(this.o.secretDir, root, root);
      for (const f of await readdir(this.o.secretDir)) await chown(join(this.o.secretDir, f), root, root);
    }
    if (this.o.mount === 'ephemeral_volume') {
      this.volume = join(this.scratch, 'volume');
      const r = await copyTree(this.o.workspace, this.volume);
      log(`workspace copied into an ephemeral volume (${r.strategy}, ${r.files} files) at ${this.volume}; changes are not synced back`);
    } else log(`workspace bind-mounted at /workspace from ${this.o.workspace}; owned by the namespace's ids while the job runs, handed back to uid ${process.getuid?.()} afterwards`);
  }

  /** Before the first step (after the cache restore wrote into the workspace): move the workspace's owners into the range. */
  private async shiftWorkspace(): Promise<void> {
    if (this.shifted) return;
    this.shifted = true;
    if (this.volume) await shiftInto(this.volume, this.ids.base);
    else {
      this.leased = true;
      await leaseWorkspace(this.o.workspace, this.ids.base, this.runtimeSkip());
    }
  }

  /** The run's logs and receipts stay the invoking user's: the job cannot write them. */
  private runtimeSkip(): string[] {
    return [join(this.o.workspace, '.loom', '.runtime')];
  }

  async runStep(line: string, env: Record<string, string>, out: StepOutput): Promise<number> {
    const img = this.image!;
    const id = `loom-run-${this.o.runId}-${this.o.jobId}-${++this.steps}-${randomBytes(3).toString('hex')}`;
    const bundle = join(this.scratch!, `step-${this.steps}`);
    await this.shiftWorkspace();
    // Host paths bind-mounted into the bundle inside runc's private mount namespace (see the top).
    const staged: [string, string][] = [[img.rootfs, join(bundle, 'rootfs')], [this.volume ?? this.o.workspace, join(bundle, 'workspace')]];
    if (this.o.secretDir) staged.push([this.o.secretDir, join(bundle, 'secrets')]);
    for (const [, at] of staged) await mkdir(at, { recursive: true });
    const imgEnv = Object.fromEntries(img.config.env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
    const binds = [{ source: join(bundle, 'workspace'), destination: '/workspace' }];
    if (this.o.secretDir) binds.push({ source: join(bundle, 'secrets'), destination: this.o.secretDir, readonly: true } as (typeof binds)[number]);
    const spec = buildOciSpec({
      rootfs: join(bundle, 'rootfs'),
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
      usernsBase: this.ids.base,
    });
    // /tmp before the binds, so the secrets bind (under the host's temp dir) is not hidden by it.
    const firstBind = spec.mounts.findIndex((m) => m.type === 'bind');
    spec.mounts.splice(firstBind < 0 ? spec.mounts.length : firstBind, 0, { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] });
    await writeFile(join(bundle, 'config.json'), JSON.stringify(spec));
    try {
      const stage = 'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 125; shift 2; done; shift; exec "$@"';
      const argv = ['--mount', '--propagation', 'private', '--', 'sh', '-c', stage, 'sh', ...staged.flat(), '--', this.rt!.path, 'run', '--bundle', bundle, id];
      return await runProcess('unshare', argv, { cwd: bundle, env: { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin' } }, out);
    } finally {
      await runProcess(this.rt!.path, ['delete', '--force', id], { cwd: bundle, env: { PATH: process.env['PATH'] ?? '/usr/bin' } }, () => undefined);
    }
  }

  async cleanup(log: (m: string) => void): Promise<void> {
    if (this.leased) {
      this.leased = false;
      const uid = process.getuid?.() ?? 0;
      const gid = process.getgid?.() ?? 0;
      if (await releaseWorkspace(this.o.workspace, this.ids.base, uid, gid, this.runtimeSkip())) {
        log(`workspace handed back: entries owned by ids ${this.ids.base}-${this.ids.base + 65535} now belong to ${uid}:${gid} (set-id bits dropped)`);
      }
    }
    if (this.scratch) {
      await removeTree(this.scratch).catch(() => rm(this.scratch!, { recursive: true, force: true }));
      log(`removed ${this.scratch}`);
    }
  }
}

export const createContainerProvider: ContainerProviderFactory = (o) => new ContainerProvider(o);
setContainerProviderFactory(createContainerProvider);
