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
  createdAt: Date;
  expiresAt: Date;
  tags: Record<string, string>;
}

/** What a backend knows of one weaver. */
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
  /** Status changes pushed by the backend (conmon exit files, a pod informer). Returns an unsubscribe. */
  watch(listener: StatusListener): () => void;
  /** Called once at start with the ids of every weaver the store has not ended. */
  reconcile(knownIds: string[]): Promise<ReconcileReport>;
  health(): Promise<BackendHealth>;
  /** Stops watchers and timers; leaves weavers running. */
  close(): Promise<void>;
}
