/**
 * The operation runner: every branching mutation is an operation persisted in SQLite and run in
 * the background by a small in-process queue with limited concurrency.
 *
 *   accepted (row written by the request) → queued (handed to the runner) → running →
 *   succeeded | failed | cancelled (server stopping) | timed_out
 *
 * Work functions report progress, warnings and capability downgrades through OpContext and clean
 * up their own partial files when they throw. After a crash, start-up reconcile (service.ts) ends
 * operations still active in the table as failed/INTERRUPTED.
 */
import { EventEmitter } from 'node:events';
import { LoomError, errorMessage, isLoomError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { nowIso } from '../common/ids.js';
import { FINAL_OP_STATUSES, toOperation, type BranchingStore, type Operation, type OperationRow, type OperationStatus } from './store.js';

export interface OpContext {
  readonly id: string;
  readonly signal: AbortSignal;
  progress(pct: number): void;
  warn(message: string): void;
  downgrade(message: string): void;
  set(patch: { snapshot_id?: string; result_container_id?: string }): void;
  /** Sleeps (test hook); rejects when the operation is aborted. */
  sleep(ms: number): Promise<void>;
}

export type OpWork = (ctx: OpContext) => Promise<void>;

export interface RunnerOptions {
  concurrency: number;
  timeoutMs: number;
}


class Aborted extends Error {
  constructor(readonly kind: 'cancelled' | 'timed_out') {
    super(kind);
  }
}

export class OperationRunner {
  private readonly queue: { id: string; work: OpWork }[] = [];
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void> }>();
  private readonly events = new EventEmitter();
  private stopping = false;

  constructor(
    private readonly store: BranchingStore,
    private readonly log: Logger,
    private readonly opts: RunnerOptions,
  ) {
    this.events.setMaxListeners(0);
  }

  /** Queues an operation whose row was inserted as `accepted`. */
  submit(id: string, work: OpWork): void {
    if (this.stopping) {
      this.finish(id, 'cancelled', 'SERVER_STOPPING', 'the server is shutting down');
      return;
    }
    this.store.updateOperation(id, { status: 'queued' });
    this.queue.push({ id, work });
    this.pump();
  }

  /** Resolves with the operation once it is final or after timeoutMs (whatever it is then). */
  async wait(id: string, timeoutMs: number): Promise<Operation | null> {
    const current = this.store.operation(id);
    if (!current || FINAL_OP_STATUSES.includes(current.status) || timeoutMs <= 0) return current ? toOperation(current) : null;
    await new Promise<void>((resolve) => {
      const key = `final:${id}`;
      const done = () => {
        clearTimeout(t);
        this.events.removeListener(key, done);
        resolve();
      };
      const t = setTimeout(done, timeoutMs);
      this.events.on(key, done);
    });
    const r = this.store.operation(id);
    return r ? toOperation(r) : null;
  }

  get activeCount(): number {
    return this.running.size + this.queue.length;
  }

  /** Cancels queued and running operations (their work cleans up) and waits for them. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const q of this.queue.splice(0)) this.finish(q.id, 'cancelled', 'SERVER_STOPPING', 'the server is shutting down');
    for (const r of this.running.values()) r.abort.abort(new Aborted('cancelled'));
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }

  private pump(): void {
    while (!this.stopping && this.running.size < this.opts.concurrency && this.queue.length > 0) {
      const next = this.queue.shift()!;
      const abort = new AbortController();
      const done = this.execute(next.id, next.work, abort).finally(() => {
        this.running.delete(next.id);
        this.pump();
      });
      this.running.set(next.id, { abort, done });
    }
  }

  private async execute(id: string, work: OpWork, abort: AbortController): Promise<void> {
    const row = this.store.operation(id);
    if (!row) return;
    this.store.updateOperation(id, { status: 'running' });
    const warnings = JSON.parse(row.warnings) as string[];
    const downgrades = JSON.parse(row.capability_downgrades) as string[];
    let lastPct = -1;
    const ctx: OpContext = {
      id,
      signal: abort.signal,
      progress: (pct) => {
        const p = Math.max(0, Math.min(100, Math.round(pct * 10) / 10));
        if (p === lastPct) return;
        lastPct = p;
        this.store.updateOperation(id, { progress_pct: p });
      },
      warn: (m) => {
        warnings.push(m);
        this.store.updateOperation(id, { warnings: JSON.stringify(warnings) });
      },
      downgrade: (m) => {
        if (downgrades.includes(m)) return;
        downgrades.push(m);
        this.store.updateOperation(id, { capability_downgrades: JSON.stringify(downgrades) });
      },
      set: (patch) => this.store.updateOperation(id, patch),
      sleep: (ms) =>
        new Promise<void>((resolve, reject) => {
          if (abort.signal.aborted) return reject(abort.signal.reason);
          const t = setTimeout(() => {
            abort.signal.removeEventListener('abort', onAbort);
            resolve();
          }, ms);
          const onAbort = () => {
            clearTimeout(t);
            reject(abort.signal.reason);
          };
          abort.signal.addEventListener('abort', onAbort, { once: true });
        }),
    };
    const timer = setTimeout(() => abort.abort(new Aborted('timed_out')), this.opts.timeoutMs);
    try {
      await work(ctx);
      this.store.updateOperation(id, { progress_pct: 100 });
      this.finish(id, 'succeeded');
    } catch (e) {
      const reason = abort.signal.aborted ? (abort.signal.reason as unknown) : null;
      if (reason instanceof Aborted && reason.kind === 'cancelled') this.finish(id, 'cancelled', 'SERVER_STOPPING', 'the server shut down while the operation ran; its partial files were removed');
      else if (reason instanceof Aborted) this.finish(id, 'timed_out', 'OPERATION_TIMED_OUT', `the operation took longer than ${Math.round(this.opts.timeoutMs / 1000)} s`);
      else {
        if (!isLoomError(e) || e.status >= 500) this.log.error({ err: e, operation: id }, 'operation failed');
        const code = isLoomError(e) ? e.code : 'INTERNAL';
        this.finish(id, 'failed', code, errorMessage(e));
      }
    } finally {
      clearTimeout(timer);
    }
  }

  private finish(id: string, status: OperationStatus, reasonCode?: string, reasonMessage?: string): void {
    const now = nowIso();
    this.store.updateOperation(id, {
      status,
      completed_at: now,
      ...(reasonCode ? { reason_code: reasonCode } : {}),
      ...(reasonMessage ? { reason_message: reasonMessage } : {}),
    });
    this.events.emit(`final:${id}`);
  }
}

/** Builds the row of a new operation in state `accepted`. */
export function newOperationRow(p: {
  id: string;
  org_id: string;
  user_id: string;
  type: OperationRow['operation_type'];
  container_id?: string;
  snapshot_id?: string;
  result_container_id?: string;
  params?: unknown;
  idempotency_key?: string;
  request_hash?: string;
}): OperationRow {
  const now = nowIso();
  return {
    id: p.id,
    org_id: p.org_id,
    user_id: p.user_id,
    operation_type: p.type,
    status: 'accepted',
    progress_pct: 0,
    container_id: p.container_id ?? null,
    snapshot_id: p.snapshot_id ?? null,
    result_container_id: p.result_container_id ?? null,
    warnings: '[]',
    capability_downgrades: '[]',
    reason_code: null,
    reason_message: null,
    params: JSON.stringify(p.params ?? {}),
    idempotency_key: p.idempotency_key ?? null,
    request_hash: p.request_hash ?? null,
    started_at: now,
    updated_at: now,
    completed_at: null,
  };
}

export { LoomError };
