import type { Logger } from '../common/log.js';
import { LoomError, errorMessage, tooMany } from '../common/errors.js';
import { authorize, notVisible, type Action, type Resource } from '../server/orgs/access.js';
import { newId } from '../common/ids.js';
import type { WeaverConfig } from '../server/config/load.js';
import type { OrgService } from '../server/orgs/orgs.js';
import type { User } from '../server/auth/users.js';
import type { BackendWeaver, Provisioner, WeaverSpec } from './provisioner.js';
import { WeaverStore, type Weaver } from './store.js';
import { validateCreate, type CreateWeaverRequest } from './validation.js';
import { AttachHub } from './attach-hub.js';
import type { WeaverMetrics } from './metrics.js';

// setTimeout takes at most a signed 32-bit delay; longer waits are re-armed.
const MAX_TIMER_MS = 2 ** 31 - 1;
const FAILURE_LOG_LINES = 200;

export interface WeaverServiceDeps {
  config: WeaverConfig;
  store: WeaverStore;
  orgs: OrgService;
  provisioner: Provisioner;
  log: Logger;
  metrics: WeaverMetrics;
  /** Image used when a request names none and LOOM_SERVER_WEAVER_DEFAULT_IMAGE is empty. */
  backendDefaultImage?: string;
}

/**
 * The weaver lifecycle, the same for every backend: validation, org checks, the concurrency
 * limit, the ready timeout, one expiry timer per weaver (the periodic sweep is a backstop),
 * status from the backend's watch, and the attach hubs.
 */
export class WeaverService {
  private readonly expiryTimers = new Map<string, NodeJS.Timeout>();
  private readonly readyTimers = new Map<string, NodeJS.Timeout>();
  private readonly hubs = new Map<string, Promise<AttachHub>>();
  private readonly deleting = new Map<string, Promise<void>>();
  // create() calls still in flight: a delete waits for them, or the backend could make the
  // container or pod after we deleted it, and leak it.
  private readonly creating = new Map<string, Promise<void>>();
  private sweepTimer: NodeJS.Timeout | null = null;
  private unwatch: (() => void) | null = null;

  constructor(private readonly d: WeaverServiceDeps) {}

  /** Reconciles records with the backend, re-arms timers and starts the sweep. */
  async start(): Promise<void> {
    const { store, provisioner, log } = this.d;
    await provisioner.start();
    this.unwatch = provisioner.watch((w) => this.onBackendStatus(w));
    const live = store.all().filter((w) => w.status !== 'succeeded' && w.status !== 'failed');
    const report = await provisioner.reconcile(live.map((w) => w.id));
    for (const id of report.orphansRemoved) log.warn({ weaver: id }, 'reconcile: removed a container with no record');
    for (const id of report.missing) {
      log.warn({ weaver: id }, 'reconcile: record without a container; marked failed');
      store.setStatus(id, 'failed', { reason: 'the container was gone when loom-server started', endedAt: new Date().toISOString() });
    }
    for (const id of report.adopted) log.info({ weaver: id }, 'reconcile: adopted running weaver');
    // Refresh what the backend knows now (it may have changed while we were down).
    for (const id of report.adopted) {
      const b = await provisioner.get(id).catch(() => null);
      if (b) this.onBackendStatus(b);
    }
    for (const w of store.all()) {
      if (w.status === 'terminating') {
        this.removeInBackground(w.id, 'resumed interrupted delete');
        continue;
      }
      this.armExpiry(w);
      if (w.status === 'pending') this.armReady(w);
    }
    this.sweepTimer = setInterval(() => this.sweep(), this.d.config.cleanupIntervalSecs * 1000);
    this.sweepTimer.unref();
    log.info({ adopted: report.adopted.length, orphans: report.orphansRemoved.length, missing: report.missing.length }, 'weaver reconcile done');
  }

  async stop(): Promise<void> {
    this.unwatch?.();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const t of [...this.expiryTimers.values(), ...this.readyTimers.values()]) clearTimeout(t);
    this.expiryTimers.clear();
    this.readyTimers.clear();
    for (const h of this.hubs.values()) void h.then((hub) => hub.close('server shutting down')).catch(() => undefined);
    this.hubs.clear();
    await Promise.allSettled(this.deleting.values());
    await this.d.provisioner.close();
  }

  async create(user: User, req: CreateWeaverRequest): Promise<Weaver> {
    const { config, store, orgs, provisioner } = this.d;
    const v = validateCreate(req, config);
    const org = req.org_id ? orgs.requireRole(user.id, req.org_id, 'member') : orgs.personalOrgOf(user.id);
    const image = v.image ?? (config.defaultImage || this.d.backendDefaultImage);
    if (!image) throw new LoomError(400, 'image_required', 'no image given and the server has no default image (set LOOM_SERVER_WEAVER_DEFAULT_IMAGE)');
    const now = new Date();
    const w: Weaver = {
      id: newId(),
      org_id: org.id,
      owner_user_id: user.id,
      image,
      status: 'pending',
      ...(v.repo ? { repo: v.repo } : {}),
      ...(v.branch ? { branch: v.branch } : {}),
      env_keys: Object.keys(v.env).sort(),
      ...(v.command ? { command: v.command } : {}),
      resources: v.resources,
      created_at: now.toISOString(),
      expires_at: new Date(now.getTime() + v.lifetimeHours * 3600_000).toISOString(),
      lifetime_hours: v.lifetimeHours,
      tags: v.tags,
    };
    if (!store.insertWithin(w, provisioner.name, config.maxConcurrent)) {
      throw tooMany(`at most ${config.maxConcurrent} weavers may be pending or running at once; delete one (loom weaver delete) or wait`, 'weaver_limit');
    }
    this.d.metrics.created.inc();
    this.d.log.info({ weaver: w.id, org: org.id, image }, 'weaver created');
    const spec: WeaverSpec = {
      id: w.id,
      orgId: w.org_id,
      ownerUserId: w.owner_user_id,
      image,
      ...(v.repo ? { repo: v.repo } : {}),
      ...(v.branch ? { branch: v.branch } : {}),
      env: v.env,
      ...(v.command ? { command: v.command } : {}),
      resources: v.resources,
      lifetimeHours: v.lifetimeHours,
      createdAt: now,
      expiresAt: new Date(w.expires_at),
      tags: v.tags,
    };
    this.armExpiry(w);
    this.armReady(w);
    // Provisioning runs in the background: the request answers 202 at once.
    const creating = provisioner
      .create(spec)
      .catch((e: unknown) => this.fail(w.id, `could not create: ${errorMessage(e)}`))
      .finally(() => this.creating.delete(w.id));
    this.creating.set(w.id, creating);
    return w;
  }

  /** The role-matrix resource of a weaver (src/server/orgs/access.ts). */
  static resource(w: Pick<Weaver, 'id' | 'org_id' | 'owner_user_id'>): Resource {
    return { kind: 'weaver', id: w.id, orgId: w.org_id, ownerUserId: w.owner_user_id };
  }

  /** The weaver when the role matrix lets the user do `action` on it; 404 when they cannot see it, 403 when they may not act. */
  authorized(user: Pick<User, 'id'>, id: string, action: Action): Weaver {
    const w = this.d.store.get(id);
    if (!w) throw notVisible({ kind: 'weaver', id });
    authorize(this.d.orgs, user, action, WeaverService.resource(w));
    return w;
  }

  /** The weaver if the user may see it (a member of its org); 404 otherwise. */
  visible(user: User, id: string): Weaver {
    return this.authorized(user, id, 'view');
  }

  /** Acting on a weaver needs its owner or an org admin. */
  controllable(user: User, id: string): Weaver {
    return this.authorized(user, id, 'control');
  }

  list(user: User): Weaver[] {
    return this.d.store.listForOrgs(this.d.orgs.orgIdsOf(user.id));
  }

  async delete(user: User, id: string): Promise<void> {
    this.authorized(user, id, 'delete');
    await this.remove(id, 'deleted by user');
  }

  /** Tears a weaver down and forgets it; idempotent and shared by delete, expiry and sweep. */
  remove(id: string, why: string): Promise<void> {
    const running = this.deleting.get(id);
    if (running) return running;
    const p = (async () => {
      this.clearTimers(id);
      this.d.store.setStatus(id, 'terminating');
      const hub = this.hubs.get(id);
      this.hubs.delete(id);
      void hub?.then((h) => h.close('weaver deleted')).catch(() => undefined);
      await this.creating.get(id);
      try {
        await this.d.provisioner.delete(id);
      } catch (e) {
        this.d.log.error({ weaver: id, err: e }, 'backend delete failed; will retry on the next sweep');
        this.d.store.setStatus(id, 'terminating', { reason: `delete failed: ${errorMessage(e)}` });
        throw new LoomError(500, 'delete_failed', `deleting weaver ${id} failed (${errorMessage(e)}); it stays terminating and is retried on the next sweep`);
      }
      this.d.store.remove(id);
      this.d.metrics.deleted.inc();
      this.d.log.info({ weaver: id, why }, 'weaver deleted');
    })().finally(() => this.deleting.delete(id));
    this.deleting.set(id, p);
    return p;
  }

  private removeInBackground(id: string, why: string): void {
    this.remove(id, why).catch(() => undefined);
  }

  private clearTimers(id: string): void {
    clearTimeout(this.expiryTimers.get(id));
    this.expiryTimers.delete(id);
    this.disarmReady(id);
  }

  private disarmReady(id: string): void {
    clearTimeout(this.readyTimers.get(id));
    this.readyTimers.delete(id);
  }

  /** The last lines of a weaver's output as the backend has them; empty when it has none. */
  private async logTail(id: string, lines: number): Promise<Buffer[]> {
    const out: Buffer[] = [];
    try {
      for await (const c of this.d.provisioner.logs(id, { tail: lines, follow: false })) out.push(c);
    } catch {
      /* no logs */
    }
    return out;
  }

  private armExpiry(w: Weaver): void {
    clearTimeout(this.expiryTimers.get(w.id));
    const due = Date.parse(w.expires_at) - Date.now();
    const t = setTimeout(() => {
      this.expiryTimers.delete(w.id);
      if (Date.parse(w.expires_at) > Date.now()) return this.armExpiry(w);
      this.expire(w.id);
    }, Math.max(0, Math.min(due, MAX_TIMER_MS)));
    t.unref();
    this.expiryTimers.set(w.id, t);
  }

  private expire(id: string): void {
    if (!this.d.store.get(id)) return;
    this.d.metrics.expired.inc();
    this.d.log.info({ weaver: id }, 'weaver lifetime ended');
    this.removeInBackground(id, 'lifetime ended');
  }

  private armReady(w: Weaver): void {
    const left = Date.parse(w.created_at) + this.d.config.readyTimeoutSecs * 1000 - Date.now();
    const t = setTimeout(() => {
      this.readyTimers.delete(w.id);
      if (this.d.store.get(w.id)?.status === 'pending') {
        void this.fail(w.id, `not running within the ready timeout of ${this.d.config.readyTimeoutSecs}s`);
      }
    }, Math.max(0, left));
    t.unref();
    this.readyTimers.set(w.id, t);
  }

  /** The periodic backstop: expired weavers whose timer was lost, and deletes that failed before. */
  sweep(): void {
    const now = Date.now();
    for (const w of this.d.store.all()) {
      if (Date.parse(w.expires_at) <= now && !this.deleting.has(w.id)) this.expire(w.id);
      else if (w.status === 'terminating' && !this.deleting.has(w.id)) this.removeInBackground(w.id, 'retrying delete');
    }
  }

  /**
   * A weaver that failed before it ever ran: keep the reason and the last log lines in the
   * record, then free the backend's resources (containers, pods) at once.
   */
  private async fail(id: string, reason: string): Promise<void> {
    const w = this.d.store.get(id);
    if (!w || w.status === 'terminating') return;
    let failureLog = Buffer.concat(await this.logTail(id, FAILURE_LOG_LINES)).toString('utf8');
    if (!failureLog.includes(reason)) failureLog += (failureLog && !failureLog.endsWith('\n') ? '\n' : '') + reason + '\n';
    this.d.store.setStatus(id, 'failed', { reason, endedAt: new Date().toISOString(), failureLog });
    this.d.metrics.failed.inc();
    this.disarmReady(id);
    this.d.log.warn({ weaver: id, reason }, 'weaver failed');
    await this.d.provisioner.delete(id).catch((e) => this.d.log.error({ weaver: id, err: e }, 'cleanup after failure failed'));
  }

  private onBackendStatus(b: BackendWeaver): void {
    const w = this.d.store.get(b.id);
    if (!w || w.status === 'terminating' || this.deleting.has(b.id)) return;
    if (w.status === b.status && (w.reason ?? undefined) === b.reason) return;
    const now = new Date().toISOString();
    switch (b.status) {
      case 'running':
        if (w.status !== 'pending' && w.status !== 'unknown') return;
        this.d.store.setStatus(b.id, 'running', { reason: null, startedAt: (b.startedAt ?? new Date()).toISOString() });
        this.disarmReady(b.id);
        if (w.status === 'pending') this.d.metrics.createToRunning.observe((Date.now() - Date.parse(w.created_at)) / 1000);
        this.d.log.info({ weaver: b.id }, 'weaver running');
        return;
      case 'succeeded':
      case 'failed': {
        if (w.status === 'succeeded' || w.status === 'failed') return;
        const reason = b.reason ?? (b.exitCode !== undefined ? `exited with code ${b.exitCode}` : undefined);
        if (w.status === 'pending' && b.status === 'failed') {
          void this.fail(b.id, reason ?? 'failed to start');
          return;
        }
        this.d.store.setStatus(b.id, b.status, { reason: reason ?? null, exitCode: b.exitCode ?? null, endedAt: now });
        if (b.status === 'failed') this.d.metrics.failed.inc();
        this.d.log.info({ weaver: b.id, status: b.status, reason }, 'weaver ended');
        return;
      }
      case 'unknown':
        this.d.store.setStatus(b.id, 'unknown', { reason: b.reason ?? null });
        return;
      case 'pending':
      case 'terminating':
        return;
    }
  }

  /** The hub for a running weaver, opened on first use and shared by every client. */
  hub(id: string): Promise<AttachHub> {
    let h = this.hubs.get(id);
    if (h) return h;
    h = (async () => AttachHub.open(() => this.d.provisioner.attach(id), await this.logTail(id, 100), () => this.hubs.delete(id)))();
    h.catch(() => this.hubs.delete(id));
    this.hubs.set(id, h);
    return h;
  }

  logs(id: string, opts: { tail?: number; follow: boolean; signal?: AbortSignal }): AsyncIterable<Buffer> {
    const stored = this.d.store.failureLog(id);
    if (stored !== null) {
      return (async function* () {
        yield Buffer.from(stored);
      })();
    }
    return this.d.provisioner.logs(id, opts);
  }
}
