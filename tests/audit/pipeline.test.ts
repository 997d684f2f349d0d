/**
 * The sidecar's delivery pipeline without BPF: batches capped at 1000 events and 1 MiB, a server
 * outage spills to the on-disk buffer which drains in bounded batches once the server is back,
 * a full buffer drops the oldest and counts them, and a buffer survives a restart. The server is
 * a real HTTP listener on a free port that the test can make fail.
 */
import t from 'tap';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { DiskBuffer } from '../../src/audit/sidecar/buffer.js';
import { SidecarMetrics } from '../../src/audit/sidecar/metrics.js';
import { HttpShipper, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, Pipeline } from '../../src/audit/sidecar/pipeline.js';
import type { AuditEvent } from '../../src/audit/types.js';

interface Receiver {
  url: string;
  batches: AuditEvent[][];
  bodyBytes: number[];
  mode: 'ok' | 'down' | 'reject';
  close(): Promise<void>;
}

async function receiver(t: { teardown(fn: () => unknown): void }): Promise<Receiver> {
  const r: Receiver = { url: '', batches: [], bodyBytes: [], mode: 'ok', close: async () => undefined };
  const srv: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.headers.authorization !== 'Bearer tok') return res.writeHead(401).end();
      if (r.mode === 'down') return res.writeHead(503).end('{"error":{"code":"unavailable","message":"down"}}');
      if (r.mode === 'reject') return res.writeHead(403).end('{"error":{"code":"forbidden","message":"no"}}');
      const body = Buffer.concat(chunks);
      r.bodyBytes.push(body.length);
      r.batches.push((JSON.parse(body.toString('utf8')) as { events: AuditEvent[] }).events);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res));
  r.url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  r.close = () => new Promise((res) => srv.close(() => res()));
  t.teardown(() => r.close());
  return r;
}

function tmp(t: { teardown(fn: () => unknown): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'loom-audit-pipe-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

let seq = 0;
function ev(pad = 0): AuditEvent {
  seq++;
  return {
    weaver_id: 'w1', org_id: 'o1', owner_user_id: 'u1', boot_id: 'b1', seq, timestamp_ns: String(BigInt(Date.now()) * 1_000_000n + BigInt(seq)),
    pid: 1, ppid: 0, tid: 1, uid: 0, comm: 'x', exec_id: '1', parent_exec_id: '0', event_type: 'file_open', ret: 0,
    details: { path: `/f${seq}`, pad: 'p'.repeat(pad) },
  };
}

const val = async (m: SidecarMetrics, name: string, labels?: Record<string, string>) => {
  const metric = m.registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  const j = await metric.get();
  const vs = (j as unknown as { values: { value: number; labels: Record<string, string> }[] }).values;
  return vs.filter((v) => !labels || Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0);
};

t.test('batches are capped at 1000 events and 1 MiB', async (t) => {
  const rx = await receiver(t);
  const metrics = new SidecarMetrics();
  const p = new Pipeline({ shipper: new HttpShipper(rx.url, () => 'tok'), buffer: new DiskBuffer(tmp(t), 1 << 30), metrics, batchIntervalMs: 50 });
  const small = Array.from({ length: 2500 }, () => ev());
  p.push(small);
  await p.flush();
  t.same(rx.batches.map((b) => b.length), [1000, 1000, 500], 'split by count');
  const big = Array.from({ length: 800 }, () => ev(4000));
  p.push(big);
  await p.flush();
  const bigBatches = rx.batches.slice(3);
  t.ok(bigBatches.length >= 4, `split by size: ${bigBatches.map((b) => b.length).join(',')}`);
  t.ok(rx.bodyBytes.every((b) => b <= MAX_BATCH_BYTES + 64), 'every body within 1 MiB');
  t.ok(rx.batches.every((b) => b.length <= MAX_BATCH_EVENTS));
  t.same(rx.batches.flat().map((e) => e.seq), [...small, ...big].map((e) => e.seq), 'every event once, in order');
  t.equal(await val(metrics, 'loom_weaver_audit_events_sent_total'), 3300);
  t.equal(await val(metrics, 'loom_weaver_audit_batches_sent_total', { outcome: 'success' }), rx.batches.length);
});

t.test('an outage spills to disk; the backlog drains in bounded batches when the server is back', async (t) => {
  const rx = await receiver(t);
  const metrics = new SidecarMetrics();
  const dir = tmp(t);
  const buffer = new DiskBuffer(dir, 64 << 20);
  const p = new Pipeline({ shipper: new HttpShipper(rx.url, () => 'tok'), buffer, metrics, batchIntervalMs: 50 });
  rx.mode = 'down';
  const first = Array.from({ length: 1500 }, () => ev());
  p.push(first);
  await p.tick();
  t.equal(p.serverReachable, false);
  t.equal(buffer.events, 1500, 'the failed batch and the rest went to disk');
  const second = Array.from({ length: 3000 }, () => ev());
  p.push(second);
  await p.tick();
  t.equal(buffer.events, 4500, 'new events queue behind the backlog');
  t.equal(await val(metrics, 'loom_weaver_audit_events_buffered_total'), 4500);
  t.ok(await val(metrics, 'loom_weaver_audit_batches_sent_total', { outcome: 'failure' }) >= 1);
  // a restart in the middle of the outage: the buffer is read back from disk
  const reopened = new DiskBuffer(dir, 64 << 20);
  t.equal(reopened.events, 4500, 'the buffer survives a restart');
  rx.mode = 'ok';
  const p2 = new Pipeline({ shipper: new HttpShipper(rx.url, () => 'tok'), buffer: reopened, metrics, batchIntervalMs: 50 });
  await p2.flush();
  t.equal(reopened.events, 0, 'drained');
  t.ok(rx.batches.every((b) => b.length <= 1000), `bounded batches: ${rx.batches.map((b) => b.length).join(',')}`);
  t.same(rx.batches.flat().map((e) => e.seq), [...first, ...second].map((e) => e.seq), 'all of it, once, in order');
});

t.test('a full buffer drops the oldest and counts them', async (t) => {
  const rx = await receiver(t);
  const metrics = new SidecarMetrics();
  const cap = 64 * 1024;
  const buffer = new DiskBuffer(tmp(t), cap);
  const p = new Pipeline({ shipper: new HttpShipper(rx.url, () => 'tok'), buffer, metrics, batchIntervalMs: 50 });
  rx.mode = 'down';
  const all = Array.from({ length: 2000 }, () => ev(100));
  for (let i = 0; i < all.length; i += 200) {
    p.push(all.slice(i, i + 200));
    await p.tick();
  }
  t.ok(buffer.bytes <= cap, `within the cap (${buffer.bytes} <= ${cap})`);
  t.ok(buffer.diskBytes() <= cap + 8192, 'and on disk (dropped segments removed)');
  const dropped = await val(metrics, 'loom_weaver_audit_events_dropped_total', { stage: 'buffer', reason: 'buffer_full' });
  t.ok(dropped > 0, `dropped ${dropped}`);
  t.equal(dropped + buffer.events, all.length, 'dropped + buffered = generated');
  rx.mode = 'ok';
  await p.flush();
  const got = rx.batches.flat().map((e) => e.seq);
  t.equal(got.length + dropped, all.length, 'delivered + dropped = generated');
  t.same(got, all.slice(dropped).map((e) => e.seq), 'what survived is the newest, in order');
});

t.test('a batch the server refuses for good is dropped and counted, not retried forever', async (t) => {
  const rx = await receiver(t);
  const metrics = new SidecarMetrics();
  const buffer = new DiskBuffer(tmp(t), 1 << 20);
  const p = new Pipeline({ shipper: new HttpShipper(rx.url, () => 'tok'), buffer, metrics, batchIntervalMs: 50 });
  rx.mode = 'reject';
  p.push([ev(), ev()]);
  await p.flush();
  t.equal(buffer.events, 0);
  t.equal(await val(metrics, 'loom_weaver_audit_events_dropped_total', { stage: 'server', reason: 'rejected_403' }), 2);
  // a wrong credential (401) is retried: the server may be rotating it
  const p2 = new Pipeline({ shipper: new HttpShipper(rx.url, () => 'wrong'), buffer, metrics, batchIntervalMs: 50 });
  rx.mode = 'ok';
  p2.push([ev()]);
  await p2.tick();
  t.equal(buffer.events, 1, 'kept for a retry');
});
