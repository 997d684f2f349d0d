/**
 * The branching service: org-scoped containers, snapshots, fork/clone/resume, lineage, pins and
 * operations. Requests validate, write an `accepted` operation row and return; the work runs in
 * the OperationRunner. Every request checks org membership (404 for what the user cannot see).
 */
import { lstatSync, promises as fsp, realpathSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { LoomError, errorMessage, isLoomError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { newId, nowIso, sha256 } from '../common/ids.js';
import type { OrgService } from '../server/orgs/orgs.js';
import { authorize, may, notVisible, type Action, type Resource } from '../server/orgs/access.js';
import type { User } from '../server/auth/users.js';
import { ContainerRuntime } from '../provisioners/local/runtime.js';
import { copyTree, removeTree, type CopyResult } from './copy.js';
import type { ContainerHost } from './containers.js';
import { KeyedMutex } from '../common/keyed-mutex.js';
import { newOperationRow, type OpContext, type OperationRunner } from './operations.js';
import {
  toContainer, toOperation, toSnapshot, type BranchingStore, type ConsistencyMode, type Container, type ContainerRow, type Operation,
  type OperationRow, type Snapshot, type SnapshotRow,
} from './store.js';

export interface CreateContainerRequest {
  name: string;
  rootfs_path: string;
  command: string[];
  env?: Record<string, string>;
  start_immediately?: boolean;
  org_id?: string;
}

export interface SnapshotRequest {
  consistency_mode: ConsistencyMode;
  ttl_seconds?: number;
  labels?: Record<string, string>;
  idempotency_key?: string;
}

export interface CloneRequest {
  resume_policy: 'manual' | 'immediate';
  name?: string;
  command?: string[];
  idempotency_key?: string;
}

export interface ForkRequest extends CloneRequest {
  consistency_mode?: ConsistencyMode;
}

export interface Accepted extends Operation {
  status_url: string;
}

export interface LineageNode {
  snapshot_id: string;
  parent_snapshot_id: string | null;
  container_id: string;
  created_at: string;
  depth: number;
}

export interface ServiceOptions {
  store: BranchingStore;
  orgs: OrgService;
  host: ContainerHost;
  runner: OperationRunner;
  log: Logger;
  dataDir: string;
  /** Test hook: sleep this long inside copying operations (after the copy, before success). */
  testDelayMs: number;
}

/** What a member sees in place of another member's env values. */
export const REDACTED = '<redacted>';
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const DEFAULT_WEAVER_CLONE_COMMAND = ['sleep', 'infinity'];

const err = (status: number, code: string, message: string) => new LoomError(status, code, message);

/** JSON with sorted keys: the request fingerprint for idempotency keys. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v as Record<string, unknown>)
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

interface WeaverRow {
  id: string;
  org_id: string;
  owner_user_id: string;
  backend: string;
  status: string;
  command: string | null;
}

/** What a snapshot is taken of: a branching container or a weaver of the local backend. */
type Source = { kind: 'container'; row: ContainerRow } | { kind: 'weaver'; row: WeaverRow };

export class BranchingService {
  private readonly store: BranchingStore;
  private readonly host: ContainerHost;
  private readonly runner: OperationRunner;
  private readonly log: Logger;
  private readonly lock = new KeyedMutex();

  constructor(private readonly o: ServiceOptions) {
    this.store = o.store;
    this.host = o.host;
    this.runner = o.runner;
    this.log = o.log;
  }

  // ------------------------------------------------------------------ visibility

  private static containerRes(c: Pick<ContainerRow, 'id' | 'org_id' | 'owner_user_id'>): Resource {
    return { kind: 'container', id: c.id, orgId: c.org_id, ownerUserId: c.owner_user_id };
  }

  private static snapshotRes(s: Pick<SnapshotRow, 'id' | 'org_id' | 'created_by'>): Resource {
    return { kind: 'snapshot', id: s.id, orgId: s.org_id, ownerUserId: s.created_by };
  }

  /** The container when the role matrix (server/orgs/access.ts) allows `action` on it. */
  private containerRow(user: User, id: string, action: Action): ContainerRow {
    const c = this.store.container(id);
    if (!c) throw notVisible({ kind: 'container', id });
    authorize(this.o.orgs, user, action, BranchingService.containerRes(c));
    return c;
  }

  /** The snapshot when the role matrix allows `action` on it (its owner is the user who took it). */
  private snapshotRow(user: User, id: string, action: Action): SnapshotRow {
    const s = this.store.snapshot(id);
    if (!s) throw notVisible({ kind: 'snapshot', id });
    authorize(this.o.orgs, user, action, BranchingService.snapshotRes(s));
    return s;
  }

  private weaverRow(id: string): WeaverRow | null {
    const db = this.store.db;
    const t = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'weavers'").get();
    if (!t) return null;
    return (db.prepare('SELECT id, org_id, owner_user_id, backend, status, command FROM weavers WHERE id = ?').get(id) as WeaverRow | undefined) ?? null;
  }

  /** A container, or else a local weaver, on which the role matrix allows `action`. */
  private source(user: User, id: string, action: Action): Source {
    const c = this.store.container(id);
    if (c && may(this.o.orgs, user, 'view', BranchingService.containerRes(c))) {
      authorize(this.o.orgs, user, action, BranchingService.containerRes(c));
      return { kind: 'container', row: c };
    }
    const w = this.weaverRow(id);
    if (w) {
      const res: Resource = { kind: 'weaver', id: w.id, orgId: w.org_id, ownerUserId: w.owner_user_id };
      if (may(this.o.orgs, user, 'view', res)) {
        authorize(this.o.orgs, user, action, res);
        return { kind: 'weaver', row: w };
      }
    }
    throw notVisible({ kind: 'container', id });
  }

  /** The container as this user may see it: env values only for its owner and org admins. */
  private shown(user: User, c: ContainerRow): Container {
    const out = toContainer(c);
    if (!may(this.o.orgs, user, 'env', BranchingService.containerRes(c))) {
      out.env = Object.fromEntries(Object.keys(out.env).map((k) => [k, REDACTED]));
    }
    return out;
  }

  // ------------------------------------------------------------------ operations plumbing

  private accepted(r: OperationRow): Accepted {
    return { ...toOperation(r), status_url: `/api/operations/${r.id}` };
  }

  /** Same key + same request → the earlier operation; same key + another request → 409. */
  private replay(orgId: string, key: string | undefined, hash: string): Accepted | null {
    if (!key) return null;
    const prev = this.store.operationByKey(orgId, key);
    if (!prev) return null;
    if (prev.request_hash !== hash) throw err(409, 'IDEMPOTENCY_CONFLICT', `idempotency_key ${JSON.stringify(key)} was already used with a different request`);
    return this.accepted(prev);
  }

  private submit(row: OperationRow, work: (ctx: OpContext) => Promise<void>): Accepted {
    this.runner.submit(row.id, work);
    return this.accepted(this.store.operation(row.id) ?? row);
  }

  async operation(user: User, id: string, waitMs = 0): Promise<Operation> {
    const r = this.store.operation(id);
    if (!r) throw notVisible({ kind: 'operation', id });
    authorize(this.o.orgs, user, 'view', { kind: 'operation', id, orgId: r.org_id, ownerUserId: r.user_id });
    if (waitMs <= 0) return toOperation(r);
    return (await this.runner.wait(id, waitMs)) ?? toOperation(r);
  }

  // ------------------------------------------------------------------ containers

  /** Refuses paths that are not absolute existing directories, symlinks, '/', or overlap the data dir. */
  validateRootfsPath(p: string): string {
    const bad = (why: string) => err(400, 'INVALID_ROOTFS_PATH', `rootfs_path ${JSON.stringify(p)} ${why}`);
    if (!isAbsolute(p)) throw bad('must be an absolute path');
    if (resolve(p) !== p) throw bad('must be a normalized absolute path (no "..", "." or trailing "/")');
    if (p === '/') throw bad('may not be the host root');
    let real: string;
    try {
      const st = lstatSync(p);
      if (st.isSymbolicLink()) throw bad('is a symlink; give the directory itself');
      if (!st.isDirectory()) throw bad('is not a directory');
      real = realpathSync(p);
    } catch (e) {
      if (isLoomError(e)) throw e;
      throw bad(`cannot be used: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : errorMessage(e)}`);
    }
    if (real === '/') throw bad('resolves to the host root');
    let data = resolve(this.o.dataDir);
    try {
      data = realpathSync(data);
    } catch {
      /* keep */
    }
    if (real === data || real.startsWith(`${data}/`)) throw bad("is inside the server's data dir");
    if (data.startsWith(`${real}/`)) throw bad("contains the server's data dir");
    return real;
  }

  createContainer(user: User, req: CreateContainerRequest): Accepted {
    const org = req.org_id ? this.o.orgs.requireRole(user.id, req.org_id, 'member') : this.o.orgs.personalOrgOf(user.id);
    validateCommand(req.command);
    const env = validateEnv(req.env);
    const src = this.validateRootfsPath(req.rootfs_path);
    const now = nowIso();
    const c: ContainerRow = {
      id: newId(), org_id: org.id, owner_user_id: user.id, name: req.name, source_path: req.rootfs_path, source_snapshot_id: null,
      command: JSON.stringify(req.command), env: JSON.stringify(env), status: 'creating', exit_code: null, reason: null,
      rootfs_bytes: 0, created_at: now, updated_at: now, started_at: null, stopped_at: null,
    };
    const op = newOperationRow({ id: newId(), org_id: org.id, user_id: user.id, type: 'container_create', container_id: c.id, params: { start_immediately: !!req.start_immediately } });
    this.store.db.transaction(() => {
      this.store.insertContainer(c);
      this.store.insertOperation(op);
    })();
    return this.submit(op, (ctx) =>
      this.lock.run(c.id, async () => {
        try {
          ctx.progress(1);
          const r = await this.host.materializeFromPath(c.id, src, ctx.signal, (p) => ctx.progress(Math.min(90, 1 + p.files / 1000)));
          if (this.o.testDelayMs) await ctx.sleep(this.o.testDelayMs);
          this.store.updateContainer(c.id, { status: 'created', rootfs_bytes: r.bytes });
        } catch (e) {
          await this.host.removeFiles(c.id).catch(() => undefined);
          this.store.updateContainer(c.id, { status: 'failed', reason: errorMessage(e) });
          throw e;
        }
        if (req.start_immediately) await this.startNow(c.id);
      }),
    );
  }

  private async startNow(id: string): Promise<void> {
    const c = this.store.container(id);
    if (!c) throw err(404, 'CONTAINER_NOT_FOUND', `container ${id} was deleted`);
    await this.host.run(c);
    this.store.updateContainer(id, { status: 'running', started_at: nowIso(), stopped_at: null, exit_code: null, reason: null });
  }

  /** Brings a running container's status up to date from conmon's exit file. */
  private async refresh(c: ContainerRow): Promise<ContainerRow> {
    if (c.status !== 'running') return c;
    const code = await this.host.exitCode(c.id);
    if (code === null) return c;
    this.store.updateContainer(c.id, { status: 'stopped', exit_code: code, stopped_at: nowIso() });
    return this.store.container(c.id) ?? c;
  }

  async listContainers(user: User): Promise<Container[]> {
    const rows = this.store.containersForOrgs(this.o.orgs.orgIdsOf(user.id));
    return Promise.all(rows.map(async (r) => this.shown(user, await this.refresh(r))));
  }

  async getContainer(user: User, id: string): Promise<Container> {
    return this.shown(user, await this.refresh(this.containerRow(user, id, 'view')));
  }

  private usable(c: ContainerRow): void {
    if (c.status === 'creating') throw err(409, 'CONTAINER_NOT_READY', `container ${c.id} is still being created`);
    if (c.status === 'deleting') throw err(409, 'CONTAINER_DELETING', `container ${c.id} is being deleted`);
    if (c.status === 'failed') throw err(409, 'CONTAINER_FAILED', `container ${c.id} failed to be created: ${c.reason ?? ''}`);
  }

  async kill(user: User, id: string): Promise<Accepted> {
    const c = await this.refresh(this.containerRow(user, id, 'control'));
    this.usable(c);
    if (c.status !== 'running') throw err(409, 'CONTAINER_NOT_RUNNING', `container ${id} is ${c.status}, not running`);
    // One kill at a time: the check and the insert below run in one JS turn, so of concurrent
    // kills exactly one is accepted and the others get 409 naming it.
    const pending = this.activeOn(c.id, 'container_kill');
    if (pending) throw err(409, 'KILL_IN_PROGRESS', `container ${id} is already being killed by operation ${pending.id}`);
    const op = newOperationRow({ id: newId(), org_id: c.org_id, user_id: user.id, type: 'container_kill', container_id: c.id });
    this.store.insertOperation(op);
    return this.submit(op, (ctx) =>
      this.lock.run(c.id, async () => {
        const killed = await this.host.kill(c.id);
        if (!killed) ctx.warn('the container had already stopped');
        const code = await this.host.exitCode(c.id);
        this.store.updateContainer(c.id, { status: 'stopped', stopped_at: nowIso(), exit_code: code });
      }),
    );
  }

  /** An operation of this type still active on the container, if any. */
  private activeOn(containerId: string, type: OperationRow['operation_type']): OperationRow | null {
    return (
      (this.store.db
        .prepare("SELECT * FROM branch_operations WHERE container_id = ? AND operation_type = ? AND status IN ('accepted', 'queued', 'running') LIMIT 1")
        .get(containerId, type) as OperationRow | undefined) ?? null
    );
  }

  async resume(user: User, id: string): Promise<Accepted> {
    const c = await this.refresh(this.containerRow(user, id, 'control'));
    this.usable(c);
    if (c.status === 'running') throw err(409, 'CONTAINER_ALREADY_RUNNING', `container ${id} is already running`);
    const op = newOperationRow({ id: newId(), org_id: c.org_id, user_id: user.id, type: 'container_resume', container_id: c.id });
    this.store.insertOperation(op);
    return this.submit(op, (ctx) =>
      this.lock.run(c.id, async () => {
        if (await this.host.isRunning(c.id)) {
          ctx.warn('the container was already running');
          this.store.updateContainer(c.id, { status: 'running' });
          return;
        }
        await this.startNow(c.id);
      }),
    );
  }

  deleteContainer(user: User, id: string): Accepted {
    const c = this.containerRow(user, id, 'delete');
    if (c.status === 'deleting') {
      const prev = this.store.db
        .prepare("SELECT * FROM branch_operations WHERE container_id = ? AND operation_type = 'container_delete' ORDER BY started_at DESC LIMIT 1")
        .get(c.id) as OperationRow | undefined;
      if (prev) return this.accepted(prev);
    }
    const op = newOperationRow({ id: newId(), org_id: c.org_id, user_id: user.id, type: 'container_delete', container_id: c.id });
    this.store.db.transaction(() => {
      this.store.updateContainer(c.id, { status: 'deleting' });
      this.store.insertOperation(op);
    })();
    return this.submit(op, () =>
      this.lock.run(c.id, async () => {
        await this.host.removeRuntime(c.id);
        await this.host.removeFiles(c.id);
        this.store.deleteContainer(c.id);
      }),
    );
  }

  // ------------------------------------------------------------------ snapshots

  snapshot(user: User, id: string, req: SnapshotRequest): Accepted {
    const src = this.source(user, id, 'snapshot');
    const hash = sha256(canonical({ op: 'snapshot', id, ...req, idempotency_key: undefined }));
    const replay = this.replay(src.row.org_id, req.idempotency_key, hash);
    if (replay) return replay;
    const labels = validateLabels(req.labels);
    const snap = this.prepareSnapshot(user, src, req.consistency_mode, req.ttl_seconds, labels);
    const op = newOperationRow({
      id: newId(), org_id: src.row.org_id, user_id: user.id, type: 'snapshot', container_id: src.row.id, snapshot_id: snap.id,
      params: { consistency_mode: req.consistency_mode }, ...(req.idempotency_key ? { idempotency_key: req.idempotency_key, request_hash: hash } : {}),
    });
    this.store.db.transaction(() => {
      this.store.insertSnapshot(snap);
      this.store.insertOperation(op);
    })();
    return this.submit(op, async (ctx) => {
      await this.lock.run(src.row.id, () => this.takeSnapshot(ctx, src, snap, 0, 95));
    });
  }

  /** Checks the source and builds the snapshot row (status creating). */
  private prepareSnapshot(user: User, src: Source, mode: ConsistencyMode, ttl: number | undefined, labels: Record<string, string>): SnapshotRow {
    let command: string;
    let env = '{}';
    let parent: string | null = null;
    if (src.kind === 'container') {
      this.usable(src.row);
      command = src.row.command;
      env = src.row.env;
      parent = src.row.source_snapshot_id;
    } else {
      const w = src.row;
      if (w.backend !== 'local') throw err(409, 'WEAVER_NOT_LOCAL', `weaver ${w.id} runs on the ${w.backend} backend; only local weavers can be snapshotted`);
      if (w.status !== 'running') throw err(409, 'CONTAINER_NOT_RUNNING', `weaver ${w.id} is ${w.status}; its root filesystem is only mounted while it runs`);
      command = w.command ?? JSON.stringify(DEFAULT_WEAVER_CLONE_COMMAND);
    }
    const now = new Date();
    return {
      id: newId(), org_id: src.row.org_id, created_by: user.id, source_kind: src.kind, container_id: src.row.id, parent_snapshot_id: parent,
      status: 'creating', consistency_mode: mode, labels: JSON.stringify(labels), pinned: 0, ttl_seconds: ttl ?? null,
      expires_at: ttl ? new Date(now.getTime() + ttl * 1000).toISOString() : null, frozen_ms: null, strategy: null, files: null, bytes: null,
      command, env, created_at: now.toISOString(), completed_at: null,
    };
  }

  private weaverPaths(id: string) {
    const dir = join(this.o.dataDir, 'local', 'weavers', id);
    return { rootfs: join(dir, 'rootfs'), workspace: join(dir, 'workspace') };
  }

  /**
   * Copies the source's volume into snapshots/<id>. App-consistent: the source's processes are
   * frozen (cgroup freezer via the runtime's pause) for the copy and always thawed after.
   * Progress is reported between pctFrom and pctTo. On failure the partial tree and the row go.
   */
  private async takeSnapshot(ctx: OpContext, src: Source, snap: SnapshotRow, pctFrom: number, pctTo: number): Promise<SnapshotRow> {
    ctx.downgrade(this.host.memoryDowngrade);
    const dest = this.host.snapshotDir(snap.id);
    let estimate = 0;
    let rt: ContainerRuntime | null = null;
    let copy: () => Promise<CopyResult>;
    const progress = (bytes: number) => ctx.progress(pctFrom + (pctTo - pctFrom) * (estimate > 0 ? Math.min(1, bytes / estimate) : 0.5));
    if (src.kind === 'container') {
      const c = this.store.container(src.row.id);
      if (!c) throw err(404, 'CONTAINER_NOT_FOUND', `container ${src.row.id} was deleted`);
      estimate = c.rootfs_bytes;
      if (snap.consistency_mode === 'app-consistent' && (await this.host.isRunning(c.id))) rt = this.host.rt();
      copy = () => copyTree(this.host.vol(c.id), dest, { signal: ctx.signal, onProgress: (p) => progress(p.bytes) });
    } else {
      const paths = this.weaverPaths(src.row.id);
      const entries = await fsp.readdir(paths.rootfs).catch(() => [] as string[]);
      if (entries.length === 0) throw err(409, 'CONTAINER_NOT_RUNNING', `weaver ${src.row.id} has no mounted root filesystem`);
      if (snap.consistency_mode === 'app-consistent') {
        const info = this.host.info;
        if (!info) throw err(503, 'RUNTIME_UNAVAILABLE', 'no OCI runtime to freeze the weaver with');
        rt = new ContainerRuntime(info, join(this.o.dataDir, 'local', 'runc'));
      }
      copy = async () => {
        await this.host.makeVolume(dest);
        const a = await copyTree(paths.rootfs, join(dest, 'rootfs'), { signal: ctx.signal, onProgress: (p) => progress(p.bytes) });
        const ws = join(dest, 'rootfs', 'workspace');
        const hasWs = await fsp.stat(paths.workspace).then((s) => s.isDirectory(), () => false);
        if (hasWs) {
          await removeTree(ws);
          const b = await copyTree(paths.workspace, ws, { signal: ctx.signal });
          return { ...a, files: a.files + b.files, bytes: a.bytes + b.bytes, dirs: a.dirs + b.dirs };
        }
        return a;
      };
    }
    try {
      let result: CopyResult;
      let frozenMs: number | null = null;
      if (rt) {
        const target = src.row.id;
        const t0 = performance.now();
        await rt.pause(target);
        try {
          result = await copy();
        } finally {
          try {
            await rt.resume(target);
          } catch (e) {
            this.log.error({ err: e, container: target }, 'thaw after app-consistent snapshot failed');
            ctx.warn(`thawing ${target} failed: ${errorMessage(e)}`);
          }
          frozenMs = Math.round((performance.now() - t0) * 100) / 100;
        }
        ctx.warn(`app-consistent: processes were frozen for ${frozenMs} ms`);
      } else {
        if (snap.consistency_mode === 'app-consistent') ctx.warn('app-consistent: the container was not running; nothing to freeze');
        result = await copy();
        if (snap.consistency_mode === 'app-consistent') frozenMs = 0;
      }
      if (this.o.testDelayMs) await ctx.sleep(this.o.testDelayMs);
      const patch = { status: 'ready' as const, strategy: result.strategy, files: result.files, bytes: result.bytes, frozen_ms: frozenMs, completed_at: nowIso() };
      this.store.updateSnapshot(snap.id, patch);
      if (src.kind === 'container' && result.strategy !== 'subvolume') this.store.updateContainer(src.row.id, { rootfs_bytes: result.bytes });
      ctx.progress(pctTo);
      return { ...snap, ...patch };
    } catch (e) {
      await removeTree(dest).catch((re) => this.log.error({ err: re, snapshot: snap.id }, 'removing a partial snapshot failed'));
      this.store.deleteSnapshot(snap.id);
      throw e;
    }
  }

  async listSnapshots(user: User, containerId?: string): Promise<Snapshot[]> {
    return this.store.snapshotsForOrgs(this.o.orgs.orgIdsOf(user.id), containerId).map(toSnapshot);
  }

  getSnapshot(user: User, id: string): Snapshot {
    return toSnapshot(this.snapshotRow(user, id, 'view'));
  }

  /** Why a snapshot cannot go now (beyond pins), or null. */
  private inUse(s: SnapshotRow): string | null {
    if (s.status === 'creating') return 'it is still being created';
    const ops = this.store.activeOperationsOnSnapshot(s.id).filter((o) => o.operation_type !== 'snapshot');
    if (ops.length) return `operation ${ops[0]!.id} (${ops[0]!.operation_type}) is using it`;
    const users = this.store.containersFromSnapshot(s.id).filter((c) => c.status !== 'failed');
    if (users.length) return `container${users.length > 1 ? 's' : ''} ${users.map((c) => c.id).join(', ')} ${users.length > 1 ? 'were' : 'was'} cloned from it (delete ${users.length > 1 ? 'them' : 'it'} first)`;
    return null;
  }

  deleteSnapshot(user: User, id: string): void {
    const s = this.snapshotRow(user, id, 'delete');
    if (s.pinned) throw err(409, 'SNAPSHOT_PINNED', `snapshot ${id} is pinned; unpin it first`);
    const why = this.inUse(s);
    if (why) throw err(409, 'SNAPSHOT_IN_USE', `snapshot ${id} is in use: ${why}`);
    this.removeSnapshot(s);
  }

  /** Forgets the snapshot at once and removes its tree in the background (reconcile removes leftovers). */
  private removeSnapshot(s: SnapshotRow): void {
    this.store.deleteSnapshot(s.id);
    void removeTree(this.host.snapshotDir(s.id)).catch((e) => this.log.error({ err: e, snapshot: s.id }, 'removing a snapshot tree failed'));
  }

  setPinned(user: User, id: string, pinned: boolean): Snapshot {
    const s = this.snapshotRow(user, id, 'pin');
    this.store.updateSnapshot(s.id, { pinned: pinned ? 1 : 0 });
    return toSnapshot({ ...s, pinned: pinned ? 1 : 0 });
  }

  /** From the snapshot (depth 0) up through its parents to the root. */
  lineage(user: User, id: string): LineageNode[] {
    let s: SnapshotRow | null = this.snapshotRow(user, id, 'view');
    const out: LineageNode[] = [];
    const seen = new Set<string>();
    while (s && !seen.has(s.id)) {
      seen.add(s.id);
      out.push({ snapshot_id: s.id, parent_snapshot_id: s.parent_snapshot_id, container_id: s.container_id, created_at: s.created_at, depth: out.length });
      const next: SnapshotRow | null = s.parent_snapshot_id ? this.store.snapshot(s.parent_snapshot_id) : null;
      s = next && may(this.o.orgs, user, 'view', BranchingService.snapshotRes(next)) ? next : null;
    }
    return out;
  }

  // ------------------------------------------------------------------ clone and fork

  private newCloneRow(user: User, orgId: string, snap: Pick<SnapshotRow, 'id' | 'command' | 'env'>, name: string, command?: string[]): ContainerRow {
    if (command) validateCommand(command);
    const now = nowIso();
    return {
      id: newId(), org_id: orgId, owner_user_id: user.id, name, source_path: null, source_snapshot_id: snap.id,
      command: command ? JSON.stringify(command) : snap.command, env: snap.env, status: 'creating', exit_code: null, reason: null,
      rootfs_bytes: 0, created_at: now, updated_at: now, started_at: null, stopped_at: null,
    };
  }

  /** Materializes a clone's volume from the snapshot and starts it when asked. */
  private async materializeClone(ctx: OpContext, c: ContainerRow, snapshotId: string, bytes: number, pctFrom: number, immediate: boolean): Promise<void> {
    ctx.downgrade(this.host.memoryDowngrade);
    try {
      const r = await this.host.materializeFromSnapshot(c.id, snapshotId, ctx.signal, (p) => ctx.progress(pctFrom + (95 - pctFrom) * (bytes > 0 ? Math.min(1, p.bytes / bytes) : 0.5)));
      if (this.o.testDelayMs) await ctx.sleep(this.o.testDelayMs);
      this.store.updateContainer(c.id, { status: 'created', rootfs_bytes: r.strategy === 'subvolume' ? bytes : r.bytes });
    } catch (e) {
      await this.host.removeFiles(c.id).catch(() => undefined);
      this.store.updateContainer(c.id, { status: 'failed', reason: errorMessage(e) });
      throw e;
    }
    if (immediate) await this.startNow(c.id);
  }

  clone(user: User, snapshotId: string, req: CloneRequest): Accepted {
    const s = this.snapshotRow(user, snapshotId, 'clone');
    const hash = sha256(canonical({ op: 'clone', id: snapshotId, ...req, idempotency_key: undefined }));
    const replay = this.replay(s.org_id, req.idempotency_key, hash);
    if (replay) return replay;
    if (s.status !== 'ready') throw err(409, 'SNAPSHOT_NOT_READY', `snapshot ${snapshotId} is still being created`);
    const c = this.newCloneRow(user, s.org_id, s, req.name ?? `clone-${s.id.slice(0, 8)}`, req.command);
    const op = newOperationRow({
      id: newId(), org_id: s.org_id, user_id: user.id, type: 'clone', snapshot_id: s.id, result_container_id: c.id,
      params: { resume_policy: req.resume_policy }, ...(req.idempotency_key ? { idempotency_key: req.idempotency_key, request_hash: hash } : {}),
    });
    this.store.db.transaction(() => {
      this.store.insertContainer(c);
      this.store.insertOperation(op);
    })();
    return this.submit(op, (ctx) => this.lock.run(c.id, () => this.materializeClone(ctx, c, s.id, s.bytes ?? 0, 0, req.resume_policy === 'immediate')));
  }

  /** Snapshot + clone in one operation. */
  fork(user: User, id: string, req: ForkRequest): Accepted {
    const src = this.source(user, id, 'snapshot');
    const hash = sha256(canonical({ op: 'fork', id, ...req, idempotency_key: undefined }));
    const replay = this.replay(src.row.org_id, req.idempotency_key, hash);
    if (replay) return replay;
    const snap = this.prepareSnapshot(user, src, req.consistency_mode ?? 'crash-consistent', undefined, { 'loom.fork': 'true' });
    const base = src.kind === 'container' ? src.row.name : `weaver-${src.row.id.slice(0, 8)}`;
    const c = this.newCloneRow(user, src.row.org_id, snap, req.name ?? `${base}-fork-${snap.id.slice(0, 8)}`, req.command);
    const op = newOperationRow({
      id: newId(), org_id: src.row.org_id, user_id: user.id, type: 'fork', container_id: src.row.id, snapshot_id: snap.id, result_container_id: c.id,
      params: { resume_policy: req.resume_policy }, ...(req.idempotency_key ? { idempotency_key: req.idempotency_key, request_hash: hash } : {}),
    });
    this.store.db.transaction(() => {
      this.store.insertSnapshot(snap);
      this.store.insertContainer(c);
      this.store.insertOperation(op);
    })();
    return this.submit(op, async (ctx) => {
      let done: SnapshotRow;
      try {
        done = await this.lock.run(src.row.id, () => this.takeSnapshot(ctx, src, snap, 0, 50));
      } catch (e) {
        this.store.updateContainer(c.id, { status: 'failed', reason: `snapshot failed: ${errorMessage(e)}` });
        throw e;
      }
      await this.lock.run(c.id, () => this.materializeClone(ctx, c, done.id, done.bytes ?? 0, 50, req.resume_policy === 'immediate'));
    });
  }

  // ------------------------------------------------------------------ reconcile and GC

  /**
   * After a restart: operations that were active end failed/INTERRUPTED and their partial files
   * go; snapshot trees without a finished record go; containers whose process is gone are stopped.
   */
  async reconcile(): Promise<void> {
    const interrupted = this.store.activeOperations();
    for (const op of interrupted) {
      this.store.updateOperation(op.id, {
        status: 'failed', completed_at: nowIso(), reason_code: 'INTERRUPTED',
        reason_message: 'the server stopped while the operation ran; its partial files were removed',
      });
    }
    if (interrupted.length) this.log.warn({ operations: interrupted.map((o) => o.id) }, 'branching: interrupted operations marked failed');
    for (const s of this.store.allSnapshots()) {
      if (s.status === 'creating') {
        await removeTree(this.host.snapshotDir(s.id)).catch((e) => this.log.error({ err: e }, 'removing partial snapshot'));
        this.store.deleteSnapshot(s.id);
      }
    }
    const known = new Set(this.store.allSnapshots().map((s) => s.id));
    for (const d of await fsp.readdir(this.host.layout.snapshots).catch(() => [] as string[])) {
      if (!known.has(d)) {
        this.log.warn({ dir: d }, 'branching: removing a snapshot tree without a record');
        await removeTree(join(this.host.layout.snapshots, d)).catch((e) => this.log.error({ err: e }, 'removing orphan snapshot'));
      }
    }
    const containers = this.store.allContainers();
    for (const c of containers) {
      if (c.status === 'creating') {
        await this.host.removeRuntime(c.id).catch(() => undefined);
        await this.host.removeFiles(c.id).catch(() => undefined);
        this.store.updateContainer(c.id, { status: 'failed', reason: 'interrupted by a server restart while being created' });
      } else if (c.status === 'running' || c.status === 'deleting') {
        if (!(await this.host.isRunning(c.id))) {
          const code = await this.host.exitCode(c.id);
          this.store.updateContainer(c.id, { status: 'stopped', exit_code: code, stopped_at: nowIso() });
        } else if (c.status === 'deleting') {
          this.store.updateContainer(c.id, { status: 'running' });
        }
      }
    }
    const ids = new Set(containers.map((c) => c.id));
    for (const d of await fsp.readdir(this.host.layout.containers).catch(() => [] as string[])) {
      if (!ids.has(d)) {
        this.log.warn({ dir: d }, 'branching: removing a container without a record');
        await this.host.removeRuntime(d).catch(() => undefined);
        await this.host.removeFiles(d).catch((e) => this.log.error({ err: e }, 'removing orphan container'));
      }
    }
  }

  /** Removes expired, unpinned, unused snapshots; returns their ids. */
  collectGarbage(now = new Date()): string[] {
    const gone: string[] = [];
    for (const s of this.store.expiredSnapshots(now.toISOString())) {
      if (this.inUse(s)) continue;
      this.removeSnapshot(s);
      gone.push(s.id);
    }
    if (gone.length) this.log.info({ snapshots: gone }, 'branching: expired snapshots collected');
    return gone;
  }
}

function validateCommand(cmd: string[]): void {
  if (cmd.length === 0 || !cmd[0]) throw err(400, 'INVALID_COMMAND', 'command must be a non-empty argv array whose first element names the program');
  if (cmd.some((a) => a.includes('\0'))) throw err(400, 'INVALID_COMMAND', 'command arguments may not contain NUL bytes');
}

function validateEnv(env: Record<string, string> | undefined): Record<string, string> {
  for (const [k, v] of Object.entries(env ?? {})) {
    if (!ENV_KEY_RE.test(k)) throw err(400, 'INVALID_ENV', `invalid environment variable name ${JSON.stringify(k)}`);
    if (v.includes('\0')) throw err(400, 'INVALID_ENV', `environment variable ${k} contains a NUL byte`);
  }
  return env ?? {};
}

function validateLabels(labels: Record<string, string> | undefined): Record<string, string> {
  for (const k of Object.keys(labels ?? {})) {
    if (!/^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$/.test(k)) throw err(400, 'INVALID_LABEL', `invalid label key ${JSON.stringify(k)}`);
  }
  return labels ?? {};
}
