/**
 * The branching service: org-scoped containers, snapshots, fork/clone/resume, lineage, pins and
 * operations. Requests validate, write an `accepted` operation row and return; the work runs in
 * the OperationRunner. Every request checks org membership (404 for what the user cannot see).
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { LoomError, errorMessage, isLoomError } from '../common/errors.js';
import type { Quotas } from '../weaver/quotas.js';
import { requireSameDirectory, resolveImportPath, unpackArchive, type ImportedPath } from './registration.js';
import type { Logger } from '../common/log.js';
import { newId, nowIso, sha256 } from '../common/ids.js';
import type { OrgService } from '../server/orgs/orgs.js';
import { authorize, may, notVisible, type Action, type Resource } from '../server/orgs/access.js';
import type { User } from '../server/auth/users.js';
import type { ContainerStack } from './stack.js';
import { KeyedMutex } from '../common/keyed-mutex.js';
import { newOperationRow, type OpContext, type OperationRunner } from './operations.js';
import type { ForkOverrides, SnapshotForWeaver, WeaverBranchingPort, WeaverForBranching } from '../weaver/branching-port.js';
import type { Weaver } from '../weaver/store.js';
import {
  toContainer, toOperation, toSnapshot, type BranchingStore, type ConsistencyMode, type Container, type ContainerRow, type Operation,
  type OperationRow, type Snapshot, type SnapshotRow,
} from './store.js';

export interface CreateContainerRequest {
  name: string;
  /** A host directory under an import root (server admins only). */
  rootfs_path?: string;
  /** An image of the local image store. */
  image?: string;
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
  /** The local runtime stack seed containers run on (files, layers, runtime: never touched here). */
  stack: ContainerStack;
  runner: OperationRunner;
  log: Logger;
  dataDir: string;
  /** Test hook: sleep this long inside copying operations (after the copy, before success). */
  testDelayMs: number;
  /** Host directories under which admins may register a rootfs_path (LOOM_BRANCHING_IMPORT_ROOTS). */
  importRoots: readonly string[];
  /** Largest uploaded archive, as sent and as unpacked. */
  archiveMaxBytes: number;
  /** The local image store's unpacked root filesystems; null when there is none. */
  images: ImageSource | null;
  /** Limits, quotas and the free-space floor shared with weavers. */
  quotas: Quotas;
  /** The weaver component's port, when weavers are enabled. */
  weavers?: () => WeaverBranchingPort | undefined;
}

/** An image name → its unpacked root filesystem (null when the store has no such image). */
export interface ImageSource {
  rootfs(ref: string): Promise<string | null>;
}

/** Archive registration: the JSON fields that travel in the query string beside the tar body. */
export interface ArchiveRequest {
  name: string;
  command: string[];
  env?: Record<string, string>;
  start_immediately?: boolean;
  org_id?: string;
}

export interface WeaverSnapshotRequest {
  consistency_mode?: ConsistencyMode;
  ttl_seconds?: number;
  labels?: Record<string, string>;
}

export interface WeaverFork {
  weaver: Weaver;
  snapshot_id: string;
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

/** What a snapshot is taken of: a branching container or a weaver of the local backend. */
type Source = { kind: 'container'; row: ContainerRow } | { kind: 'weaver'; row: WeaverForBranching };

export class BranchingService {
  private readonly store: BranchingStore;
  private readonly host: ContainerStack;
  private readonly runner: OperationRunner;
  private readonly log: Logger;
  private readonly lock = new KeyedMutex();

  constructor(private readonly o: ServiceOptions) {
    this.store = o.store;
    this.host = o.stack;
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

  /** A container, or else a weaver (through the weaver component's port), on which the role matrix allows `action`. */
  private source(user: User, id: string, action: Action): Source {
    const c = this.store.container(id);
    if (c && may(this.o.orgs, user, 'view', BranchingService.containerRes(c))) {
      authorize(this.o.orgs, user, action, BranchingService.containerRes(c));
      return { kind: 'container', row: c };
    }
    const w = this.o.weavers?.()?.weaver(user, id);
    if (w) {
      authorize(this.o.orgs, user, action, BranchingService.weaverRes(w));
      return { kind: 'weaver', row: w };
    }
    throw notVisible({ kind: 'container', id });
  }

  private static weaverRes(w: Pick<WeaverForBranching, 'id' | 'org_id' | 'owner_user_id'>): Resource {
    return { kind: 'weaver', id: w.id, orgId: w.org_id, ownerUserId: w.owner_user_id };
  }

  /** The container as this user may see it: env values only for its owner and org admins. */
  private shown(user: User, c: ContainerRow): Container {
    const out = toContainer(c);
    if (!may(this.o.orgs, user, 'env', BranchingService.containerRes(c))) {
      out.env = Object.fromEntries(Object.keys(out.env).map((k) => [k, REDACTED]));
    }
    return out;
  }

  private weaverPort(): WeaverBranchingPort {
    const p = this.o.weavers?.();
    if (!p) throw err(404, 'WEAVER_NOT_FOUND', 'weavers are not enabled on this server');
    return p;
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

  /**
   * Free space and the user's and org's quotas for one more container (sync: check, then insert);
   * its CPU and memory count when it is to start now.
   */
  private admitOne(userId: string, orgId: string, starts: boolean): void {
    this.o.quotas.requireFreeSpace();
    this.o.quotas.admit(userId, orgId, starts ? this.o.quotas.resources(undefined) : { cpuMillis: 0, memoryBytes: 0 });
  }

  private newRow(user: User, orgId: string, name: string, source: string, command: string[], env: Record<string, string>): ContainerRow {
    const now = nowIso();
    return {
      id: newId(), org_id: orgId, owner_user_id: user.id, name, source_path: source, source_snapshot_id: null,
      command: JSON.stringify(command), env: JSON.stringify(env), status: 'creating', exit_code: null, reason: null,
      rootfs_bytes: 0, created_at: now, updated_at: now, started_at: null, stopped_at: null,
    };
  }

  /** A host path: a server-admin right, only under the operator's import roots. */
  private importPath(user: User, p: string): ImportedPath {
    if (!user.is_admin) {
      throw err(403, 'ADMIN_REQUIRED', 'registering a host directory (rootfs_path) needs a server admin; register from an image ("image") or an uploaded archive (POST /api/containers/archive)');
    }
    if (this.o.importRoots.length === 0) {
      throw err(400, 'IMPORT_DISABLED', 'registering a host directory is disabled: the operator has set no import roots (LOOM_BRANCHING_IMPORT_ROOTS); register from an image or an uploaded archive');
    }
    return resolveImportPath(p, this.o.importRoots, this.o.dataDir);
  }

  async createContainer(user: User, req: CreateContainerRequest): Promise<Accepted> {
    const org = req.org_id ? this.o.orgs.requireRole(user.id, req.org_id, 'member') : this.o.orgs.personalOrgOf(user.id);
    validateCommand(req.command);
    const env = validateEnv(req.env);
    if ((req.rootfs_path === undefined) === (req.image === undefined)) {
      throw err(400, 'INVALID_SOURCE', 'give exactly one of rootfs_path (server admins, under an import root) and image (from the local image store); or upload an archive to POST /api/containers/archive');
    }
    let from: { kind: 'path'; imp: ImportedPath } | { kind: 'image'; ref: string; lower: string };
    if (req.rootfs_path !== undefined) from = { kind: 'path', imp: this.importPath(user, req.rootfs_path) };
    else {
      const ref = req.image!;
      const lower = this.o.images ? await this.o.images.rootfs(ref).catch((e: unknown) => {
        this.log.error({ err: e, image: ref }, 'unpacking an image for a container failed');
        throw err(500, 'IMAGE_UNPACK_FAILED', `image ${JSON.stringify(ref)} could not be unpacked`);
      }) : null;
      if (!lower) throw err(400, 'IMAGE_NOT_FOUND', `image ${JSON.stringify(ref)} is not in the local image store (\`loom image ls\`; server admins import images)`);
      from = { kind: 'image', ref, lower };
    }
    // No await from here to the insert: the quota check and the row are one step.
    this.admitOne(user.id, org.id, !!req.start_immediately);
    const c = this.newRow(user, org.id, req.name, from.kind === 'path' ? from.imp.path : `image:${from.ref}`, req.command, env);
    const op = newOperationRow({ id: newId(), org_id: org.id, user_id: user.id, type: 'container_create', container_id: c.id, params: { start_immediately: !!req.start_immediately } });
    this.store.db.transaction(() => {
      this.store.insertContainer(c);
      this.store.insertOperation(op);
    })();
    return this.submit(op, (ctx) =>
      this.lock.run(c.id, async () => {
        try {
          ctx.progress(1);
          const opts = { signal: ctx.signal, onProgress: (files: number) => ctx.progress(Math.min(90, 1 + files / 1000)) };
          let r: { bytes: number };
          if (from.kind === 'path') {
            // The directory checked at request time must be the one copied, before and after.
            requireSameDirectory(from.imp);
            r = await this.host.register(c.id, from.imp.path, opts);
            requireSameDirectory(from.imp);
          } else {
            r = await this.host.register(c.id, from.lower, opts);
          }
          if (this.o.testDelayMs) await ctx.sleep(this.o.testDelayMs);
          this.store.updateContainer(c.id, { status: 'created', rootfs_bytes: r.bytes });
        } catch (e) {
          await this.host.remove(c.id).catch(() => undefined);
          this.store.updateContainer(c.id, { status: 'failed', reason: errorMessage(e) });
          throw e;
        }
        if (req.start_immediately) await this.startNow(c.id);
      }),
    );
  }

  /**
   * Registration from an uploaded tar: unpacked while the request streams (so a refusal is the
   * request's answer and leaves nothing behind), then an operation starts it when asked.
   */
  async createFromArchive(user: User, req: ArchiveRequest, body: Readable): Promise<Accepted> {
    const org = req.org_id ? this.o.orgs.requireRole(user.id, req.org_id, 'member') : this.o.orgs.personalOrgOf(user.id);
    validateCommand(req.command);
    const env = validateEnv(req.env);
    this.admitOne(user.id, org.id, !!req.start_immediately);
    const c = this.newRow(user, org.id, req.name, 'archive', req.command, env);
    this.store.insertContainer(c);
    let bytes: number;
    try {
      // Unpacked into scratch first (a refused archive leaves no layer), then copied once into the base layer.
      const stage = await this.host.stagingDir(c.id);
      await unpackArchive(body, stage, this.o.archiveMaxBytes);
      ({ bytes } = await this.host.register(c.id, stage));
      await fsp.rm(stage, { recursive: true, force: true });
    } catch (e) {
      body.resume();
      await this.host.remove(c.id).catch(() => undefined);
      this.store.deleteContainer(c.id);
      throw e;
    }
    this.store.updateContainer(c.id, { status: 'created', rootfs_bytes: bytes });
    const op = newOperationRow({ id: newId(), org_id: org.id, user_id: user.id, type: 'container_create', container_id: c.id, params: { start_immediately: !!req.start_immediately, source: 'archive' } });
    this.store.insertOperation(op);
    return this.submit(op, (ctx) =>
      this.lock.run(c.id, async () => {
        ctx.progress(90);
        if (req.start_immediately) await this.startNow(c.id);
      }),
    );
  }

  private async startNow(id: string): Promise<void> {
    const c = this.store.container(id);
    if (!c) throw err(404, 'CONTAINER_NOT_FOUND', `container ${id} was deleted`);
    await this.host.run(c.id, JSON.parse(c.command) as string[], JSON.parse(c.env) as Record<string, string>);
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
    this.o.quotas.admit(c.owner_user_id, c.org_id, this.o.quotas.resources(undefined), false);
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
        await this.host.remove(c.id);
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
      command = JSON.stringify(w.command ?? DEFAULT_WEAVER_CLONE_COMMAND);
    }
    const now = new Date();
    return {
      id: newId(), org_id: src.row.org_id, created_by: user.id, source_kind: src.kind, container_id: src.row.id, parent_snapshot_id: parent,
      status: 'creating', consistency_mode: mode, labels: JSON.stringify(labels), pinned: 0, ttl_seconds: ttl ?? null,
      expires_at: ttl ? new Date(now.getTime() + ttl * 1000).toISOString() : null, frozen_ms: null, strategy: null, files: null, bytes: null,
      command, env, created_at: now.toISOString(), completed_at: null, layer: 0, image: null, resources: null,
    };
  }

  // ------------------------------------------------------------------ weaver snapshots and forks (layers)

  /** The weaver for a layer snapshot or fork: visible (404), branchable backend (409), running (409). */
  private branchableWeaver(user: User, id: string): { port: WeaverBranchingPort; w: WeaverForBranching } {
    const port = this.weaverPort();
    const w = port.weaver(user, id);
    if (!w) throw notVisible({ kind: 'weaver', id });
    // Snapshots freeze and copy the weaver's state (the role matrix's 'snapshot' right).
    authorize(this.o.orgs, user, 'snapshot', BranchingService.weaverRes(w));
    const why = port.unsupported();
    if (why) throw err(409, 'WEAVER_BRANCHING_UNSUPPORTED', why);
    if (w.status !== 'running') throw err(409, 'WEAVER_NOT_RUNNING', `weaver ${id} is ${w.status}; only a running weaver can be snapshotted or forked`);
    return { port, w };
  }

  private layerSnapshotRow(user: User, w: WeaverForBranching, mode: ConsistencyMode, ttl: number | undefined, labels: Record<string, string>): SnapshotRow {
    const now = new Date();
    return {
      id: newId(), org_id: w.org_id, created_by: user.id, source_kind: 'weaver', container_id: w.id, parent_snapshot_id: null,
      status: 'creating', consistency_mode: mode, labels: JSON.stringify(labels), pinned: 0, ttl_seconds: ttl ?? null,
      expires_at: ttl ? new Date(now.getTime() + ttl * 1000).toISOString() : null, frozen_ms: null, strategy: null, files: null, bytes: null,
      command: JSON.stringify(w.command ?? null), env: JSON.stringify(w.env), created_at: now.toISOString(), completed_at: null,
      layer: 1, image: w.image, resources: JSON.stringify(w.resources),
    };
  }

  /** Commits the weaver's layer into the snapshot's; on failure the row goes (the snapshotter drops its partial copy). */
  private async takeLayerSnapshot(port: WeaverBranchingPort, snap: SnapshotRow, signal?: AbortSignal): Promise<SnapshotRow> {
    try {
      const r = await port.snapshot(snap.container_id, snap.id, { freeze: snap.consistency_mode === 'app-consistent', ...(signal ? { signal } : {}) });
      const patch = { status: 'ready' as const, strategy: r.strategy, files: r.inodes, bytes: r.bytes, frozen_ms: r.frozenMs, completed_at: nowIso() };
      this.store.updateSnapshot(snap.id, patch);
      return { ...snap, ...patch };
    } catch (e) {
      this.store.deleteSnapshot(snap.id);
      await port.removeSnapshot(snap.id).catch(() => undefined);
      throw e;
    }
  }

  /** POST /api/weaver/:id/snapshot: what the weaver changed, as a layer over its image (202 operation). */
  snapshotWeaver(user: User, id: string, req: WeaverSnapshotRequest): Accepted {
    const { port, w } = this.branchableWeaver(user, id);
    const mode = req.consistency_mode ?? 'crash-consistent';
    const snap = this.layerSnapshotRow(user, w, mode, req.ttl_seconds, validateLabels(req.labels));
    const op = newOperationRow({ id: newId(), org_id: w.org_id, user_id: user.id, type: 'snapshot', container_id: w.id, snapshot_id: snap.id, params: { consistency_mode: mode, weaver: true } });
    this.store.db.transaction(() => {
      this.store.insertSnapshot(snap);
      this.store.insertOperation(op);
    })();
    return this.submit(op, async (ctx) => {
      if (mode === 'app-consistent') ctx.downgrade(this.host.memoryDowngrade);
      const done = await this.lock.run(w.id, () => this.takeLayerSnapshot(port, snap, ctx.signal));
      if (done.frozen_ms !== null) ctx.warn(`app-consistent: processes were frozen for ${done.frozen_ms} ms`);
      ctx.progress(100);
    });
  }

  /**
   * POST /api/weaver/:id/fork: a crash-consistent snapshot of the weaver's layer, then a new
   * weaver on it (202 with the new weaver, pending). The capacity is checked before anything is
   * made; a fork refused afterwards leaves no snapshot.
   */
  async forkWeaver(user: User, id: string, req: ForkOverrides): Promise<WeaverFork> {
    const { port, w } = this.branchableWeaver(user, id);
    port.checkFork(req);
    const snap = this.layerSnapshotRow(user, w, 'crash-consistent', undefined, { 'loom.fork': 'true' });
    this.store.insertSnapshot(snap);
    const done = await this.lock.run(w.id, () => this.takeLayerSnapshot(port, snap));
    try {
      const weaver = await port.createFromSnapshot(user, this.toSnapshotForWeaver(done), req);
      return { weaver, snapshot_id: done.id };
    } catch (e) {
      this.store.deleteSnapshot(done.id);
      await port.removeSnapshot(done.id).catch((re) => this.log.error({ err: re, snapshot: done.id }, 'removing the snapshot of a refused fork'));
      throw e;
    }
  }

  private toSnapshotForWeaver(s: SnapshotRow): SnapshotForWeaver {
    const command = JSON.parse(s.command) as string[] | null;
    return {
      id: s.id, org_id: s.org_id, image: s.image ?? '', env: JSON.parse(s.env) as Record<string, string>,
      resources: JSON.parse(s.resources ?? '{"cpu":"","memory":""}') as { cpu: string; memory: string }, parent_weaver_id: s.container_id,
      ...(command ? { command } : {}),
    };
  }

  /** For POST /api/weaver with from_snapshot: a ready layer snapshot the user can see. */
  snapshotForWeaver(user: User, id: string): SnapshotForWeaver {
    const s = this.snapshotRow(user, id, 'clone');
    if (!s.layer) throw err(409, 'SNAPSHOT_NOT_A_LAYER', `snapshot ${id} is a copy of a container's tree; clone it with POST /api/snapshots/${id}/clone (weavers start from snapshots made with POST /api/weaver/:id/snapshot)`);
    if (s.status !== 'ready') throw err(409, 'SNAPSHOT_NOT_READY', `snapshot ${id} is still being created`);
    return this.toSnapshotForWeaver(s);
  }

  /** Weavers made from a snapshot (lineage). */
  weaversFrom(user: User, id: string): Array<Pick<Weaver, 'id' | 'status' | 'created_at'>> {
    const s = this.snapshotRow(user, id, 'view');
    return this.o.weavers?.()?.madeFrom(user, s.id) ?? [];
  }

  /**
   * Commits what the source's layer holds now into the snapshot's layer (the container's through
   * the runtime stack, a weaver's through the weaver component). App-consistent: the source's
   * processes are frozen (cgroup freezer) around the copy and always thawed after. On failure the
   * partial layer and the row go.
   */
  private async takeSnapshot(ctx: OpContext, src: Source, snap: SnapshotRow, pctFrom: number, pctTo: number): Promise<SnapshotRow> {
    ctx.downgrade(this.host.memoryDowngrade);
    const freeze = snap.consistency_mode === 'app-consistent';
    ctx.progress(pctFrom);
    try {
      let r: { strategy: string; files: number; bytes: number; frozenMs: number | null };
      if (src.kind === 'container') {
        if (!this.store.container(src.row.id)) throw err(404, 'CONTAINER_NOT_FOUND', `container ${src.row.id} was deleted`);
        r = await this.host.snapshot(src.row.id, snap.id, { freeze, signal: ctx.signal });
      } else {
        const l = await this.weaverPort().snapshot(src.row.id, snap.id, { freeze, signal: ctx.signal });
        r = { strategy: l.strategy, files: l.inodes, bytes: l.bytes, frozenMs: l.frozenMs };
      }
      if (freeze) {
        if (r.frozenMs) ctx.warn(`app-consistent: processes were frozen for ${r.frozenMs} ms`);
        else ctx.warn('app-consistent: the container was not running; nothing to freeze');
      }
      const patch = { status: 'ready' as const, strategy: r.strategy, files: r.files, bytes: r.bytes, frozen_ms: freeze ? (r.frozenMs ?? 0) : null, completed_at: nowIso() };
      this.store.updateSnapshot(snap.id, patch);
      ctx.progress(pctTo);
      return { ...snap, ...patch };
    } catch (e) {
      await this.host.removeSnapshot(snap.id).catch((re) => this.log.error({ err: re, snapshot: snap.id }, 'removing a partial snapshot failed'));
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

  async deleteSnapshot(user: User, id: string): Promise<void> {
    const s = this.snapshotRow(user, id, 'delete');
    if (s.pinned) throw err(409, 'SNAPSHOT_PINNED', `snapshot ${id} is pinned; unpin it first`);
    const why = this.inUse(s);
    if (why) throw err(409, 'SNAPSHOT_IN_USE', `snapshot ${id} is in use: ${why}`);
    if (s.layer) return this.removeLayerSnapshot(s);
    await this.removeSnapshot(s);
  }

  /**
   * A layer snapshot goes with its layer; while weavers run on it the snapshotter refuses and so
   * do we (409 SNAPSHOT_IN_USE, naming them): delete those weavers first.
   */
  private async removeLayerSnapshot(s: SnapshotRow): Promise<void> {
    const port = this.o.weavers?.();
    if (!port) throw err(409, 'SNAPSHOT_IN_USE', `snapshot ${s.id} is a weaver layer and weavers are not enabled on this server`);
    try {
      await port.removeSnapshot(s.id);
    } catch (e) {
      if (isLoomError(e) && e.code === 'SNAPSHOT_IN_USE') {
        throw err(409, 'SNAPSHOT_IN_USE', `snapshot ${s.id} is in use: weavers run on it (delete them first)`);
      }
      throw e;
    }
    this.store.deleteSnapshot(s.id);
  }

  /**
   * Removes the snapshot's layer, then its record. Refused (409 SNAPSHOT_IN_USE) while other
   * layers stack on it: clones and forks of it, and snapshots taken of those.
   */
  private async removeSnapshot(s: SnapshotRow): Promise<void> {
    try {
      await this.host.removeSnapshot(s.id);
    } catch (e) {
      if (isLoomError(e) && e.code === 'SNAPSHOT_IN_USE') {
        throw err(409, 'SNAPSHOT_IN_USE', `snapshot ${s.id} is in use: containers or snapshots are built on it (delete them first)`);
      }
      throw e;
    }
    this.store.deleteSnapshot(s.id);
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
      // A new active layer on the snapshot and a mount: nothing is copied.
      await this.host.prepareFromSnapshot(c.id, snapshotId);
      ctx.progress(pctFrom + (95 - pctFrom) / 2);
      if (this.o.testDelayMs) await ctx.sleep(this.o.testDelayMs);
      this.store.updateContainer(c.id, { status: 'created', rootfs_bytes: bytes });
    } catch (e) {
      await this.host.remove(c.id).catch(() => undefined);
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
    if (s.layer) throw err(409, 'SNAPSHOT_IS_A_LAYER', `snapshot ${snapshotId} is a weaver layer; start a weaver from it with POST /api/weaver {"from_snapshot":"${snapshotId}"}`);
    this.admitOne(user.id, s.org_id, req.resume_policy === 'immediate');
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
    this.admitOne(user.id, src.row.org_id, req.resume_policy === 'immediate');
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
    // An interrupted fork leaves nothing behind: not its would-be container (whatever state it
    // reached), nor the intermediate snapshot it was being cloned from.
    for (const op of interrupted.filter((o) => o.operation_type === 'fork')) {
      if (op.result_container_id && this.store.container(op.result_container_id)) {
        await this.host.remove(op.result_container_id).catch((e) => this.log.error({ err: e }, 'removing an interrupted fork'));
        this.store.deleteContainer(op.result_container_id);
      }
      const s = op.snapshot_id ? this.store.snapshot(op.snapshot_id) : null;
      if (s && this.store.containersFromSnapshot(s.id).length === 0 && !s.pinned) {
        await this.host.removeSnapshot(s.id).catch((e) => this.log.error({ err: e }, 'removing the snapshot of an interrupted fork'));
        this.store.deleteSnapshot(s.id);
      }
      this.log.warn({ operation: op.id, container: op.result_container_id, snapshot: op.snapshot_id }, 'branching: removed what an interrupted fork left');
    }
    // Weaver and container snapshots are layers of the one store: a half-made one goes, and so do
    // layers no record names (a crash between the copy and the record).
    for (const s of this.store.allSnapshots()) {
      if (s.status === 'creating') {
        await this.host.removeSnapshot(s.id).catch((e) => this.log.error({ err: e }, 'removing a partial snapshot'));
        this.store.deleteSnapshot(s.id);
      }
    }
    const pruned = await this.host.pruneSnapshots(this.store.allSnapshots().map((s) => s.id)).catch((e) => {
      this.log.error({ err: e }, 'pruning snapshot layers without a record');
      return [] as string[];
    });
    if (pruned.length) this.log.warn({ snapshots: pruned }, 'branching: removed snapshot layers without a record');
    const containers = this.store.allContainers();
    for (const c of containers) {
      if (c.status === 'creating') {
        await this.host.remove(c.id).catch(() => undefined);
        this.store.updateContainer(c.id, { status: 'failed', reason: 'interrupted by a server restart while being created' });
        continue;
      }
      if (c.status === 'failed') continue;
      if (c.status === 'running' || c.status === 'deleting') {
        if (!(await this.host.isRunning(c.id))) {
          const code = await this.host.exitCode(c.id);
          this.store.updateContainer(c.id, { status: 'stopped', exit_code: code, stopped_at: nowIso() });
        } else if (c.status === 'deleting') {
          this.store.updateContainer(c.id, { status: 'running' });
        }
      }
      // After a reboot the root filesystem mounts are gone: mount them again.
      await this.host.ensureMounted(c.id).catch((e) => this.log.warn({ container: c.id, err: errorMessage(e) }, 'branching: remounting a container root filesystem failed'));
    }
    const ids = new Set(containers.map((c) => c.id));
    for (const d of await this.host.containerIds()) {
      if (!ids.has(d)) {
        this.log.warn({ container: d }, 'branching: removing a container without a record');
        await this.host.remove(d).catch((e) => this.log.error({ err: e }, 'removing orphan container'));
      }
    }
  }

  /** Removes expired, unpinned, unused snapshots; returns their ids. */
  async collectGarbage(now = new Date()): Promise<string[]> {
    const gone: string[] = [];
    for (const s of this.store.expiredSnapshots(now.toISOString())) {
      if (this.inUse(s)) continue;
      try {
        await (s.layer ? this.removeLayerSnapshot(s) : this.removeSnapshot(s));
        gone.push(s.id);
      } catch (e) {
        // Kept while weavers, containers or later snapshots stack on it; collected on a later pass once they are gone.
        if (!(isLoomError(e) && e.code === 'SNAPSHOT_IN_USE')) this.log.error({ err: e, snapshot: s.id }, 'branching: collecting an expired snapshot failed');
      }
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
