/**
 * LocalProvisioner: weavers as OCI containers run by runc/crun under conmon on this machine.
 *
 * <dataDir>/local/
 *   runc/              the runtime's --root (state of our containers only)
 *   images/            ImageStore
 *   exits/<id>         conmon exit files (one fs.watch for all weavers, plus a slow poll)
 *   layers/            the snapshotter (snapshotter/overlay.ts): image layers (references to the
 *                      unpacked images), weaver snapshots and each weaver's active layer
 *   weavers/<id>/      bundle: meta.json, config.json, rootfs/ (the mount of the weaver's active
 *                      layer `weaver/<id>`, /workspace included), ctr.log, attach, ctl, winsz, pid files
 * Weavers made by earlier releases (meta without `layout`) keep their layer/ (upper+work) and
 * workspace/ (bind-mounted at /workspace) until deleted; they cannot be snapshotted as layers.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { LoomError, errorMessage } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { WeaverConfig } from '../../server/config/load.js';
import type {
  BackendHealth, BackendWeaver, ExecProcess, ExecRequest, LayerSnapshotResult, LogOptions, Provisioner, ReconcileReport, StatusListener, TerminalStream, WeaverSpec,
} from '../../weaver/provisioner.js';
import { ensureExecHelper, localExec } from './exec.js';
import { ensureAttachRelay, openTerminalStream, type RelayCommand } from './attach.js';
import { DEFAULT_LOCAL_IMAGE, ensureDefaultImage, findStaticBusybox, isBuiltinImage } from './default-image.js';
import { cloneRepo, repoName, type GitOptions } from './git.js';
import { ImageStore, isValidRef, normalizeRef, sharedImageStore, type ImageRunConfig } from './images.js';
import { stopSlirp, SLIRP_RESOLV_CONF, type NetworkMode } from './network.js';
import { OverlayMaterializer, unmountAll, type Materializer } from './rootfs.js';
import { ContainerRuntime, bundleFiles, detectRuntime, type RuntimeState } from './runtime.js';
import { buildOciSpec } from './spec.js';
import { grantSearch, hostId, type IdMap } from './idmap.js';
import { RuntimeHooks, type HookContext } from './hooks.js';
import { exists, readJson, run, sleep, writeJsonAtomic } from './util.js';
import type { OverlaySnapshotter } from './snapshotter/overlay.js';
import { LocalStack } from './stack.js';
import { KeyedMutex } from '../../common/keyed-mutex.js';
import { followLog, readLogTail } from './logs.js';

export interface LocalProvisionerOptions {
  /** Server data dir; everything goes under <dataDir>/local. */
  dataDir: string;
  log: Logger;
  runtime?: WeaverConfig['runtime'];
  network?: NetworkMode;
  /** Used when a spec's resources are empty. */
  defaultCpu?: string;
  defaultMemory?: string;
  /** cgroup pids limit of every weaver (default 1024). */
  pidsLimit?: number;
  /** Host id that id 0 of every weaver maps to (a user namespace of 65536 ids); 0 or absent: none. */
  usernsBase?: number;
  /** Repository clones: allowed private networks, size and time caps, extra CA bundle. */
  git?: GitOptions;
  materializer?: Materializer;
  /** How long a registry pull may take before the weaver fails (default 20 s). */
  pullTimeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL on delete (default 2 s). */
  stopGraceMs?: number;
  /** Build the default image in start() (default true); otherwise on first use. */
  prepareDefaultImage?: boolean;
  /** Test hook: sleep this long after copying a snapshot's layer (inside the freeze when frozen). */
  testDelayMs?: number;
}

/** What we keep on disk per weaver, next to the bundle. */
interface WeaverMeta {
  id: string;
  image: string;
  createdAt: string;
  /** creating → started; failed when provisioning failed (reason set). */
  phase: 'creating' | 'started' | 'failed';
  reason?: string;
  startedAt?: string;
  hostname: string;
  slirp?: boolean;
  /** 'layers': the root filesystem is the active layer weaver/<id>. Absent: an earlier release's layout. */
  layout?: 'layers';
}

export const weaverLayer = (id: string): string => `weaver/${id}`;
export const snapshotLayer = (snapshotId: string): string => `snapshot/${snapshotId}`;

interface Live {
  id: string;
  status: BackendWeaver['status'];
  reason?: string;
  exitCode?: number;
  startedAt?: Date;
  abort?: AbortController;
  provisioning?: Promise<void>;
}

export const hostnameFor = (id: string): string => `weaver-${id.replace(/[^a-z0-9]/gi, '').slice(0, 8).toLowerCase()}`;

const FINAL = new Set(['succeeded', 'failed']);

/** Where every local weaver sees the read-only static busybox the files API runs. */
export const TOOLBOX = '/.loom/busybox';

export class LocalProvisioner implements Provisioner {
  readonly name = 'local' as const;
  readonly base: string;
  readonly images: ImageStore;
  readonly weaversDir: string;
  readonly exitDir: string;
  /** Features plug into container setup and teardown here (hooks.ts); nothing else knows our paths. */
  readonly hooks = new RuntimeHooks();
  /** Supplies the token a private repository is cloned with (set by the secrets feature); null: clone anonymously. */
  gitToken: ((w: { id: string; orgId: string; repo: string; secretName?: string }) => Promise<string | null>) | null = null;
  private readonly log: Logger;
  private readonly opts: LocalProvisionerOptions;
  /** The weavers' user namespace: container ids become host ids only through hostId(this.ids, …). */
  readonly ids: IdMap;
  private readonly materializer: Materializer;
  /** The one local runtime stack (runc root, exit watcher, layers), shared with seed containers. */
  readonly stack: LocalStack;
  private stackStarted = false;
  private unwatchExits: (() => void) | null = null;
  private relay: RelayCommand | null = null;
  private execHelper: string | null = null;
  private toolboxSource: string | null = null;
  private readonly listeners = new Set<StatusListener>();
  private readonly live = new Map<string, Live>();
  private readonly lastEmitted = new Map<string, string>();
  private readonly mutex = new KeyedMutex();
  private pollTimer: NodeJS.Timeout | null = null;
  private defaultImage: Promise<unknown> | null = null;
  private started: Promise<void> | null = null;
  private closed = false;

  constructor(opts: LocalProvisionerOptions) {
    this.opts = opts;
    this.ids = { base: opts.usernsBase ?? 0 };
    this.log = opts.log.child({ component: 'local-provisioner' });
    this.base = join(opts.dataDir, 'local');
    this.weaversDir = join(this.base, 'weavers');
    this.stack = LocalStack.shared(opts.dataDir, opts.log, opts.runtime ?? 'auto');
    this.exitDir = this.stack.exitDir;
    this.images = sharedImageStore(opts.dataDir, this.log, opts.pullTimeoutMs ?? 20_000);
    this.materializer = opts.materializer ?? new OverlayMaterializer();
    // The files API's tools: the host's static busybox, read-only at TOOLBOX in every weaver, so
    // file transfers work the same whatever the image ships (even an image without a shell).
    this.hooks.add({
      name: 'toolbox',
      spec: (ctx, oci) => {
        if (ctx.kind !== 'weaver' || !this.toolboxSource) return;
        oci.mounts.push({ destination: TOOLBOX, type: 'bind', source: this.toolboxSource, options: ['bind', 'ro', 'nosuid', 'nodev'] });
      },
    });
  }

  /** The ContainerRuntime in use (after start()); the branching feature can share it. */
  get containerRuntime(): ContainerRuntime {
    if (!this.stackStarted) throw new LoomError(503, 'backend_not_started', 'local provisioner not started');
    return this.stack.rt;
  }

  start(): Promise<void> {
    this.started ??= this.doStart();
    return this.started;
  }

  private async doStart(): Promise<void> {
    await this.stack.start();
    this.stackStarted = true;
    for (const d of [this.base, this.weaversDir]) await fsp.mkdir(d, { recursive: true });
    if (this.ids.base > 0) {
      // runc's init runs as the namespace's root (host uid/gid base) when it pivots into
      // weavers/<id>/rootfs: it needs search permission on every directory on that path.
      // Granted to that one group (search only, no listing), not to every host user.
      await grantSearch(this.opts.dataDir, hostId(this.ids, 0));
      for (const d of [this.base, this.weaversDir]) await grantSearch(d, hostId(this.ids, 0));
    }
    const info = this.stack.rt.info;
    this.relay = await ensureAttachRelay();
    this.execHelper = await ensureExecHelper();
    // Per-exec scratch files of a previous run (its helpers died with it: PR_SET_PDEATHSIG).
    await fsp.rm(join(this.base, 'x'), { recursive: true, force: true });
    this.toolboxSource = await findStaticBusybox().catch(() => null);
    this.startExitWatcher();
    this.log.info({ runtime: info.name, version: info.version, relay: this.relay.cmd }, 'local backend ready');
    if (this.opts.prepareDefaultImage !== false) await this.ensureDefault();
  }

  private ensureDefault(): Promise<unknown> {
    this.defaultImage ??= ensureDefaultImage(this.images, join(this.base, 'tmp')).catch((e) => {
      this.defaultImage = null;
      throw e;
    });
    return this.defaultImage;
  }

  /**
   * Who on this backend uses an image: weavers made from it (by name, while they exist) and the
   * layers stacked on its base layer (weavers' active layers, snapshots, forks). For the image store.
   */
  async imageUsers(img: { name: string; digest: string }): Promise<string[]> {
    await this.start();
    const out: string[] = [];
    for (const id of await fsp.readdir(this.weaversDir).catch(() => [] as string[])) {
      const meta = await readJson<WeaverMeta>(join(this.weaversDir, id, 'meta.json'));
      if (meta && meta.phase !== 'failed' && normalizeRef(meta.image) === img.name) out.push(`weaver ${id}`);
    }
    for (const l of this.layers.list()) {
      if (l.key !== `image/${img.digest}` && !l.key.startsWith(`image/${img.digest}@`)) continue;
      for (const child of this.layers.children(l.key)) {
        out.push(child.startsWith('weaver/') ? `weaver ${child.slice(7)}` : child.startsWith('snapshot/') ? `snapshot ${child.slice(9)}` : `layer ${child}`);
      }
    }
    return out;
  }

  /** Drops the base layers of an image digest nothing stacks on (the store then deletes the unpacked trees they point at). */
  async dropImageLayers(digest: string): Promise<void> {
    await this.start();
    for (const l of this.layers.list()) {
      if (l.key === `image/${digest}` || l.key.startsWith(`image/${digest}@`)) await this.layers.remove(l.key);
    }
  }

  private rt(): ContainerRuntime {
    return this.containerRuntime;
  }

  /** The layer store (after start()). */
  get layers(): OverlaySnapshotter {
    if (!this.stackStarted) throw new LoomError(503, 'backend_not_started', 'local provisioner not started');
    return this.stack.layers;
  }

  private dir(id: string): string {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id)) throw new LoomError(400, 'bad_id', `invalid weaver id ${JSON.stringify(id)}`);
    return join(this.weaversDir, id);
  }

  // ---------------------------------------------------------------- status

  watch(listener: StatusListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(w: BackendWeaver): void {
    const key = `${w.status}|${w.reason ?? ''}`;
    if (this.lastEmitted.get(w.id) === key) return;
    this.lastEmitted.set(w.id, key);
    for (const l of this.listeners) {
      try {
        l({ ...w });
      } catch (e) {
        this.log.warn({ err: errorMessage(e) }, 'status listener threw');
      }
    }
  }

  private setLive(id: string, patch: Partial<Live>): Live {
    const cur = this.live.get(id) ?? { id, status: 'pending' as const };
    Object.assign(cur, patch);
    this.live.set(id, cur);
    this.emit(toBackend(cur));
    return cur;
  }

  private startExitWatcher(): void {
    this.unwatchExits = this.stack.onExit((id) => void this.checkExit(id));
    let tick = 0;
    this.pollTimer = setInterval(() => {
      tick++;
      for (const l of this.live.values()) {
        if (l.status === 'running') {
          void this.checkExit(l.id);
          if (tick % 5 === 0) void this.checkGone(l.id);
        }
      }
    }, 1000);
    this.pollTimer.unref();
  }

  private async checkExit(id: string): Promise<void> {
    const l = this.live.get(id);
    if (!l || l.status !== 'running') return;
    const code = await ContainerRuntime.exitCode(this.exitDir, id);
    if (code === null) return;
    const cur = this.live.get(id);
    if (!cur || cur.status !== 'running') return;
    this.setLive(id, { status: code === 0 ? 'succeeded' : 'failed', exitCode: code, reason: `exited with code ${code}` });
  }

  /** Backstop: conmon was killed and never wrote an exit file. */
  private async checkGone(id: string): Promise<void> {
    const dir = join(this.weaversDir, id);
    if (await this.rt().conmonAlive(dir)) return;
    await sleep(200);
    if ((await ContainerRuntime.exitCode(this.exitDir, id)) !== null) return this.checkExit(id);
    const st = await this.rt().state(id);
    const l = this.live.get(id);
    if (!l || l.status !== 'running') return;
    if (!st || st.status === 'stopped') this.setLive(id, { status: 'failed', reason: 'container stopped and its monitor (conmon) is gone' });
  }

  // ---------------------------------------------------------------- create

  async create(spec: WeaverSpec): Promise<void> {
    if (this.closed) throw new LoomError(503, 'backend_closed', 'local provisioner is closed');
    if (!isValidRef(spec.image)) throw new LoomError(400, 'bad_image', `invalid image reference ${JSON.stringify(spec.image)}`);
    if (this.live.has(spec.id)) throw new LoomError(409, 'conflict', `weaver ${spec.id} already exists`);
    // Registered before the first await, so a delete() that comes in meanwhile waits for us.
    const abort = new AbortController();
    const l = this.setLive(spec.id, { status: 'pending', abort });
    const setup = (async () => {
      await this.start();
      const dir = this.dir(spec.id);
      if (await exists(dir)) throw new LoomError(409, 'conflict', `weaver ${spec.id} already exists`);
      await fsp.mkdir(dir, { recursive: true });
      if (this.ids.base > 0) await grantSearch(dir, hostId(this.ids, 0));
      const meta: WeaverMeta = { id: spec.id, image: spec.image, createdAt: new Date().toISOString(), phase: 'creating', hostname: hostnameFor(spec.id) };
      await writeJsonAtomic(join(dir, 'meta.json'), meta);
      return meta;
    })();
    l.provisioning = setup.then(
      (meta) =>
        this.mutex.run(spec.id, () => this.provision(spec, meta, abort.signal)).catch((e) => {
          this.log.error({ weaver: spec.id, err: errorMessage(e) }, 'provisioning crashed');
        }),
      () => undefined,
    );
    try {
      await setup;
    } catch (e) {
      this.live.delete(spec.id);
      throw e;
    }
  }

  private async provision(spec: WeaverSpec, meta: WeaverMeta, signal: AbortSignal): Promise<void> {
    const id = spec.id;
    const dir = join(this.weaversDir, id);
    const files = bundleFiles(dir);
    const t0 = Date.now();
    // Where a start spends its time (logged with 'weaver running'; bench/layers/fork.ts prints it).
    const phases: Record<string, number> = {};
    let tp = performance.now();
    const phase = (name: string) => {
      const now = performance.now();
      phases[name] = Math.round((now - tp) * 10) / 10;
      tp = now;
    };
    const fail = async (reason: string, toLog?: string) => {
      if (signal.aborted) return;
      if (toLog) await appendLogLine(files.log, toLog).catch(() => undefined);
      await this.rt().remove(id, dir, 0).catch(() => undefined);
      await stopSlirp(join(dir, 'slirp.pid'));
      await this.releaseRootfs(id, dir, meta);
      await this.hooks.removed(this.hookContext(id, spec), (h) => join(dir, 'hooks', h));
      meta.phase = 'failed';
      meta.reason = reason;
      await writeJsonAtomic(join(dir, 'meta.json'), meta).catch(() => undefined);
      this.log.warn({ weaver: id, reason }, 'weaver failed to start');
      this.setLive(id, { status: 'failed', reason, abort: undefined });
    };
    try {
      // 1. image
      if (isBuiltinImage(spec.image) && !(await this.images.get(spec.image))) await this.ensureDefault();
      let resolved;
      try {
        resolved = await this.images.resolve(spec.image, this.ids.base);
      } catch (e) {
        return await fail(errorMessage(e), `loom: ${errorMessage(e)}`);
      }
      if (signal.aborted) return;
      const lower = resolved.rootfs;
      phase('image');
      // 2. user
      const user = await resolveUser(resolved.config, lower);
      if ('error' in user) return await fail(user.error, `loom: ${user.error}`);
      // 3. root filesystem: an active layer on the image, or on a snapshot for a fork
      const rootfs = join(dir, 'rootfs');
      const tm = Date.now();
      let parent: string;
      if (spec.fromSnapshot) {
        parent = snapshotLayer(spec.fromSnapshot);
        if (!this.layers.stat(parent)) return await fail(`snapshot ${spec.fromSnapshot} has no layer on this machine`);
      } else {
        parent = this.ids.base > 0 ? `image/${resolved.image.digest}@u${this.ids.base}` : `image/${resolved.image.digest}`;
        await this.layers.importRef(parent, lower, { image: resolved.image.name });
      }
      meta.layout = 'layers';
      await writeJsonAtomic(join(dir, 'meta.json'), meta);
      await this.layers.prepare(weaverLayer(id), parent, { weaver: id });
      await fsp.mkdir(rootfs, { recursive: true });
      await this.layers.mount(weaverLayer(id), rootfs);
      const materializeMs = Date.now() - tm;
      phase('layer');
      if (signal.aborted) return;
      const home = await prepareRootfs(rootfs, meta.hostname, user, this.opts.network === 'slirp4netns', this.ids);
      phase('rootfsFiles');
      // 4. workspace (+ clone), inside the layer; a fork keeps the one it inherited
      const workspace = join(rootfs, 'workspace');
      const wsStat = await fsp.lstat(workspace);
      if (!wsStat.isDirectory()) return await fail('the image\'s /workspace is not a directory');
      if (!spec.fromSnapshot) await fsp.chown(workspace, hostId(this.ids, user.uid), hostId(this.ids, user.gid));
      let cwd = resolved.config.workingDir || '/workspace';
      if (spec.repo && !spec.fromSnapshot) {
        const source = this.gitToken;
        const repo = spec.repo;
        const tokenSource = source ? () => source({ id, orgId: spec.orgId, repo, ...(spec.gitSecret ? { secretName: spec.gitSecret } : {}) }) : undefined;
        let r;
        try {
          r = await cloneRepo(repo, spec.branch, workspace, hostId(this.ids, user.uid), hostId(this.ids, user.gid), this.opts.git, tokenSource);
        } catch (e) {
          return await fail(`git clone failed: ${errorMessage(e)}`, `loom: git clone failed: ${errorMessage(e)}`);
        }
        if (signal.aborted) return;
        if (!r.ok) {
          const reason = `git clone failed: ${r.message}`;
          return await fail(reason, `loom: ${reason}`);
        }
      }
      if (spec.repo) cwd = `/workspace/${repoName(spec.repo)}`;
      // 5. OCI config
      const args = spec.command?.length ? spec.command : [...resolved.config.entrypoint, ...resolved.config.cmd];
      if (args.length === 0) return await fail(`image ${spec.image} has no command and none was given`);
      const env: Record<string, string> = {};
      for (const kv of resolved.config.env) {
        const i = kv.indexOf('=');
        if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
      }
      Object.assign(env, { HOME: home, USER: user.name, LOGNAME: user.name, LOOM_WEAVER_ID: id }, spec.env);
      const oci = buildOciSpec({
        rootfs,
        args,
        env,
        cwd,
        uid: user.uid,
        gid: user.gid,
        terminal: true,
        hostname: meta.hostname,
        cgroupsPath: `/loom/${id}`,
        cpu: spec.resources.cpu || this.opts.defaultCpu || undefined,
        memory: spec.resources.memory || this.opts.defaultMemory || undefined,
        pidsLimit: this.opts.pidsLimit ?? 1024,
        consoleSize: { cols: 80, rows: 24 },
        usernsBase: this.ids.base,
      });
      const hookCtx = this.hookContext(spec.id, spec);
      await this.hooks.spec(hookCtx, oci, (h) => join(dir, 'hooks', h));
      await fsp.writeFile(files.config, JSON.stringify(oci));
      phase('spec');
      // 6. create under conmon, network, hooks, start
      let pid: number;
      try {
        ({ pid } = await this.rt().create({ id, bundle: dir, terminal: true, exitDir: this.exitDir }));
      } catch (e) {
        return await fail(`container create failed: ${errorMessage(e)}`);
      }
      phase('create');
      if (signal.aborted) return;
      // Outbound network (slirp4netns + the weaver's firewall) is the 'outbound' runtime hook (outbound.ts).
      try {
        await this.hooks.created({ ...hookCtx, pid, cgroupsPath: oci.linux.cgroupsPath }, (h) => join(dir, 'hooks', h));
      } catch (e) {
        return await fail(`container setup failed: ${errorMessage(e)}`);
      }
      if (signal.aborted) return;
      try {
        phase('createdHooks');
        await this.rt().start(id);
      } catch (e) {
        return await fail(`container start failed: ${errorMessage(e)}`);
      }
      phase('start');
      if (signal.aborted) return;
      const startedAt = new Date();
      meta.phase = 'started';
      meta.startedAt = startedAt.toISOString();
      await writeJsonAtomic(join(dir, 'meta.json'), meta);
      phase('meta');
      this.log.info({ weaver: id, image: resolved.image.name, ms: Date.now() - t0, materializeMs, phases }, 'weaver running');
      this.setLive(id, { status: 'running', startedAt, abort: undefined });
      void this.checkExit(id); // a process that exits at once
    } catch (e) {
      await fail(`provisioning failed: ${errorMessage(e)}`);
    }
  }

  /** Bytes on disk of the weaver's upper layer and workspace (du, one filesystem, no symlinks followed). */
  async diskUsage(id: string): Promise<number | null> {
    let dir: string;
    try {
      dir = this.dir(id);
    } catch {
      return null;
    }
    // On layers, everything the weaver wrote (/workspace included) is its active layer's upper.
    const meta = await readJson<WeaverMeta>(join(dir, 'meta.json'));
    if (meta?.layout === 'layers') {
      if (!this.layers.stat(weaverLayer(id))) return null;
      return (await this.layers.usage(weaverLayer(id))).bytes;
    }
    const paths = [join(dir, 'layer', 'upper'), join(dir, 'workspace')];
    const present: string[] = [];
    for (const p of paths) if (await exists(p)) present.push(p);
    if (present.length === 0) return null;
    const r = await run('du', ['-sxB1', '--', ...present], { timeoutMs: 60_000 });
    if (r.code !== 0 && !r.stdout) return null;
    return r.stdout.split('\n').reduce((sum, l) => sum + (Number(l.split('\t')[0]) || 0), 0);
  }

  // ---------------------------------------------------------------- read

  async get(id: string): Promise<BackendWeaver | null> {
    let dir: string;
    try {
      dir = this.dir(id);
    } catch {
      return null;
    }
    const l = this.live.get(id);
    if (l && (l.status === 'pending' || FINAL.has(l.status))) return toBackend(l);
    const meta = await readJson<WeaverMeta>(join(dir, 'meta.json'));
    if (!meta) return l ? toBackend(l) : null;
    return this.derive(meta, await this.rt().state(id));
  }

  async list(): Promise<BackendWeaver[]> {
    await this.start();
    // The runtime root is shared with seed containers: only states whose bundle is a weaver's are ours.
    const states = new Map((await this.rt().list()).filter((s) => s.bundle.startsWith(`${this.weaversDir}/`)).map((s) => [s.id, s]));
    let ids: string[] = [];
    try {
      ids = await fsp.readdir(this.weaversDir);
    } catch {
      /* none */
    }
    const out: BackendWeaver[] = [];
    for (const id of ids) {
      const l = this.live.get(id);
      if (l && (l.status === 'pending' || FINAL.has(l.status))) {
        out.push(toBackend(l));
        continue;
      }
      const meta = await readJson<WeaverMeta>(join(this.weaversDir, id, 'meta.json'));
      if (meta) out.push(await this.derive(meta, states.get(id) ?? null));
    }
    return out;
  }

  private async derive(meta: WeaverMeta, st: RuntimeState | null): Promise<BackendWeaver> {
    const base = { id: meta.id, ...(meta.startedAt ? { startedAt: new Date(meta.startedAt) } : {}) };
    if (meta.phase === 'failed') return { ...base, status: 'failed', reason: meta.reason ?? 'failed' };
    const code = await ContainerRuntime.exitCode(this.exitDir, meta.id);
    if (code !== null) return { ...base, status: code === 0 ? 'succeeded' : 'failed', exitCode: code, reason: `exited with code ${code}` };
    if (meta.phase === 'creating') {
      return this.live.has(meta.id) ? { ...base, status: 'pending' } : { ...base, status: 'failed', reason: 'interrupted while starting' };
    }
    if (st && (st.status === 'running' || st.status === 'paused')) return { ...base, status: 'running' };
    if (st && st.status === 'created') return { ...base, status: 'pending' };
    return { ...base, status: 'failed', reason: st ? 'container stopped (exit code unknown)' : 'container is gone' };
  }

  // ---------------------------------------------------------------- attach / logs

  async attach(id: string, size?: { cols: number; rows: number }): Promise<TerminalStream> {
    await this.start();
    const dir = this.dir(id);
    const w = await this.get(id);
    if (!w) throw new LoomError(404, 'not_found', `weaver ${id} not found`);
    if (w.status !== 'running') throw new LoomError(409, 'not_running', `weaver ${id} is ${w.status}${w.reason ? ` (${w.reason})` : ''}`);
    const rt = this.rt();
    if (size) await rt.resize(dir, size.cols, size.rows).catch(() => undefined);
    return openTerminalStream({
      relay: this.relay!,
      socketPath: bundleFiles(dir).attach,
      resize: (cols, rows) => rt.resize(dir, cols, rows),
      exitCode: async () => {
        for (let i = 0; i < 40; i++) {
          const c = await ContainerRuntime.exitCode(this.exitDir, id);
          if (c !== null) {
            void this.checkExit(id);
            return c;
          }
          await sleep(50);
        }
        return undefined;
      },
    });
  }

  async exec(id: string, req: ExecRequest): Promise<ExecProcess> {
    await this.start();
    const dir = this.dir(id);
    // A weaver we watch as running needs no `runc state` round trip (runc exec refuses a stopped one anyway).
    if (this.live.get(id)?.status !== 'running') {
      const w = await this.get(id);
      if (!w) throw new LoomError(404, 'not_found', `weaver ${id} not found`);
      if (w.status !== 'running') throw new LoomError(409, 'weaver_not_running', `weaver ${id} is ${w.status}${w.reason ? ` (${w.reason})` : ''}`);
    }
    return localExec({ runtime: this.rt(), helper: this.execHelper!, id, bundle: dir, scratchRoot: join(this.base, 'x'), req });
  }

  toolbox(): string[] {
    return [TOOLBOX];
  }

  logs(id: string, opts: LogOptions): AsyncIterable<Buffer> {
    const dir = this.dir(id);
    const file = bundleFiles(dir).log;
    const ended = async () => (await ContainerRuntime.exitCode(this.exitDir, id)) !== null || !(await exists(dir)) || (await readJson<WeaverMeta>(join(dir, 'meta.json')))?.phase === 'failed';
    const self = this;
    return (async function* () {
      if (!(await exists(dir)) && !self.live.has(id)) throw new LoomError(404, 'not_found', `weaver ${id} not found`);
      if (!opts.follow) {
        for (const chunk of await readLogTail(file, opts.tail)) yield chunk;
        return;
      }
      yield* followLog(file, opts.tail, ended, opts.signal);
    })();
  }

  // ---------------------------------------------------------------- delete / reconcile

  async delete(id: string): Promise<void> {
    await this.start();
    let dir: string;
    try {
      dir = this.dir(id);
    } catch {
      return;
    }
    const l = this.live.get(id);
    l?.abort?.abort();
    if (l?.provisioning) await l.provisioning;
    await this.mutex.run(id, () => this.destroy(id, dir));
    this.live.delete(id);
    this.lastEmitted.delete(id);
  }

  private hookContext(id: string, spec?: Pick<WeaverSpec, 'orgId' | 'ownerUserId'>): Omit<HookContext, 'stateDir'> {
    return { id, kind: 'weaver', ...(spec ? { orgId: spec.orgId, ownerUserId: spec.ownerUserId } : {}) };
  }

  /** Unmounts the weaver's root filesystem and drops its active layer (or an earlier release's upper). */
  private async releaseRootfs(id: string, dir: string, meta: WeaverMeta | null): Promise<void> {
    if (meta && !meta.layout) {
      await this.materializer.release(join(dir, 'layer'), join(dir, 'rootfs')).catch(() => undefined);
      return;
    }
    await unmountAll(join(dir, 'rootfs'));
    await this.layers.remove(weaverLayer(id)).catch((e) => this.log.error({ weaver: id, err: errorMessage(e) }, 'removing the weaver layer failed'));
  }

  // ---------------------------------------------------------------- snapshots of weavers

  /**
   * Commits what the weaver's active layer holds now into the committed layer snapshot/<id>
   * (a copy of the upper only: what the weaver changed). Crash-consistent by default: the upper
   * is copied while the weaver runs, so each file is as it was at some moment of the copy;
   * `freeze` holds every process in the cgroup freezer for the copy (recorded first, so a crash
   * mid-freeze is thawed at the next start). The weaver keeps running either way.
   */
  async snapshot(id: string, snapshotId: string, opts: { freeze: boolean; signal?: AbortSignal }): Promise<LayerSnapshotResult> {
    await this.start();
    const dir = this.dir(id);
    return this.mutex.run(`snap:${id}`, async () => {
      const meta = await readJson<WeaverMeta>(join(dir, 'meta.json'));
      if (!meta || meta.phase !== 'started') throw new LoomError(409, 'WEAVER_NOT_RUNNING', `weaver ${id} is not running`);
      if (!meta.layout) throw new LoomError(409, 'WEAVER_NOT_LAYERED', `weaver ${id} was created by an earlier release and has no layer to snapshot; recreate it`);
      // The exit watcher's view spares a runtime call (a process spawn) on the fork path; a freeze
      // needs the runtime's own state, and so does a weaver not adopted yet.
      if (opts.freeze || this.live.get(id)?.status !== 'running') {
        const st = await this.rt().state(id);
        if (!st || (st.status !== 'running' && st.status !== 'paused')) throw new LoomError(409, 'WEAVER_NOT_RUNNING', `weaver ${id} is not running`);
      }
      const name = snapshotLayer(snapshotId);
      const copy = () => this.layers.snapshot(name, weaverLayer(id), { weaver: id }, opts.signal ? { signal: opts.signal } : {});
      let frozenMs: number | null = null;
      let info;
      if (opts.freeze) {
        const t0 = performance.now();
        await this.rt().freeze(id, `snapshot ${snapshotId}`);
        try {
          info = await copy();
          if (this.opts.testDelayMs) await sleep(this.opts.testDelayMs);
        } finally {
          await this.rt().thaw(id).catch((e) => this.log.error({ weaver: id, err: errorMessage(e) }, 'thaw after snapshot failed'));
          frozenMs = Math.round((performance.now() - t0) * 100) / 100;
        }
      } else {
        info = await copy();
        if (this.opts.testDelayMs) await sleep(this.opts.testDelayMs);
      }
      return { bytes: info.usage?.bytes ?? 0, inodes: info.usage?.inodes ?? 0, strategy: info.strategy ?? 'copy', frozenMs };
    });
  }

  /** Removes a snapshot's layer; 409 SNAPSHOT_IN_USE while weavers run on it. Unknown ids are a no-op. */
  async removeSnapshot(snapshotId: string): Promise<void> {
    await this.start();
    await this.layers.remove(snapshotLayer(snapshotId));
  }

  /** Snapshot layers no record knows (a crash between the copy and the record) go, unless something stacks on them. */
  async pruneSnapshots(knownIds: string[]): Promise<string[]> {
    await this.start();
    const known = new Set(knownIds.map(snapshotLayer));
    const gone: string[] = [];
    for (const l of this.layers.list().reverse()) {
      if (!l.key.startsWith('snapshot/') || known.has(l.key) || this.layers.children(l.key).length) continue;
      await this.layers.remove(l.key);
      gone.push(l.key.slice('snapshot/'.length));
    }
    return gone;
  }

  private async destroy(id: string, dir: string): Promise<void> {
    await stopSlirp(join(dir, 'slirp.pid'));
    await this.rt().remove(id, dir, this.opts.stopGraceMs ?? 2000);
    await this.releaseRootfs(id, dir, await readJson<WeaverMeta>(join(dir, 'meta.json')));
    await unmountAll(dir);
    for (const f of await this.hooks.removed(this.hookContext(id), (h) => join(dir, 'hooks', h))) {
      this.log.warn({ weaver: id, hook: f.hook, err: errorMessage(f.error) }, 'runtime hook failed on removal');
    }
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.rm(join(this.exitDir, id), { force: true });
  }

  async reconcile(knownIds: string[]): Promise<ReconcileReport> {
    await this.start();
    const known = new Set(knownIds);
    for (const l of this.live.values()) known.add(l.id); // ours, in flight
    const report: ReconcileReport = { adopted: [], orphansRemoved: [], missing: [] };
    // The runtime root is shared with seed containers: only states whose bundle is a weaver's are ours.
    const states = new Map((await this.rt().list()).filter((s) => s.bundle.startsWith(`${this.weaversDir}/`)).map((s) => [s.id, s]));
    let dirs: string[] = [];
    try {
      dirs = await fsp.readdir(this.weaversDir);
    } catch {
      /* none */
    }
    const all = new Set([...states.keys(), ...dirs, ...knownIds]);
    for (const id of all) {
      let dir: string;
      try {
        dir = this.dir(id);
      } catch {
        continue;
      }
      if (!known.has(id)) {
        await this.mutex.run(id, () => this.destroy(id, dir)).catch((e) => this.log.warn({ weaver: id, err: errorMessage(e) }, 'orphan cleanup failed'));
        report.orphansRemoved.push(id);
        continue;
      }
      const l = this.live.get(id);
      if (l && (l.status === 'pending' || l.status === 'running' || FINAL.has(l.status))) {
        if (l.status === 'running') void this.checkExit(id);
        report.adopted.push(id);
        continue;
      }
      const meta = await readJson<WeaverMeta>(join(dir, 'meta.json'));
      const st = states.get(id) ?? null;
      if (!meta) {
        if (st) await this.mutex.run(id, () => this.destroy(id, dir)).catch(() => undefined);
        report.missing.push(id);
        continue;
      }
      const w = await this.derive(meta, st);
      if (w.status === 'running') {
        this.live.set(id, { id, status: 'running', ...(w.startedAt ? { startedAt: w.startedAt } : {}) });
        this.lastEmitted.set(id, 'running|');
        report.adopted.push(id);
        void this.checkExit(id);
      } else if (FINAL.has(w.status) && (w.exitCode !== undefined || meta.phase === 'failed')) {
        // Exited (or failed) while nobody watched: report it through watch().
        this.live.set(id, { id, status: w.status, ...(w.reason ? { reason: w.reason } : {}), ...(w.exitCode !== undefined ? { exitCode: w.exitCode } : {}) });
        report.adopted.push(id);
        this.emit(w);
      } else {
        // Interrupted mid-create, or the container vanished: nothing to adopt.
        await this.mutex.run(id, () => this.destroy(id, dir)).catch(() => undefined);
        report.missing.push(id);
      }
    }
    // Active layers whose weaver is gone altogether (its directory removed before the layer was).
    const keep = new Set([...known, ...report.adopted]);
    for (const l of this.layers.list()) {
      const wid = l.key.startsWith('weaver/') ? l.key.slice('weaver/'.length) : null;
      if (!wid || keep.has(wid) || (await exists(join(this.weaversDir, wid)))) continue;
      await this.layers.remove(l.key).catch((e) => this.log.warn({ layer: l.key, err: errorMessage(e) }, 'removing an orphan layer failed'));
      report.orphansRemoved.push(wid);
    }
    this.log.info({ adopted: report.adopted.length, orphansRemoved: report.orphansRemoved.length, missing: report.missing.length }, 'reconciled local weavers');
    return report;
  }

  async health(): Promise<BackendHealth> {
    try {
      await this.start();
      const rt = this.rt();
      const n = (await rt.list()).length;
      return { ok: true, backend: 'local', detail: `${rt.info.name} ${rt.info.version} under conmon; ${n} container(s)` };
    } catch (e) {
      return { ok: false, backend: 'local', detail: errorMessage(e) };
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.unwatchExits?.();
    this.unwatchExits = null;
    if (this.stackStarted) this.stack.close();
    this.stackStarted = false;
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.listeners.clear();
  }
}

function toBackend(l: Live): BackendWeaver {
  return {
    id: l.id,
    status: l.status,
    ...(l.reason ? { reason: l.reason } : {}),
    ...(l.exitCode !== undefined ? { exitCode: l.exitCode } : {}),
    ...(l.startedAt ? { startedAt: l.startedAt } : {}),
  };
}

interface PasswdEntry { name: string; uid: number; gid: number; home: string }

async function readPasswd(rootfs: string): Promise<PasswdEntry[]> {
  try {
    const text = await fsp.readFile(join(rootfs, 'etc/passwd'), 'utf8');
    return text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => {
      const f = l.split(':');
      return { name: f[0] ?? '', uid: Number(f[2]), gid: Number(f[3]), home: f[5] ?? '/' };
    }).filter((e) => Number.isInteger(e.uid));
  } catch {
    return [];
  }
}

/**
 * The image's User when it names a non-root user; otherwise 1000:1000 ("a non-root user inside by
 * default"). A name is looked up in the image's /etc/passwd.
 */
async function resolveUser(cfg: ImageRunConfig, rootfs: string): Promise<{ uid: number; gid: number; name: string } | { error: string }> {
  const passwd = await readPasswd(rootfs);
  const byUid = (uid: number) => passwd.find((p) => p.uid === uid);
  const spec = cfg.user.trim();
  let uid = 1000;
  let gid = 1000;
  if (spec && !/^(0|root)(:.*)?$/.test(spec)) {
    const [u, g] = spec.split(':');
    if (/^\d+$/.test(u!)) {
      uid = Number(u);
      gid = byUid(uid)?.gid ?? uid;
    } else {
      const e = passwd.find((p) => p.name === u);
      if (!e) return { error: `image user ${JSON.stringify(u)} is not in the image's /etc/passwd` };
      uid = e.uid;
      gid = e.gid;
    }
    if (g !== undefined && /^\d+$/.test(g)) gid = Number(g);
  }
  return { uid, gid, name: byUid(uid)?.name ?? 'loom' };
}

/** Per-weaver files in the (copy-on-write) root: /etc/hostname, /etc/hosts, a passwd entry, /workspace. */
async function prepareRootfs(rootfs: string, hostname: string, user: { uid: number; gid: number; name: string }, slirp: boolean, ids: IdMap): Promise<string> {
  const home = await writeRootfsFiles(rootfs, hostname, user, slirp);
  // What was written here is owned by the namespace's root, not the host's.
  const root = hostId(ids, 0);
  // Independent inodes: in parallel (this is on every start's and fork's path).
  await Promise.all(['.', 'etc', 'etc/hostname', 'etc/hosts', 'etc/passwd', 'workspace', ...(slirp ? ['etc/resolv.conf'] : [])].map((f) => fsp.lchown(join(rootfs, f), root, root).catch(() => undefined)));
  return home;
}

async function writeRootfsFiles(rootfs: string, hostname: string, user: { uid: number; gid: number; name: string }, slirp: boolean): Promise<string> {
  const etc = join(rootfs, 'etc');
  // An image is untrusted: never write through a symlink that could point out of the rootfs.
  const etcStat = await fsp.lstat(etc).catch(() => null);
  if (etcStat?.isSymbolicLink()) throw new Error('the image\'s /etc is a symlink');
  if (!etcStat) await fsp.mkdir(etc);
  const [, , , , passwd] = await Promise.all([
    fsp.mkdir(join(rootfs, 'workspace'), { recursive: true }),
    replaceFile(join(etc, 'hostname'), `${hostname}\n`),
    replaceFile(join(etc, 'hosts'), `127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t${hostname}\n`),
    slirp ? replaceFile(join(etc, 'resolv.conf'), SLIRP_RESOLV_CONF) : undefined,
    readPasswd(rootfs),
  ]);
  const entry = passwd.find((p) => p.uid === user.uid);
  if (entry) return entry.home || '/workspace';
  const pw = await fsp.lstat(join(etc, 'passwd')).catch(() => null);
  if (pw && !pw.isFile()) throw new Error('the image\'s /etc/passwd is not a regular file');
  await fsp.appendFile(join(etc, 'passwd'), `${user.name}:x:${user.uid}:${user.gid}:${user.name}:/workspace:/bin/sh\n`);
  return '/workspace';
}

/** Replaces a file even when the image has it as a symlink (never follow links out of the rootfs). */
async function replaceFile(path: string, content: string): Promise<void> {
  await fsp.rm(path, { force: true });
  await fsp.writeFile(path, content);
}

async function appendLogLine(file: string, text: string): Promise<void> {
  const ts = new Date().toISOString().replace('Z', '000000+00:00');
  await fsp.appendFile(file, `${ts} stderr F ${text}\n`);
}
