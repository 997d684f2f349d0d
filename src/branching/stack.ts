/**
 * What branching needs from the local runtime stack to run its (seed) containers. Branching
 * owns container and snapshot records, operations and lineage; the stack owns the files, layers,
 * mounts and runtime state behind them (src/provisioners/local/seed-containers.ts implements it
 * on the same runc root, exit watcher, snapshotter and OCI spec builder as the weavers).
 *
 * A container's root filesystem is an active layer: on a base layer (its registration: the
 * rootfs_path, image or archive copied ONCE) or on a committed snapshot (clone and fork: no copy).
 * A snapshot commits what the container's layer holds now into a layer whose parent is the
 * container's parent, so it costs what the container changed.
 */
export interface SnapshotCopy {
  strategy: string;
  files: number;
  bytes: number;
  /** How long the processes were frozen (app-consistent), else null. */
  frozenMs: number | null;
}

export interface ContainerStack {
  start(): Promise<void>;
  close(): void;
  /** "runc 1.1.x" or null when no runtime works. */
  readonly runtimeDescription: string | null;
  /** The capability downgrade every snapshot reports (memory state is never captured). */
  readonly memoryDowngrade: string;

  /** Registration: copies the tree once into the container's base layer and prepares its active layer on it. */
  register(id: string, src: string, opts?: { signal?: AbortSignal; onProgress?: (files: number) => void }): Promise<{ bytes: number; files: number }>;
  /** An empty scratch directory to unpack an uploaded archive into before register(); removed by remove(). */
  stagingDir(id: string): Promise<string>;
  /** Clone/fork: the container's active layer on a committed snapshot (nothing is copied). */
  prepareFromSnapshot(id: string, snapshotId: string): Promise<void>;
  /** A committed copy of what the container's layer holds now; freeze: processes frozen around the copy. */
  snapshot(containerId: string, snapshotId: string, opts: { freeze: boolean; signal?: AbortSignal }): Promise<SnapshotCopy>;
  /** Drops a snapshot; 409 SNAPSHOT_IN_USE while other layers (clones, forks, later snapshots of them) stack on it. */
  removeSnapshot(snapshotId: string): Promise<void>;
  /** Converts an earlier release's container volumes and snapshot trees into layers (see the implementation). */
  upgradeLegacy(): Promise<{ containers: string[]; stopped: string[]; snapshots: string[] }>;

  run(id: string, command: string[], env: Record<string, string>): Promise<void>;
  /** SIGTERM, SIGKILL after graceMs; false when nothing ran. */
  kill(id: string, graceMs?: number): Promise<boolean>;
  /** Stops and forgets the runtime container. Idempotent. */
  removeRuntime(id: string): Promise<void>;
  /** Runtime container, mount, active layer and (once nothing stacks on it) base layer. Idempotent. */
  remove(id: string): Promise<void>;
  exitCode(id: string): Promise<number | null>;
  isRunning(id: string): Promise<boolean>;
  conmonPid(id: string): Promise<number | null>;
  logPath(id: string): string;

  /** Containers the stack holds anything for (bundle, layer or runtime state). */
  containerIds(): Promise<string[]>;
  /** Snapshot layers without a record (a crash between the copy and the record) go; returns their ids. */
  pruneSnapshots(knownIds: string[]): Promise<string[]>;
  /** Remounts the root filesystem of a container whose mount is gone (after a reboot). */
  ensureMounted(id: string): Promise<void>;
}
