/**
 * Seed containers (POST /api/containers) on the one local runtime stack (stack.ts): the same runc
 * root, exit watcher, snapshotter and OCI spec builder as weavers. Implements branching's
 * ContainerStack seam; branching never sees these paths.
 *
 * <dataDir>/local/containers/<id>/  bundle: config.json, conmon's files, rootfs/ (the mount of
 *                                   the active layer container/<id>)
 * Layers (one store with the weavers'):
 *   base/<id>        the registered tree, copied once, owned in the user namespace's id range
 *   container/<id>   the container's active layer, on base/<id> or on snapshot/<sid> (a clone)
 *   snapshot/<sid>   a commit of a container's (or weaver's) active layer; parent = that layer's parent
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { LoomError, errorMessage, isLoomError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { ContainerStack, SnapshotCopy } from '../../branching/stack.js';
import { ContainerRuntime, bundleFiles, readPid } from './runtime.js';
import { removeTree } from '../../branching/copy.js';
import { exists, run } from './util.js';
import { buildOciSpec } from './spec.js';
import { grantSearch, shiftOwnership } from './idmap.js';
import { LocalStack } from './stack.js';
import { mountsUnder, unmountAll } from './rootfs.js';

export const containerLayer = (id: string): string => `container/${id}`;
export const baseLayer = (id: string): string => `base/${id}`;
export const snapshotLayer = (id: string): string => `snapshot/${id}`;

export interface SeedContainerOptions {
  dataDir: string;
  log: Logger;
  runtime: 'auto' | 'runc' | 'crun';
  /** cgroup limits of every seed container (the weaver defaults). */
  limits: { cpu: string; memory: string; pidsLimit: number };
  /** Host id that id 0 of every container maps to (the weavers' range); 0: no user namespace. */
  usernsBase: number;
  /** Test hook: held inside a snapshot's freeze, after the copy. */
  testDelayMs?: number;
}

export const MEMORY_DOWNGRADE_NO_CRIU = 'memory_state: CRIU unavailable; filesystem state only';
export const MEMORY_DOWNGRADE_NOT_IMPLEMENTED = 'memory_state: process checkpointing not implemented; filesystem state only';

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export class SeedContainers implements ContainerStack {
  private readonly stack: LocalStack;
  private readonly dir: string;
  private started = false;
  memoryDowngrade = MEMORY_DOWNGRADE_NO_CRIU;

  constructor(private readonly o: SeedContainerOptions) {
    this.stack = LocalStack.shared(o.dataDir, o.log, o.runtime);
    this.dir = join(this.stack.base, 'containers');
  }

  get runtimeDescription(): string | null {
    return this.stack.info ? `${this.stack.info.name} ${this.stack.info.version}` : null;
  }

  async start(): Promise<void> {
    await this.stack.start();
    this.started = true;
    await fsp.mkdir(this.dir, { recursive: true });
    if (this.o.usernsBase > 0) for (const d of [this.o.dataDir, this.stack.base, this.dir]) await grantSearch(d, this.o.usernsBase);
    this.memoryDowngrade = (await criuWorks()) ? MEMORY_DOWNGRADE_NOT_IMPLEMENTED : MEMORY_DOWNGRADE_NO_CRIU;
  }

  close(): void {
    if (this.started) this.stack.close();
    this.started = false;
  }

  private bundle(id: string): string {
    if (!ID_RE.test(id)) throw new LoomError(400, 'INVALID_ID', `invalid container id ${JSON.stringify(id)}`);
    return join(this.dir, id);
  }

  private rootfs(id: string): string {
    return join(this.bundle(id), 'rootfs');
  }

  private async makeBundle(id: string): Promise<void> {
    await fsp.mkdir(this.rootfs(id), { recursive: true });
    if (this.o.usernsBase > 0) await grantSearch(this.bundle(id), this.o.usernsBase);
  }

  async register(id: string, src: string, opts: { signal?: AbortSignal; onProgress?: (files: number) => void; shifted?: boolean } = {}): Promise<{ bytes: number; files: number }> {
    const layers = this.stack.layers;
    await this.makeBundle(id);
    const info = await layers.importTree(baseLayer(id), src, { container: id }, opts.signal ? { signal: opts.signal } : {});
    // The copy is owned by host ids: shift it once into the namespace's range, before anything stacks on it.
    if (!opts.shifted) await shiftOwnership(layers.path(baseLayer(id)), this.o.usernsBase);
    opts.onProgress?.(info.usage?.inodes ?? 0);
    await layers.prepare(containerLayer(id), baseLayer(id), { container: id });
    await this.mountRoot(id);
    return { bytes: info.usage?.bytes ?? 0, files: info.usage?.inodes ?? 0 };
  }

  async stagingDir(id: string): Promise<string> {
    const d = join(this.stack.tmpDir, `stage-${id}`);
    this.bundle(id); // checks the id
    await fsp.rm(d, { recursive: true, force: true });
    await fsp.mkdir(d, { recursive: true });
    return d;
  }

  async prepareFromSnapshot(id: string, snapshotId: string): Promise<void> {
    const layers = this.stack.layers;
    await this.makeBundle(id);
    await layers.prepare(containerLayer(id), snapshotLayer(snapshotId), { container: id });
    await this.mountRoot(id);
  }

  /**
   * Mounts the container's layer at its rootfs. The overlay's root directory takes its owner
   * from the (new) upper dir, made by the host's root: it must be the namespace's root, as the
   * registered tree's root was shifted to, or runc's init cannot create /proc and friends.
   */
  private async mountRoot(id: string): Promise<void> {
    await this.stack.layers.mount(containerLayer(id), this.rootfs(id));
    if (this.o.usernsBase > 0) {
      const st = await fsp.stat(this.rootfs(id));
      if (st.uid < this.o.usernsBase) await fsp.lchown(this.rootfs(id), this.o.usernsBase, this.o.usernsBase);
    }
  }

  async ensureMounted(id: string): Promise<void> {
    const layers = this.stack.layers;
    if (!layers.stat(containerLayer(id))) throw new LoomError(409, 'CONTAINER_NO_ROOTFS', `container ${id} has no root filesystem layer`);
    if ((await mountsUnder(this.rootfs(id))).length) return;
    await this.makeBundle(id);
    await this.mountRoot(id);
  }

  async snapshot(containerId: string, snapshotId: string, opts: { freeze: boolean; signal?: AbortSignal }): Promise<SnapshotCopy> {
    const layers = this.stack.layers;
    const copy = () => layers.snapshot(snapshotLayer(snapshotId), containerLayer(containerId), { container: containerId }, opts.signal ? { signal: opts.signal } : {});
    let frozenMs: number | null = null;
    let info;
    if (opts.freeze && (await this.isRunning(containerId))) {
      const rt = this.stack.rt;
      const t0 = performance.now();
      await rt.freeze(containerId, `app-consistent snapshot ${snapshotId}`);
      try {
        info = await copy();
        if (this.o.testDelayMs) await new Promise((r) => setTimeout(r, this.o.testDelayMs));
      } finally {
        await rt.thaw(containerId).catch((e) => this.o.log.error({ container: containerId, err: errorMessage(e) }, 'thaw after snapshot failed'));
        frozenMs = Math.round((performance.now() - t0) * 100) / 100;
      }
    } else {
      info = await copy();
      if (this.o.testDelayMs) await new Promise((r) => setTimeout(r, this.o.testDelayMs));
      if (opts.freeze) frozenMs = 0;
    }
    return { strategy: info.strategy ?? 'copy', files: info.usage?.inodes ?? 0, bytes: info.usage?.bytes ?? 0, frozenMs };
  }

  async removeSnapshot(snapshotId: string): Promise<void> {
    const layers = this.stack.layers;
    const parent = layers.stat(snapshotLayer(snapshotId))?.parent ?? null;
    await layers.remove(snapshotLayer(snapshotId));
    await this.dropUnusedBase(parent);
  }

  /** A base layer whose container is gone goes with the last layer that stacked on it. */
  private async dropUnusedBase(key: string | null): Promise<void> {
    if (!key?.startsWith('base/')) return;
    const layers = this.stack.layers;
    if (layers.stat(containerLayer(key.slice('base/'.length))) || layers.children(key).length) return;
    await layers.remove(key).catch((e) => this.o.log.warn({ layer: key, err: errorMessage(e) }, 'removing an unused base layer failed'));
  }

  async importSnapshot(snapshotId: string, tree: string): Promise<void> {
    const layers = this.stack.layers;
    if (layers.stat(snapshotLayer(snapshotId))) return;
    await layers.importTree(snapshotLayer(snapshotId), tree, { converted: 'tree' });
    if (!(await this.isShifted(tree))) await shiftOwnership(layers.path(snapshotLayer(snapshotId)), this.o.usernsBase);
  }

  /** A tree written by a release with user namespaces is owned in their range already. */
  private async isShifted(tree: string): Promise<boolean> {
    if (this.o.usernsBase === 0) return true;
    return (await fsp.lstat(tree)).uid >= this.o.usernsBase;
  }

  /**
   * Converts what an earlier release kept under <dataDir>/branching (one volume per container
   * under its own runc root, one whole tree per snapshot) into this stack: each container's
   * volume becomes its base layer (copied once), each snapshot tree a committed layer; a container
   * still running under the old runtime root is stopped first (its rootfs is about to move; the
   * caller marks it stopped and it can be resumed). Old files go only after their conversion, so
   * an interrupted upgrade starts again where it was.
   */
  async upgradeLegacy(): Promise<{ containers: string[]; stopped: string[]; snapshots: string[] }> {
    const old = join(this.o.dataDir, 'branching');
    const out = { containers: [] as string[], stopped: [] as string[], snapshots: [] as string[] };
    if (!(await exists(old))) return out;
    const oldRt = new ContainerRuntime(this.stack.rt.info, join(old, 'runc'));
    for (const id of await fsp.readdir(join(old, 'containers')).catch(() => [] as string[])) {
      if (!ID_RE.test(id)) continue;
      const bundle = join(old, 'containers', id);
      const st = await oldRt.state(id);
      if (st) {
        if (st.status === 'running' || st.status === 'paused') out.stopped.push(id);
        await oldRt.remove(id, bundle, 2000);
      }
      const rootfs = join(bundle, 'vol', 'rootfs');
      if (await exists(rootfs)) {
        await this.remove(id); // what an interrupted conversion left
        await this.register(id, rootfs, { shifted: await this.isShifted(rootfs) });
        out.containers.push(id);
      }
      await unmountAll(bundle);
      await removeTree(join(bundle, 'vol')).catch(() => undefined);
      await fsp.rm(bundle, { recursive: true, force: true });
    }
    for (const id of await fsp.readdir(join(old, 'snapshots')).catch(() => [] as string[])) {
      const tree = join(old, 'snapshots', id, 'rootfs');
      if (ID_RE.test(id) && (await exists(tree))) {
        await this.importSnapshot(id, tree);
        out.snapshots.push(id);
      }
      await removeTree(join(old, 'snapshots', id)).catch(() => fsp.rm(join(old, 'snapshots', id), { recursive: true, force: true }));
    }
    await fsp.rm(old, { recursive: true, force: true });
    if (out.containers.length || out.snapshots.length) this.o.log.warn(out, 'branching: converted an earlier release\'s containers and snapshots to layers');
    return out;
  }

  async run(id: string, command: string[], env: Record<string, string>): Promise<void> {
    const rt = this.stack.rt;
    const bundle = this.bundle(id);
    // A container that ran before (killed or exited) still has a runtime record: start afresh.
    if (await rt.state(id)) await rt.remove(id, bundle, 1000);
    await Promise.all(['attach', 'ctl', 'winsz', 'pidfile', 'conmon.pid'].map((f) => fsp.rm(join(bundle, f), { force: true })));
    await fsp.rm(join(this.stack.exitDir, id), { force: true });
    await this.ensureMounted(id);
    const spec = buildOciSpec({
      rootfs: this.rootfs(id),
      args: command,
      env,
      cwd: '/',
      uid: 0,
      gid: 0,
      terminal: false,
      hostname: `loom-${id.slice(0, 8)}`,
      cgroupsPath: `/loom/branching-${id}`,
      cpu: this.o.limits.cpu,
      memory: this.o.limits.memory,
      pidsLimit: this.o.limits.pidsLimit,
      usernsBase: this.o.usernsBase,
    });
    await fsp.writeFile(bundleFiles(bundle).config, JSON.stringify(spec));
    try {
      await rt.create({ id, bundle, terminal: false, exitDir: this.stack.exitDir });
      await rt.start(id);
    } catch (e) {
      await rt.remove(id, bundle, 500).catch(() => undefined);
      throw new LoomError(422, 'CONTAINER_START_FAILED', `cannot start the container: ${errorMessage(e)}`);
    }
  }

  kill(id: string, graceMs = 2000): Promise<boolean> {
    return this.stack.rt.stop(id, graceMs);
  }

  async removeRuntime(id: string): Promise<void> {
    if (!this.started) return;
    await this.stack.rt.remove(id, this.bundle(id), 1000);
  }

  async remove(id: string): Promise<void> {
    const bundle = this.bundle(id);
    await this.removeRuntime(id);
    await unmountAll(bundle);
    const layers = this.stack.layers;
    const parent = layers.stat(containerLayer(id))?.parent ?? null;
    await layers.remove(containerLayer(id));
    await this.dropUnusedBase(parent);
    await this.dropUnusedBase(baseLayer(id));
    await fsp.rm(bundle, { recursive: true, force: true });
    await fsp.rm(join(this.stack.exitDir, id), { force: true });
    await fsp.rm(join(this.stack.tmpDir, `stage-${id}`), { recursive: true, force: true });
  }

  exitCode(id: string): Promise<number | null> {
    return this.stack.exitCode(id);
  }

  async isRunning(id: string): Promise<boolean> {
    if (!this.started) return false;
    const st = await this.stack.rt.state(id);
    return !!st && (st.status === 'running' || st.status === 'paused');
  }

  conmonPid(id: string): Promise<number | null> {
    return readPid(bundleFiles(this.bundle(id)).conmonPidFile);
  }

  logPath(id: string): string {
    return bundleFiles(this.bundle(id)).log;
  }

  async containerIds(): Promise<string[]> {
    const ids = new Set<string>(await fsp.readdir(this.dir).catch(() => [] as string[]));
    for (const l of this.stack.layers.list()) {
      if (l.key.startsWith('container/')) ids.add(l.key.slice('container/'.length));
    }
    // Runtime containers whose bundle is ours (weavers share the runtime root).
    for (const s of await this.stack.rt.list()) if (s.bundle.startsWith(`${this.dir}/`)) ids.add(s.id);
    return [...ids].filter((id) => ID_RE.test(id));
  }

  async pruneSnapshots(knownIds: string[]): Promise<string[]> {
    const layers = this.stack.layers;
    const known = new Set(knownIds.map(snapshotLayer));
    const gone: string[] = [];
    for (const l of layers.list().reverse()) {
      if (!l.key.startsWith('snapshot/') || known.has(l.key) || layers.children(l.key).length) continue;
      try {
        await this.removeSnapshot(l.key.slice('snapshot/'.length));
        gone.push(l.key.slice('snapshot/'.length));
      } catch (e) {
        if (!(isLoomError(e) && e.code === 'SNAPSHOT_IN_USE')) throw e;
      }
    }
    // Base layers of containers that are gone, once nothing stacks on them.
    for (const l of layers.list().reverse()) if (l.key.startsWith('base/')) await this.dropUnusedBase(l.key);
    return gone;
  }
}

let criuResult: Promise<boolean> | null = null;

/** Runs `criu check` once; false when criu is absent or fails (as on the development machine). */
export function criuWorks(): Promise<boolean> {
  criuResult ??= run('criu', ['check'], { timeoutMs: 15_000 }).then((r) => r.code === 0, () => false);
  return criuResult;
}
