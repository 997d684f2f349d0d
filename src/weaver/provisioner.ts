/**
 * The seam between the weaver lifecycle (src/weaver) and a backend (src/provisioners/*).
 * Both backends implement exactly this; nothing above it knows which one runs.
 *
 * Contract, in the spirit of containerd's runtime shim: small, explicit, idempotent.
 * - create() returns once the backend has accepted the weaver (it must not wait for it to
 *   run); progress arrives through watch().
 * - delete() of an unknown id is not an error.
 * - The backend never touches SQLite: the lifecycle layer owns records, the backend owns
 *   containers or pods, and reconcile() is where the two are compared.
 */

export type WeaverStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'terminating' | 'unknown';

export interface WeaverResources {
  /** Kubernetes quantity, e.g. "500m" or "2". */
  cpu: string;
  /** Kubernetes quantity, e.g. "512Mi". */
  memory: string;
}

/** What the lifecycle layer asks a backend to run. All fields are already validated. */
export interface WeaverSpec {
  id: string;
  orgId: string;
  ownerUserId: string;
  /** An image reference; the lifecycle layer has already substituted the default. */
  image: string;
  repo?: string;
  branch?: string;
  /** The name of the secret that holds the token for cloning a private repo (never the value). */
  gitSecret?: string;
  env: Record<string, string>;
  /** argv; when absent the image's own entrypoint/cmd runs. */
  command?: string[];
  resources: WeaverResources;
  lifetimeHours: number;
  /** Start from this snapshot's state (a fork) instead of the image's; the image still gives the run config. */
  fromSnapshot?: string;
  createdAt: Date;
  expiresAt: Date;
  tags: Record<string, string>;
}

/** What a backend knows of one weaver. */
/** What a snapshot of a weaver's layer produced (local backend). */
export interface LayerSnapshotResult {
  bytes: number;
  inodes: number;
  strategy: string;
  /** How long the weaver was frozen (app-consistent), or null. */
  frozenMs: number | null;
}

export interface BackendWeaver {
  id: string;
  status: WeaverStatus;
  /** Human-readable, e.g. "exited with code 3", "ErrImagePull: …", "git clone failed: …". */
  reason?: string;
  exitCode?: number;
  /** Set on the first report of `running`. */
  startedAt?: Date;
}

export type StatusListener = (w: BackendWeaver) => void;

/** One terminal connection to a weaver's main process. The attach hub fans it out to clients. */
export interface TerminalStream {
  /** Terminal output (stdout and stderr merged, as a tty gives them). */
  onData(cb: (chunk: Buffer) => void): void;
  /** The stream ended; code is the process exit code when known. */
  onClose(cb: (info: { exitCode?: number; error?: string }) => void): void;
  write(data: Buffer): void;
  resize(cols: number, rows: number): void;
  /** Detach; the weaver keeps running. */
  close(): void;
}

/** A command to run in a running weaver (argv, never a shell string). Already validated. */
export interface ExecRequest {
  command: string[];
  /** Added to (and overriding) the weaver's own environment. */
  env?: Record<string, string>;
  /** Working directory inside the weaver; the weaver's own when absent. */
  cwd?: string;
  /** A terminal: output arrives on stdout only (a tty merges the streams), resize works. */
  tty: boolean;
  /** Give the process a stdin; otherwise it reads /dev/null. */
  stdin: boolean;
  cols?: number;
  rows?: number;
  /**
   * Internal, never set from the API: take stdout (without a tty) as chunks of one reused buffer
   * instead of the `stdout` stream. `chunk` is valid only until `done()` is called and the next read
   * waits for it, so bulk transfers allocate nothing per chunk. A backend that does not support it
   * ignores it (ExecProcess.sunk is then false) and delivers `stdout` as usual.
   */
  stdoutSink?: (chunk: Buffer, done: () => void) => void;
}

/** How an exec ended: the exit code (128+signal when killed), or why it never ran. */
export interface ExecExit {
  exitCode: number;
  /** Set when the command could not be started (e.g. not found: exit code 127). */
  error?: string;
}

/**
 * One process started by exec. Unlike TerminalStream it keeps stdout and stderr apart and ends
 * with an exit code. Node streams, so callers get backpressure (a 100 MB upload, 50 MB of output).
 */
export interface ExecProcess {
  /** null unless ExecRequest.stdin; end() it to close the process's stdin. */
  readonly stdin: NodeJS.WritableStream | null;
  readonly stdout: NodeJS.ReadableStream;
  /** Stays empty with a tty. */
  readonly stderr: NodeJS.ReadableStream;
  /** True when stdout goes to ExecRequest.stdoutSink (then `stdout` is empty). */
  readonly sunk?: boolean;
  /** Settles once the process has exited and stdout/stderr have ended. Never rejects. */
  readonly exit: Promise<ExecExit>;
  resize(cols: number, rows: number): void;
  /** Kills the process and everything it started in the weaver (exit code 137). */
  kill(): void;
}

export interface LogOptions {
  /** Number of lines from the end to start with; undefined means all. */
  tail?: number;
  follow: boolean;
  signal?: AbortSignal;
}

export interface ReconcileReport {
  /** Records whose container or pod is alive and is adopted again. */
  adopted: string[];
  /** Backend objects without a record: removed. */
  orphansRemoved: string[];
  /** Records whose container or pod is gone: the lifecycle marks them failed/unknown. */
  missing: string[];
}

export interface BackendHealth {
  ok: boolean;
  backend: string;
  detail: string;
}

export interface Provisioner {
  readonly name: 'local' | 'kubernetes';
  /** Checks the backend is usable (runtime works, API reachable, namespace exists); throws LoomError otherwise. */
  start(): Promise<void>;
  create(spec: WeaverSpec): Promise<void>;
  get(id: string): Promise<BackendWeaver | null>;
  list(): Promise<BackendWeaver[]>;
  delete(id: string): Promise<void>;
  attach(id: string, size?: { cols: number; rows: number }): Promise<TerminalStream>;
  logs(id: string, opts: LogOptions): AsyncIterable<Buffer>;
  /**
   * Runs a process inside a running weaver: its namespaces and cgroup, as its user. Resolves
   * once the process is started (or could not be: then `exit` carries the error).
   */
  exec(id: string, req: ExecRequest): Promise<ExecProcess>;
  /**
   * The argv prefix of a POSIX toolbox (sh, cat, tar, stat, mv, rm, mkdir) inside the weaver,
   * used by the files API: e.g. ['/.loom/busybox'] where the backend mounts one, [] to use the
   * image's own tools from PATH.
   */
  toolbox(id: string): string[];
  /** Status changes pushed by the backend (conmon exit files, a pod informer). Returns an unsubscribe. */
  watch(listener: StatusListener): () => void;
  /** Called once at start with the ids of every weaver the store has not ended. */
  reconcile(knownIds: string[]): Promise<ReconcileReport>;
  health(): Promise<BackendHealth>;
  /**
   * Bytes a weaver has written to disk (root filesystem changes plus workspace), or null when
   * unknown. Backends without it have no disk monitor (Kubernetes limits ephemeral storage itself).
   */
  diskUsage?(id: string): Promise<number | null>;
  /** Stops watchers and timers; leaves weavers running. */
  close(): Promise<void>;
  /** Layered state (local backend only; absent where a backend cannot branch weavers yet). */
  snapshot?(id: string, snapshotId: string, opts: { freeze: boolean; signal?: AbortSignal }): Promise<LayerSnapshotResult>;
  removeSnapshot?(snapshotId: string): Promise<void>;
  pruneSnapshots?(knownIds: string[]): Promise<string[]>;
}
