/**
 * Batching and delivery: events are sent every batchIntervalMs in batches of at most 1000 events
 * and 1 MiB. When the server cannot be reached, events go to the on-disk buffer (oldest dropped
 * beyond its cap, counted) and are drained in the same bounded batches with exponential backoff;
 * while the buffer holds anything, new events queue behind it so order is kept.
 */
import type { AuditEvent } from '../types.js';
import type { DiskBuffer } from './buffer.js';
import type { SidecarMetrics } from './metrics.js';

export const MAX_BATCH_EVENTS = 1000;
export const MAX_BATCH_BYTES = 1 << 20;
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 30_000;
/** Memory queue beyond which events spill to disk even while the server is up (a slow server). */
const MEMORY_MAX_BYTES = 16 << 20;

/** Delivers one batch (a JSON array body of serialized events). */
export interface Shipper {
  send(events: string[]): Promise<ShipResult>;
}
/** ok: stored; rejected: the server refused it for good (4xx) — retrying cannot help; retry: try later. */
export type ShipResult = { outcome: 'ok' } | { outcome: 'rejected'; status: number; message: string } | { outcome: 'retry'; message: string };

export interface PipelineOptions {
  shipper: Shipper;
  buffer: DiskBuffer;
  metrics: SidecarMetrics;
  batchIntervalMs: number;
  log?: (msg: string, extra?: Record<string, unknown>) => void;
}

export class Pipeline {
  private queue: string[] = [];
  private queueBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private backoffMs = 0;
  private nextAttempt = 0;
  lastSuccessfulSend: Date | null = null;
  lastError: string | null = null;
  serverReachable = true;

  constructor(private readonly o: PipelineOptions) {}

  push(events: AuditEvent[]): void {
    for (const e of events) {
      const s = JSON.stringify(e);
      this.queue.push(s);
      this.queueBytes += Buffer.byteLength(s) + 1;
      this.o.metrics.captured.inc({ type: e.event_type });
    }
    if (this.queueBytes > MEMORY_MAX_BYTES) this.spill();
  }

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.o.batchIntervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }

  /** One delivery round; ticks never overlap. */
  tick(): Promise<void> {
    if (this.running) return this.running;
    this.running = this.round().finally(() => {
      this.running = null;
      this.updateGauges();
    });
    return this.running;
  }

  /** Sends everything now, ignoring the backoff (shutdown, tests); stops when a round makes no progress. */
  async flush(): Promise<void> {
    for (;;) {
      this.nextAttempt = 0;
      const before = this.queue.length + this.o.buffer.events;
      await this.tick();
      const after = this.queue.length + this.o.buffer.events;
      if (after === 0 || after >= before) return;
    }
  }

  private spill(): void {
    if (!this.queue.length) return;
    const items = this.queue;
    this.queue = [];
    this.queueBytes = 0;
    this.o.metrics.buffered.inc(items.length);
    const dropped = this.o.buffer.append(items);
    if (dropped) this.o.metrics.dropped.inc({ stage: 'buffer', reason: 'buffer_full' }, dropped);
  }

  private async round(): Promise<void> {
    if (!this.o.buffer.empty) {
      // order: whatever is in memory queues behind the buffer
      this.spill();
      if (Date.now() < this.nextAttempt) return;
      // a bounded number of batches per round, so a long backlog never turns into one huge request
      for (let i = 0; i < 8 && !this.o.buffer.empty; i++) {
        const batch = this.o.buffer.peek(MAX_BATCH_EVENTS, MAX_BATCH_BYTES);
        const ok = await this.sendBatch(batch);
        if (ok === 'retry') return this.failed();
        this.o.buffer.ack(batch.length);
      }
      this.succeeded();
      return;
    }
    while (this.queue.length) {
      const batch = this.takeBatch();
      const ok = await this.sendBatch(batch);
      if (ok === 'retry') {
        // keep order: the failed batch first, then the rest of the queue
        this.queue.unshift(...batch);
        this.queueBytes += batch.reduce((a, s) => a + Buffer.byteLength(s) + 1, 0);
        this.spill();
        return this.failed();
      }
    }
    this.succeeded();
  }

  private takeBatch(): string[] {
    const batch: string[] = [];
    let bytes = 0;
    while (this.queue.length && batch.length < MAX_BATCH_EVENTS) {
      const b = Buffer.byteLength(this.queue[0]!) + 1;
      if (batch.length && bytes + b > MAX_BATCH_BYTES) break;
      batch.push(this.queue.shift()!);
      bytes += b;
      this.queueBytes -= b;
    }
    return batch;
  }

  private async sendBatch(batch: string[]): Promise<'ok' | 'rejected' | 'retry'> {
    let r: ShipResult;
    try {
      r = await this.o.shipper.send(batch);
    } catch (e) {
      r = { outcome: 'retry', message: (e as Error).message };
    }
    this.o.metrics.batches.inc({ outcome: r.outcome === 'ok' ? 'success' : r.outcome === 'rejected' ? 'rejected' : 'failure' });
    if (r.outcome === 'ok') {
      this.o.metrics.sent.inc(batch.length);
      this.lastSuccessfulSend = new Date();
      return 'ok';
    }
    if (r.outcome === 'rejected') {
      this.o.metrics.dropped.inc({ stage: 'server', reason: `rejected_${r.status}` }, batch.length);
      this.o.log?.('the server rejected an audit batch', { status: r.status, message: r.message, events: batch.length });
      return 'rejected';
    }
    this.lastError = r.message;
    return 'retry';
  }

  private failed(): void {
    this.serverReachable = false;
    this.backoffMs = Math.min(BACKOFF_MAX_MS, this.backoffMs ? this.backoffMs * 2 : BACKOFF_MIN_MS);
    this.nextAttempt = Date.now() + this.backoffMs;
  }

  private succeeded(): void {
    this.serverReachable = true;
    this.backoffMs = 0;
    this.nextAttempt = 0;
  }

  private updateGauges(): void {
    const b = this.o.buffer;
    this.o.metrics.bufferBytes.set(b.bytes);
    this.o.metrics.bufferEvents.set(b.events);
    const oldest = b.oldestTimestampNs();
    this.o.metrics.bufferOldestAge.set(oldest === null ? 0 : Math.max(0, (Date.now() * 1e6 - Number(oldest)) / 1e9));
  }
}

/** POSTs batches to loom-server's /internal/audit/events with the sidecar's credential. */
export class HttpShipper implements Shipper {
  constructor(private readonly url: string, private readonly token: () => string, private readonly timeoutMs = 10_000) {}

  async send(events: string[]): Promise<ShipResult> {
    const res = await fetch(new URL('/internal/audit/events', this.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${this.token()}` },
      body: `{"events":[${events.join(',')}]}`,
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    const text = await res.text();
    if (res.ok) return { outcome: 'ok' };
    // 401 can be a credential the server is rotating; 408/429/5xx are worth retrying
    if (res.status === 401 || res.status === 408 || res.status === 429 || res.status >= 500) return { outcome: 'retry', message: `HTTP ${res.status}: ${text.slice(0, 200)}` };
    return { outcome: 'rejected', status: res.status, message: text.slice(0, 500) };
  }
}
