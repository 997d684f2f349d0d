/**
 * The audit timeline page in a real browser from real BPF events (audit enabled, the sidecar
 * loaded by the server): a shell's commands nested under it with their file and network lines,
 * and gaps marked where the kernel dropped events (a 16 KiB ring and a paused consumer).
 */
import t from 'tap';
import { join } from 'node:path';
import { startServer, type TestServer } from '../support/server.js';
import { AttachClient, waitUntil } from '../support/attach.js';
import { controlRequest } from '../../src/audit/sidecar/control.js';
import { allEvents, bpfUnavailable, sidecarReady, skipOrFail } from '../audit/helpers.js';
import { SHOTS, haveChromium, openBrowser, problemsOf, shot, signIn, userWithPassword } from './browser.js';

type Weaver = { id: string; status: string; reason?: string };

const why = bpfUnavailable();
if (why) skipOrFail(t, why);
else
  t.test('the audit timeline: process tree, file and network lines, gaps marked', async (t) => {
    if (!haveChromium(t)) return;
    const srv: TestServer = await startServer({
      t,
      env: {
        LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'true',
        LOOM_SERVER_WEAVER_AUDIT_METRICS_PORT: '0',
        LOOM_SERVER_WEAVER_AUDIT_HEALTH_PORT: '0',
        LOOM_AUDIT_RING_BYTES: '16384',
        LOOM_AUDIT_TEST_CONTROLS: '1',
      },
    });
    const tok = await userWithPassword(srv, 'aud', 'aud-password-1');
    t.teardown(async () => {
      for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
    });
    await waitUntil(async () => sidecarReady(srv), 'the audit sidecar', 60_000);
    const w = await srv.api<Weaver>('POST', '/api/weaver', tok, { lifetime_hours: 1 });
    const id = w.body.id;
    await waitUntil(async () => {
      const g = await srv.api<Weaver>('GET', `/api/weaver/${id}`, tok);
      if (g.body.status === 'failed') throw new Error(`weaver failed: ${g.body.reason}`);
      return g.body.status === 'running';
    }, 'weaver running', 120_000);

    const a = await AttachClient.connect(srv.url, id, { token: tok });
    t.teardown(() => a.close());
    await a.waitFor(/\$ /);
    // a file written, a refused connect, a child command; then a burst with the consumer paused
    a.send('echo audited > /tmp/web-audit.txt; /bin/cat /tmp/web-audit.txt; nc -w 1 127.0.0.1 9 </dev/null; echo STEP""1\n');
    await a.waitFor(/STEP1/, 30_000);
    await waitUntil(async () => (await allEvents(srv, tok, id)).events.some((e) => e.event_type === 'file_open' && e.details.path === '/tmp/web-audit.txt'), 'the file write stored', 60_000).catch(async (e: Error) => {
      const r = await allEvents(srv, tok, id);
      throw new Error(`${e.message}: ${r.events.map((x) => `${x.event_type} ${JSON.stringify(x.details).slice(0, 80)}`).join('\n')}`);
    });
    const sock = join(srv.dataDir, 'audit', 'control.sock');
    t.same(await controlRequest(sock, { op: 'pause' }), { ok: true }, 'consumer paused');
    a.send('i=0; while [ $i -lt 3000 ]; do : > /tmp/g$i; i=$((i+1)); done; echo BURST""DONE\n');
    await a.waitFor(/BURSTDONE/, 60_000);
    t.same(await controlRequest(sock, { op: 'resume' }), { ok: true }, 'consumer resumed');
    const after = Date.now();
    a.send('echo marker-after-burst > /tmp/web-audit-2.txt\n');
    const settled = await waitUntil(async () => {
      const r = await allEvents(srv, tok, id);
      const drained = r.events.some((e) => e.event_type === 'file_open' && String(e.details.path) === '/tmp/web-audit-2.txt' && Number(BigInt(e.timestamp_ns) / 1_000_000n) >= after - 1000);
      return drained && r.gaps.length > 0 ? r : null;
    }, 'the burst drained and its loss stored as gaps', 60_000);

    const { page } = await openBrowser(t);
    await signIn(page, srv.url, 'aud', 'aud-password-1');
    await page.locator(`#weavers tr[data-id="${id}"] a:text("Audit")`).click();
    await page.locator('#audit-summary', { hasText: 'events' }).waitFor({ timeout: 30_000 });
    await shot(page, '30-audit');
    // gaps: as many marked lines as the API reports
    t.equal(await page.locator('#timeline li.k-gap').count(), settled.gaps.length, `every gap marked (${settled.gaps.length})`);
    t.match(await page.locator('#timeline li.k-gap').first().innerText(), /events lost/);
    // the process tree: cat is indented deeper than the shell that ran it
    const level = async (sel: string) => Number(/lvl-(\d+)/.exec((await page.locator(sel).first().getAttribute('class')) ?? '')?.[1]);
    const sh = await level('#timeline li.k-exec:has-text("/bin/sh")');
    const cat = await level('#timeline li.k-exec:has-text("/bin/cat")');
    t.ok(cat > sh, `cat (level ${cat}) nested under the shell that ran it (level ${sh})`);
    t.ok(await page.locator('#timeline li.k-file', { hasText: '/tmp/web-audit.txt' }).count() > 0, 'the file line');
    t.ok(await page.locator('#timeline li.k-net', { hasText: '127.0.0.1:9' }).count() > 0, 'the network line');
    t.match(await page.locator('#audit-summary').innerText(), new RegExp(`${settled.gaps.length} gaps`));
    await page.locator('#timeline li.k-gap').first().scrollIntoViewIfNeeded();
    await page.screenshot({ path: join(SHOTS, '31-audit-gap.png') });
    t.same(problemsOf(page), [], 'no page errors');
  });
