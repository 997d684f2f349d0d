/**
 * Overload with real BPF: a tiny ring buffer (16 KiB) and a paused consumer (the sidecar's
 * test-only pause control) while a weaver creates files as fast as it can. Every event is
 * either captured or counted as lost in the kernel: captured + counted drops = generated, and
 * the loss is visible through the API as gaps and in the sidecar's metrics.
 */
import t from 'tap';
import { join } from 'node:path';
import { startServer, type TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { controlRequest } from '../../src/audit/sidecar/control.js';
import { allEvents, bpfUnavailable, buildWorkload, importWorkloadImage, sidecarReady, skipOrFail, weaverOutput } from './helpers.js';

type Weaver = { id: string; status: string };
const FILES = 3000;

const why = bpfUnavailable();
if (why) skipOrFail(t, why);
else
  t.test('tiny ring buffer, paused consumer: captured + counted drops = generated', async (t) => {
    const workload = buildWorkload(t);
    const srv: TestServer = await startServer({
      env: {
        LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'true',
        LOOM_SERVER_WEAVER_AUDIT_METRICS_PORT: '0',
        LOOM_SERVER_WEAVER_AUDIT_HEALTH_PORT: '0',
        LOOM_AUDIT_RING_BYTES: '16384',
        LOOM_AUDIT_TEST_CONTROLS: '1',
      },
    });
    const admin = await srv.token('ovl-admin', true);
    t.teardown(async () => {
      for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', admin)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, admin);
      await srv.stop();
    });
    const image = await importWorkloadImage(t, srv, admin, workload);
    const ready = await waitUntil(async () => sidecarReady(srv), 'the audit sidecar', 60_000);
    const sock = join(srv.dataDir, 'audit', 'control.sock');

    t.same(await controlRequest(sock, { op: 'pause' }), { ok: true }, 'consumer paused');
    const w = await srv.api<Weaver>('POST', '/api/weaver', admin, { image, command: ['/bin/audit-workload', 'overload', String(FILES), '/tmp'] });
    t.equal(w.status, 202);
    const id = w.body.id;
    await waitUntil(async () => (await weaverOutput(srv, admin, id)).includes('OVERLOAD-DONE'), 'the workload to create its files', 60_000);
    const resumedAt = BigInt(Date.now()) * 1_000_000n;
    t.same(await controlRequest(sock, { op: 'resume' }), { ok: true }, 'consumer resumed');

    const metric = async () => {
      const text = await (await fetch(`http://127.0.0.1:${ready.metrics_port}/metrics`)).text();
      return Number(/^loom_weaver_audit_ebpf_ring_buffer_dropped_events_total (\d+)/m.exec(text)?.[1] ?? NaN);
    };
    // settled: the ring has been drained past the resume (a later marker exec is stored) and every
    // counted kernel loss has arrived as a gap
    const settled = await waitUntil(async () => {
      const { events, gaps } = await allEvents(srv, admin, id);
      const drained = events.some((e) => e.event_type === 'process_exec' && BigInt(e.timestamp_ns) > resumedAt);
      const gapTotal = gaps.reduce((a, g) => a + Number(g.details.lost), 0);
      const dropped = await metric();
      return drained && gaps.length > 0 && gapTotal === dropped ? { events, gaps, dropped } : null;
    }, 'the ring drained and every loss reported as a gap', 60_000);

    const captured = settled.events.filter((e) => e.event_type === 'file_open' && String(e.details.path).startsWith('/tmp/ovl-')).length;
    const lostFiles = settled.gaps.reduce((a, g) => a + Number((g.details.by_type as Record<string, number>).file_open ?? 0), 0);
    t.ok(lostFiles > 0, `the kernel counted lost file events (${lostFiles})`);
    t.ok(captured > 0, `some were captured (${captured})`);
    t.equal(captured + lostFiles, FILES, `captured ${captured} + dropped ${lostFiles} = generated ${FILES}`);
    t.ok(settled.dropped >= lostFiles, 'the metric counts them');
    t.ok(settled.gaps.every((g) => g.event_type === 'audit_gap' && g.details.reason === 'ring_buffer_full'), 'gaps say why');
  });
