/**
 * Where branching state lives on disk and how a container is run.
 *
 * <dataDir>/branching/
 *   containers/<id>/        the OCI bundle: config.json, conmon's files (ctr.log, pidfile, attach, …)
 *   containers/<id>/vol/    the container's volume — a btrfs subvolume when the data dir is btrfs —
 *        vol/rootfs/        holding its root filesystem
 *   snapshots/<id>/         a snapshot: a copy (btrfs: a subvolume snapshot) of a volume, so
 *        <id>/rootfs/       the same shape again
 *   runc/                   the OCI runtime's --root (state of branching containers only)
 *   exits/<id>              conmon exit files
 *
 * Every tree copy (registration, snapshot, clone, fork) goes through the copy primitive
 * (copy.ts): on btrfs a snapshot of a volume is one subvolume-snapshot ioctl, elsewhere a
 * reflink copy (XFS) or a plain copy (ext4).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { LoomError, errorMessage } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { ContainerRuntime, bundleFiles, detectRuntime, readPid, type RuntimeInfo } from '../provisioners/local/runtime.js';
import { buildOciSpec } from '../provisioners/local/spec.js';
import { grantSearch, shiftOwnership } from '../provisioners/local/idmap.js';
import { copyTree, createSubvolume, fsType, removeTree, type CopyProgress, type CopyResult } from './copy.js';
import type { ContainerRow } from './store.js';

export const MEMORY_DOWNGRADE_NO_CRIU = 'memory_state: CRIU unavailable; filesystem state only';
export const MEMORY_DOWNGRADE_NOT_IMPLEMENTED = 'memory_state: process checkpointing not implemented; filesystem state only';

export interface Layout {
  root: string;
  containers: string;
  snapshots: string;
  runc: string;
  exits: string;
  tmp: string;
}

export function layoutOf(dataDir: string): Layout {
  const root = join(dataDir, 'branching');
  return {
    root,
    containers: join(root, 'containers'),
    snapshots: join(root, 'snapshots'),
    runc: join(root, 'runc'),
    exits: join(root, 'exits'),
    tmp: join(root, 'tmp'),
  };
}

export interface ContainerLimits {
  cpu: string;
  memory: string;
  pidsLimit: number;
}

export class ContainerHost {
  readonly layout: Layout;
  private runtime: ContainerRuntime | null = null;
  private runtimeError: string | null = null;
  private btrfs = false;
  /** The downgrade every snapshot reports (memory state is never captured). */
  memoryDowngrade = MEMORY_DOWNGRADE_NO_CRIU;
  info: RuntimeInfo | null = null;

  constructor(
    readonly dataDir: string,
    private readonly log: Logger,
    private readonly runtimePref: 'auto' | 'runc' | 'crun',
    /** cgroup limits of every branching container (the weaver defaults). */
    private readonly limits: ContainerLimits = { cpu: '1', memory: '1Gi', pidsLimit: 1024 },
    /** Host id that id 0 of every container maps to (the weavers' range); 0: no user namespace. */
    readonly usernsBase = 0,
  ) {
    this.layout = layoutOf(dataDir);
  }

  async start(): Promise<void> {
    for (const d of [this.layout.root, this.layout.containers, this.layout.snapshots, this.layout.runc, this.layout.exits, this.layout.tmp]) await fsp.mkdir(d, { recursive: true });
    if (this.usernsBase > 0) for (const d of [this.dataDir, this.layout.root, this.layout.containers]) await grantSearch(d, this.usernsBase);
    try {
      this.btrfs = fsType(this.layout.root) === 'btrfs';
    } catch (e) {
      this.log.warn({ err: errorMessage(e) }, 'cannot determine the data dir filesystem');
    }
    try {
      this.info = await detectRuntime(this.runtimePref, this.layout.tmp);
      this.runtime = new ContainerRuntime(this.info, this.layout.runc);
      const thawed = await this.runtime.thawRecorded();
      if (thawed.thawed.length) this.log.warn({ containers: thawed.thawed }, 'thawed containers left frozen by an interrupted snapshot');
      for (const f of thawed.failed) this.log.error({ container: f.id, err: f.error }, 'thawing a container left frozen failed');
    } catch (e) {
      this.runtimeError = errorMessage(e);
      this.log.warn({ err: this.runtimeError }, 'branching: no OCI runtime; containers cannot run (snapshots still work)');
    }
    this.memoryDowngrade = (await criuWorks()) ? MEMORY_DOWNGRADE_NOT_IMPLEMENTED : MEMORY_DOWNGRADE_NO_CRIU;
    this.log.info({ runtime: this.info?.name ?? null, btrfs: this.btrfs, memory: this.memoryDowngrade }, 'branching ready');
  }

  get isBtrfs(): boolean {
    return this.btrfs;
  }

  rt(): ContainerRuntime {
    if (!this.runtime) throw new LoomError(503, 'RUNTIME_UNAVAILABLE', `no OCI runtime available: ${this.runtimeError ?? 'not started'}`);
    return this.runtime;
  }

  bundle(id: string): string {
    return join(this.layout.containers, id);
  }
  vol(id: string): string {
    return join(this.layout.containers, id, 'vol');
  }
  rootfs(id: string): string {
    return join(this.layout.containers, id, 'vol', 'rootfs');
  }
  snapshotDir(id: string): string {
    return join(this.layout.snapshots, id);
  }

  /** An empty volume directory: a btrfs subvolume when the data dir is btrfs (so snapshots of it are ioctls). */
  async makeVolume(path: string): Promise<void> {
    if (this.btrfs) await createSubvolume(path);
    else await fsp.mkdir(path);
  }

  /** The bundle and an empty volume for a new container (its rootfs/ not yet made). */
  async prepareVolume(id: string): Promise<void> {
    await fsp.mkdir(this.bundle(id), { recursive: true });
    await this.makeVolume(this.vol(id));
    await this.grantPath(id);
  }

  /** The namespace's root must be able to search the bundle and volume on the way to the rootfs. */
  private async grantPath(id: string): Promise<void> {
    if (this.usernsBase > 0) for (const d of [this.bundle(id), this.vol(id)]) await grantSearch(d, this.usernsBase);
  }

  /** Registration: a new volume with a copy of a checked directory (import root or image) as rootfs. */
  async materializeFromPath(id: string, src: string, signal: AbortSignal, onProgress?: (p: CopyProgress) => void): Promise<CopyResult> {
    await this.prepareVolume(id);
    return copyTree(src, this.rootfs(id), { signal, ...(onProgress ? { onProgress } : {}) });
  }

  /** After a rootfs is written from outside (path, image, archive): make it fit to run. */
  async finishRootfs(id: string): Promise<void> {
    // A new rootfs (a copy of a path or image, an unpacked archive) is owned by host ids: shift it
    // into the namespace's range. Clones copy snapshots of containers, already shifted.
    await shiftOwnership(this.rootfs(id), this.usernsBase);
  }

  /** Clone: the container's volume becomes a copy of the snapshot's tree. */
  async materializeFromSnapshot(id: string, snapshotId: string, signal: AbortSignal, onProgress?: (p: CopyProgress) => void): Promise<CopyResult> {
    await fsp.mkdir(this.bundle(id), { recursive: true });
    const r = await copyTree(this.snapshotDir(snapshotId), this.vol(id), { signal, ...(onProgress ? { onProgress } : {}) });
    await this.grantPath(id);
    return r;
  }

  /** Removes the container's bundle and volume (the runtime container must be gone). */
  async removeFiles(id: string): Promise<void> {
    await removeTree(this.vol(id));
    await fsp.rm(this.bundle(id), { recursive: true, force: true });
    await fsp.rm(join(this.layout.exits, id), { force: true });
  }

  /** Creates and starts the container's process (runtime create under conmon, then start). */
  async run(c: ContainerRow): Promise<void> {
    const rt = this.rt();
    const bundle = this.bundle(c.id);
    // A container that ran before (killed or exited) still has a runtime record: start afresh.
    if (await rt.state(c.id)) await rt.remove(c.id, bundle, 1000);
    for (const f of ['attach', 'ctl', 'winsz', 'pidfile', 'conmon.pid']) await fsp.rm(join(bundle, f), { force: true });
    const spec = buildOciSpec({
      rootfs: this.rootfs(c.id),
      args: JSON.parse(c.command) as string[],
      env: JSON.parse(c.env) as Record<string, string>,
      cwd: '/',
      uid: 0,
      gid: 0,
      terminal: false,
      hostname: `loom-${c.id.slice(0, 8)}`,
      cgroupsPath: `/loom/branching-${c.id}`,
      cpu: this.limits.cpu,
      memory: this.limits.memory,
      pidsLimit: this.limits.pidsLimit,
      usernsBase: this.usernsBase,
    });
    await fsp.writeFile(bundleFiles(bundle).config, JSON.stringify(spec, null, 2));
    try {
      await rt.create({ id: c.id, bundle, terminal: false, exitDir: this.layout.exits });
      await rt.start(c.id);
    } catch (e) {
      await rt.remove(c.id, bundle, 500).catch(() => undefined);
      throw new LoomError(422, 'CONTAINER_START_FAILED', `cannot start the container: ${errorMessage(e)}`);
    }
  }

  /** Stops the process: SIGTERM, SIGKILL after graceMs. Leaves the rootfs and the runtime record. */
  async kill(id: string, graceMs = 2000): Promise<boolean> {
    return this.rt().stop(id, graceMs);
  }

  /** Stops and forgets the runtime container and its conmon. Idempotent. */
  async removeRuntime(id: string): Promise<void> {
    if (!this.runtime) return;
    await this.runtime.remove(id, this.bundle(id), 1000);
  }

  /** The exit code conmon recorded, or null while the process runs. */
  exitCode(id: string): Promise<number | null> {
    return ContainerRuntime.exitCode(this.layout.exits, id);
  }

  /** Is the container's process alive (runtime state running or paused)? */
  async isRunning(id: string): Promise<boolean> {
    if (!this.runtime) return false;
    const st = await this.runtime.state(id);
    return !!st && (st.status === 'running' || st.status === 'paused');
  }

  async conmonPid(id: string): Promise<number | null> {
    return readPid(bundleFiles(this.bundle(id)).conmonPidFile);
  }

  /** The path of the container's log (conmon k8s-file format). */
  logPath(id: string): string {
    return bundleFiles(this.bundle(id)).log;
  }
}

let criuResult: Promise<boolean> | null = null;

/** Runs `criu check` once; false when criu is absent or fails (as on the development machine). */
export function criuWorks(): Promise<boolean> {
  criuResult ??= (async () => {
    const { run } = await import('../provisioners/local/util.js');
    try {
      const r = await run('criu', ['check'], { timeoutMs: 15_000 });
      return r.code === 0;
    } catch {
      return false;
    }
  })();
  return criuResult;
}
