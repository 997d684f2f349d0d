/**
 * The one local runtime stack: everything that runs a container on this machine, shared by the
 * weavers of the local backend and the branching feature's seed containers.
 *
 * <dataDir>/local/
 *   runc/      the OCI runtime's --root: the state of every container Loom runs here
 *   exits/<id> conmon exit files, watched once (fs.watch) for every container
 *   layers/    the snapshotter: image layers, base layers, committed snapshots, active layers
 *   tmp/       scratch (runtime detection, staging)
 *
 * One instance per data dir in a process (`LocalStack.shared`), started once whoever asks first.
 * Weavers and containers differ only in their bundles (each owner keeps its own bundle dirs) and
 * the OCI spec inputs; both build specs with spec.ts's buildOciSpec.
 */
import { promises as fsp, watch as fsWatch, type FSWatcher } from 'node:fs';
import { join } from 'node:path';
import { LoomError, errorMessage } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { ContainerRuntime, detectRuntime, type RuntimeInfo, type RuntimeName } from './runtime.js';
import { OverlaySnapshotter } from './snapshotter/overlay.js';

export type ExitListener = (id: string) => void;

export class LocalStack {
  private static readonly instances = new Map<string, LocalStack>();

  /** The stack of this data dir (one per process); the first caller's runtime preference wins. */
  static shared(dataDir: string, log: Logger, runtimePref: 'auto' | RuntimeName = 'auto'): LocalStack {
    let s = LocalStack.instances.get(dataDir);
    if (!s) {
      s = new LocalStack(dataDir, log.child({ component: 'local-stack' }), runtimePref);
      LocalStack.instances.set(dataDir, s);
    }
    return s;
  }

  readonly base: string;
  readonly runcRoot: string;
  readonly exitDir: string;
  readonly tmpDir: string;
  private runtime: ContainerRuntime | null = null;
  private layerStore: OverlaySnapshotter | null = null;
  private started: Promise<void> | null = null;
  private watcher: FSWatcher | null = null;
  private readonly exitListeners = new Set<ExitListener>();
  info: RuntimeInfo | null = null;

  private constructor(readonly dataDir: string, private readonly log: Logger, private readonly runtimePref: 'auto' | RuntimeName) {
    this.base = join(dataDir, 'local');
    this.runcRoot = join(this.base, 'runc');
    this.exitDir = join(this.base, 'exits');
    this.tmpDir = join(this.base, 'tmp');
  }

  private users = 0;

  /** Each owner starts it once and closes it once; the last close stops the watcher. */
  start(): Promise<void> {
    this.users++;
    this.started ??= this.doStart().catch((e) => {
      this.started = null;
      throw e;
    });
    return this.started;
  }

  private async doStart(): Promise<void> {
    for (const d of [this.base, this.runcRoot, this.exitDir, this.tmpDir]) await fsp.mkdir(d, { recursive: true });
    const opened = await OverlaySnapshotter.open(join(this.base, 'layers'));
    this.layerStore = opened.snapshotter;
    this.layerStore.onBackgroundError = (key, err) => this.log.error({ layer: key, err: errorMessage(err) }, 'layers: background flattening failed (the chain stays as it was)');
    if (opened.report.removed.length || opened.report.interrupted.length) {
      this.log.warn({ removed: opened.report.removed, interrupted: opened.report.interrupted.map((i) => i.key) }, 'layers: removed what an interrupted process left');
    }
    this.info = await detectRuntime(this.runtimePref, this.tmpDir);
    this.runtime = new ContainerRuntime(this.info, this.runcRoot);
    const thawed = await this.runtime.thawRecorded();
    if (thawed.thawed.length) this.log.warn({ containers: thawed.thawed }, 'thawed containers left frozen by an interrupted snapshot');
    for (const f of thawed.failed) this.log.error({ container: f.id, err: f.error }, 'thawing a container left frozen failed');
    try {
      this.watcher = fsWatch(this.exitDir, (_ev, file) => {
        if (file) this.notifyExit(String(file));
      });
      this.watcher.on('error', () => undefined);
    } catch (e) {
      this.log.warn({ err: errorMessage(e) }, 'fs.watch on the exit dir failed; owners poll');
    }
  }

  private notifyExit(id: string): void {
    for (const l of this.exitListeners) {
      try {
        l(id);
      } catch (e) {
        this.log.warn({ err: errorMessage(e) }, 'exit listener threw');
      }
    }
  }

  /** Called with a container id whenever conmon writes (or removes) its exit file. */
  onExit(listener: ExitListener): () => void {
    this.exitListeners.add(listener);
    return () => this.exitListeners.delete(listener);
  }

  get rt(): ContainerRuntime {
    if (!this.runtime) throw new LoomError(503, 'RUNTIME_UNAVAILABLE', 'the local runtime stack is not started');
    return this.runtime;
  }

  get layers(): OverlaySnapshotter {
    if (!this.layerStore) throw new LoomError(503, 'RUNTIME_UNAVAILABLE', 'the local runtime stack is not started');
    return this.layerStore;
  }

  /** The exit code conmon recorded for the container, or null while it runs. */
  exitCode(id: string): Promise<number | null> {
    return ContainerRuntime.exitCode(this.exitDir, id);
  }

  /** Stops watching (the last owner to close). Containers keep running. */
  close(): void {
    if (--this.users > 0) return;
    this.watcher?.close();
    this.watcher = null;
    this.exitListeners.clear();
    this.started = null;
    this.runtime = null;
    this.layerStore = null;
    LocalStack.instances.delete(this.dataDir);
  }
}
