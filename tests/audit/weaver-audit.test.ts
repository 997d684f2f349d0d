/**
 * The audit end to end with real BPF: loom-server (local backend, audit enabled) starts its
 * loom-audit-sidecar, a real weaver runs a workload with known counts, and what the API returns
 * must equal what was generated — per type, with the right results — while the same workload
 * run on the host at the same time adds nothing. Also: org isolation, bad query parameters, the
 * CLI timeline, the sidecar's metrics and health, and a sidecar restarted after it was killed.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, loomCli, tempDir, type TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { allEvents, bpfUnavailable, buildWorkload, importWorkloadImage, sidecarReady, skipOrFail, weaverOutput, type AuditEventView } from './helpers.js';

type Weaver = { id: string; status: string; reason?: string; org_id: string };

const N = 7; // marker execs
const M = 11; // file creations
const K = 5; // accepted loopback connects

// many real steps (two servers' worth of weavers, a sidecar restart) on a shared 2-core machine
t.setTimeout(600_000);

const why = bpfUnavailable();
if (why) skipOrFail(t, why);
else
  t.test('a real weaver: captured equals generated, per type, with results; the host adds nothing', async (t) => {
    const workload = buildWorkload(t);
    const srv: TestServer = await startServer({
      env: { LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'true', LOOM_SERVER_WEAVER_AUDIT_METRICS_PORT: '0', LOOM_SERVER_WEAVER_AUDIT_HEALTH_PORT: '0' },
    });
    const admin = await srv.token('audit-admin', true);
    const alice = await srv.token('alice');
    const mallory = await srv.token('mallory');
    t.teardown(async () => {
      for (const tok of [alice, admin, mallory]) for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
      await srv.stop();
    });
    const image = await importWorkloadImage(t, srv, admin, workload);
    await waitUntil(async () => sidecarReady(srv), 'the audit sidecar to be ready', 60_000);

    // the same workload on the host, at the same time (its own temp dir)
    const hostDir = mkdtempSync(join(tmpdir(), 'loom-audit-host-'));
    t.teardown(() => rmSync(hostDir, { recursive: true, force: true }));
    const create = await srv.api<Weaver>('POST', '/api/weaver', alice, { image, command: ['/bin/audit-workload', 'run', String(N), String(M), String(K), '/tmp'] });
    t.equal(create.status, 202, JSON.stringify(create.body));
    const id = create.body.id;
    const host = spawn(workload, ['run', String(N), String(M), String(K), hostDir], { stdio: ['ignore', 'pipe', 'inherit'] });
    const hostDone = new Promise<number | null>((r) => host.on('exit', r));

    const done = await waitUntil(async () => {
      const g = await srv.api<Weaver>('GET', `/api/weaver/${id}`, alice);
      if (g.body.status === 'failed') throw new Error(`weaver failed: ${g.body.reason}`);
      return g.body.status === 'succeeded' ? g.body : null;
    }, 'the workload weaver to finish', 60_000);
    t.equal(done.status, 'succeeded');
    t.equal(await hostDone, 0, 'the host workload ran');
    const out = await weaverOutput(srv, alice, id);
    const m = /RESULT (\{.*\})/.exec(out);
    t.ok(m, `the workload reported its results: ${out}`);
    const res = JSON.parse(m![1]!) as { markers: number; port: number; listen: number; connected: number; accepted: number; setuid: number; unshare: number; memfd: number; mprotect: number };
    t.equal(res.markers, N, 'every marker exec exited 7');
    t.equal(res.accepted, K);

    // the workload's own exit is its last event: once stored, everything before it is too
    const all = await waitUntil(async () => {
      const { events, gaps } = await allEvents(srv, alice, id);
      const root = events.find((e) => e.event_type === 'process_exec' && (e.details.argv as string[])?.[1] === 'run');
      if (!root) return null;
      return events.some((e) => e.event_type === 'process_exit' && e.exec_id === root.exec_id) ? { events, gaps, root } : null;
    }, 'the workload exit to be stored', 60_000);
    const ev = all.events;
    const of = (type: string, f: (e: AuditEventView) => boolean = () => true) => ev.filter((e) => e.event_type === type && f(e));

    t.same(all.gaps, [], 'nothing was lost');
    t.ok(ev.every((e) => e.weaver_id === id && e.org_id === create.body.org_id), 'every event carries the weaver and its org');
    t.notOk(ev.some((e) => e.pid === host.pid), 'no event of the host workload');

    const root = all.root;
    t.equal(root.details.filename, '/bin/audit-workload', 'exec filename from the bprm');
    t.same(root.details.argv, ['/bin/audit-workload', 'run', String(N), String(M), String(K), '/tmp'], 'argv');
    t.equal(root.details.cwd, '/tmp', 'cwd (the image working dir)');
    // Like pids, uids are the kernel's (host) ids: the image user 1000 under the default user-namespace base.
    t.equal(root.uid, 100000 + 1000, 'the image user, as the host sees it');
    t.equal(root.ret, 0);

    const markers = of('process_exec', (e) => (e.details.argv as string[])?.[1] === 'marker');
    t.equal(markers.length, N, `${N} marker execs captured (host markers excluded)`);
    t.ok(markers.every((e) => e.ret === 0 && e.parent_exec_id === root.exec_id), 'each marker exec succeeded under the workload');
    const markerExits = of('process_exit', (e) => markers.some((x) => x.exec_id === e.exec_id));
    t.equal(markerExits.length, N, 'each marker exit captured');
    t.ok(markerExits.every((e) => e.ret === 7 && e.details.code === 7), 'with exit code 7');
    t.equal(of('process_fork', (e) => e.exec_id === root.exec_id).length, N, 'one fork per marker');
    const rootExit = of('process_exit', (e) => e.exec_id === root.exec_id);
    t.equal(rootExit.length, 1);
    t.equal(rootExit[0]!.ret, 0, 'the workload exited 0');

    const files = of('file_open', (e) => String(e.details.path).startsWith('/tmp/audit-file-'));
    t.equal(files.length, M, `${M} file creations`);
    t.ok(files.every((e) => e.ret >= 0 && e.details.create === true && e.details.write === true), 'created for writing, opened');
    t.equal(new Set(files.map((e) => e.details.path)).size, M, 'each file once');

    const listens = of('network_listen');
    t.equal(listens.length, 1, 'one listen');
    t.equal(listens[0]!.details.local_port, res.port);
    t.equal(listens[0]!.details.local_addr, '127.0.0.1');
    const connects = of('network_connect');
    t.equal(connects.length, K, `${K} connects`);
    t.ok(connects.every((e) => e.ret === 0 && e.details.remote_addr === '127.0.0.1' && e.details.remote_port === res.port), 'to the listener, succeeded');
    const accepts = of('network_accept');
    t.equal(accepts.length, K, `${K} accepts`);
    t.ok(accepts.every((e) => e.ret >= 0 && e.details.local_port === res.port && e.details.remote_addr === '127.0.0.1'), 'accepted on the listener from loopback');
    t.same(new Set(accepts.map((e) => e.details.remote_port)), new Set(connects.map((e) => e.details.local_port)), 'each accept is one of the connects');

    const setuid = of('privilege_change', (e) => e.details.syscall === 'setuid');
    t.equal(setuid.length, 1, 'one setuid');
    t.same(setuid[0]!.details.ids, [0]);
    t.equal(setuid[0]!.ret, res.setuid, `setuid(0) result as the workload saw it (${res.setuid})`);
    t.ok(res.setuid < 0, 'setuid(0) failed for uid 1000');
    const unshare = of('sandbox_escape', (e) => e.details.syscall === 'unshare');
    t.equal(unshare.length, 1, 'one unshare');
    t.equal(unshare[0]!.details.flags, '0x10000000', 'CLONE_NEWUSER');
    t.equal(unshare[0]!.ret, res.unshare, 'unshare result as the workload saw it');
    const memfd = of('memory_exec', (e) => e.details.syscall === 'memfd_create');
    t.equal(memfd.length, 1, 'one memfd_create');
    t.equal(memfd[0]!.details.name, 'audit-memfd');
    t.equal(memfd[0]!.ret, res.memfd);
    const mprot = of('memory_exec', (e) => e.details.syscall === 'mprotect');
    t.equal(mprot.length, 1, 'one mprotect adding PROT_EXEC');
    t.equal(mprot[0]!.details.prot, 5);
    t.equal(mprot[0]!.ret, res.mprotect);

    // sequence numbers: unique and gapless per boot
    const seqs = ev.filter((e) => e.boot_id === ev[0]!.boot_id).map((e) => e.seq).sort((a, b) => a - b);
    t.equal(new Set(seqs).size, seqs.length, 'no duplicate seq');

    await t.test('filters, paging and bad query parameters', async (t) => {
      const only = await allEvents(srv, alice, id, 'type=network_connect,network_accept');
      t.equal(only.events.length, 2 * K);
      const byPid = await allEvents(srv, alice, id, `pid=${root.pid}`);
      t.ok(byPid.events.length > 0 && byPid.events.every((e) => e.pid === root.pid));
      const p1 = await srv.api<{ events: AuditEventView[]; next_cursor: string }>('GET', `/api/weaver/${id}/audit?limit=3`, alice);
      t.equal(p1.body.events.length, 3);
      const p2 = await srv.api<{ events: AuditEventView[] }>('GET', `/api/weaver/${id}/audit?limit=3&cursor=${p1.body.next_cursor}`, alice);
      t.ok(p2.body.events[0]!.id > p1.body.events[2]!.id, 'the cursor continues after the page');
      const last = ev[ev.length - 1]!;
      const until = await allEvents(srv, alice, id, `until=${root.timestamp_ns}`);
      t.notOk(until.events.some((e) => BigInt(e.timestamp_ns) >= BigInt(root.timestamp_ns)), 'until is exclusive');
      const since = await allEvents(srv, alice, id, `since=${last.timestamp_ns}`);
      t.ok(since.events.every((e) => BigInt(e.timestamp_ns) >= BigInt(last.timestamp_ns)));
      for (const q of ['type=nope', 'limit=0', 'limit=99999', 'since=yesterday', 'pid=-1', 'cursor=abc', 'until=1&since=2', 'extra=1']) {
        const r = await srv.api<{ error: { code: string } }>('GET', `/api/weaver/${id}/audit?${q}`, alice);
        t.equal(r.status, 400, `${q} → 400`);
        t.ok(r.body.error?.code, 'a JSON error');
      }
    });

    await t.test('org isolation: another org sees 404, no token 401', async (t) => {
      const r = await srv.api<{ error: { code: string } }>('GET', `/api/weaver/${id}/audit`, mallory);
      t.equal(r.status, 404);
      const f = await srv.api('GET', `/api/weaver/${id}/audit?follow=true`, mallory);
      t.equal(f.status, 404, 'the follow stream too');
      t.equal((await srv.api('GET', `/api/weaver/${id}/audit`, null)).status, 401);
    });

    await t.test('the CLI timeline', async (t) => {
      const cli = loomCli(srv, tempDir());
      t.equal((await cli(['login', '--token', alice])).code, 0);
      const tl = await cli(['weaver', 'audit', id]);
      t.equal(tl.code, 0, tl.stderr);
      const lines = tl.stdout.trim().split('\n');
      const rootLine = lines.findIndex((l) => l.includes('exec /bin/audit-workload ["/bin/audit-workload","run"'));
      t.ok(rootLine >= 0, 'the workload exec is in the timeline');
      const markerLine = lines.find((l) => l.includes('"marker"'))!;
      const indent = (l: string) => /^\S+  ( *)/.exec(l)![1]!.length;
      t.ok(indent(markerLine) > indent(lines[rootLine]!), 'a marker exec is nested under the workload');
      t.ok(lines.some((l) => /exit pid=\d+ code 7/.test(l)), 'marker exits with their code');
      t.ok(lines.some((l) => l.includes(`connect 127.0.0.1:${res.port}`)), 'connect lines');
      t.ok(lines.some((l) => /setuid\(0\) = -EPERM/.test(l)), 'the failed setuid with its errno');
      const js = await cli(['weaver', 'audit', id, '--json', '--type', 'network_accept']);
      const parsed = js.stdout.trim().split('\n').map((l) => JSON.parse(l) as AuditEventView);
      t.equal(parsed.length, K, 'JSON lines, filtered');
      const bad = await cli(['weaver', 'audit', id, '--type', 'bogus']);
      t.not(bad.code, 0);
      t.equal(bad.stderr.trim().split('\n').length, 1, 'one line of error');
    });

    await t.test('sidecar metrics and health are fed by real counts', async (t) => {
      const ready = sidecarReady(srv)!;
      const h = await fetch(`http://127.0.0.1:${ready.health_port}/health`);
      t.equal(h.status, 200);
      const hj = (await h.json()) as { status: string; components: { ebpf: { programs_attached: number; programs_expected: number }; server: { last_successful_send: string } } };
      t.equal(hj.status, 'healthy', JSON.stringify(hj));
      t.ok(hj.components.ebpf.programs_attached > 50 && hj.components.ebpf.programs_attached === hj.components.ebpf.programs_expected);
      t.ok(hj.components.server.last_successful_send);
      const text = await (await fetch(`http://127.0.0.1:${ready.metrics_port}/metrics`)).text();
      const val = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
      t.ok(val(/^loom_weaver_audit_events_captured_total\{type="process_exec"\} (\d+)/m) >= N + 1, 'captured by type');
      t.ok(val(/^loom_weaver_audit_events_sent_total (\d+)/m) >= ev.length, 'sent counts what the server stored');
      t.equal(val(/^loom_weaver_audit_ebpf_ring_buffer_dropped_events_total (\d+)/m), 0);
      t.match(text, /loom_weaver_audit_ebpf_programs_attached\{program="on_exec"\} 1/);
      t.match(text, /loom_weaver_audit_buffer_bytes 0/);
    });

    await t.test('ingest: the credential decides the weaver; replay is idempotent', async (t) => {
      // the local sidecar's credential, as loom-server wrote it for the sidecar (0600 in the data dir)
      const token = readFileSync(join(srv.dataDir, 'audit', 'token'), 'utf8').trim();
      const base = { ...ev[0]!, boot_id: 'replay-test', seq: 1 } as Record<string, unknown>;
      delete base.id;
      const post = (events: unknown[], tok: string | null = token) => srv.api<{ inserted: number; duplicates: number; error?: { code: string } }>('POST', '/internal/audit/events', tok, { events });
      const first = await post([base, { ...base, seq: 2 }]);
      t.equal(first.status, 200, JSON.stringify(first.body));
      t.equal(first.body.inserted, 2);
      const again = await post([base, { ...base, seq: 2 }]);
      t.equal(again.body.inserted, 0, 'a replayed batch stores nothing twice');
      t.equal(again.body.duplicates, 2);
      const stored = await allEvents(srv, alice, id);
      t.equal(stored.events.filter((e) => e.boot_id === 'replay-test').length, 2);
      // another org's weaver (never registered with this sidecar), a forged org, a forged owner
      const other = await srv.api<Weaver>('POST', '/api/weaver', mallory, { command: ['/bin/true'] });
      for (const [what, forged] of [
        ['an unregistered weaver', { ...base, seq: 3, weaver_id: other.body.id, org_id: other.body.org_id }],
        ['a forged org', { ...base, seq: 4, org_id: other.body.org_id }],
        ['a forged owner', { ...base, seq: 5, owner_user_id: 'someone-else' }],
      ] as const) {
        const r = await post([{ ...base, seq: 6 }, forged]);
        t.equal(r.status, 403, `${what} → 403`);
      }
      t.equal((await allEvents(srv, alice, id)).events.filter((e) => e.boot_id === 'replay-test').length, 2, 'a refused batch stores nothing');
      t.equal((await post([base], 'loom_audit_nope')).status, 401, 'a wrong credential → 401');
      t.equal((await post([base], alice)).status, 401, 'a user token is not an audit credential');
      t.equal((await post(Array.from({ length: 1001 }, (_, i) => ({ ...base, seq: 100 + i })))).status, 400, 'more than 1000 events → 400');
      t.equal((await post([{ ...base, seq: 7, event_type: 'made_up' }])).status, 400, 'an unknown type → 400');
    });

    await t.test('a sidecar killed with -9 is restarted and takes the running weavers up again', async (t) => {
      const w = await srv.api<Weaver>('POST', '/api/weaver', alice, { image, command: ['/bin/sh', '-c', 'while :; do /bin/audit-workload marker; sleep 0.2; done'] });
      t.equal(w.status, 202);
      await waitUntil(async () => (await allEvents(srv, alice, w.body.id, 'type=process_exec')).events.some((e) => (e.details.argv as string[])?.[1] === 'marker'), 'a marker exec of the looping weaver');
      const before = sidecarReady(srv)!;
      const pid = Number(readFileSync(join(srv.dataDir, 'audit', 'sidecar.pid'), 'utf8'));
      process.kill(pid, 'SIGKILL');
      const after = await waitUntil(async () => {
        const r = sidecarReady(srv);
        return r && r.boot_id !== before.boot_id ? r : null;
      }, 'a new sidecar', 60_000);
      t.not(after.boot_id, before.boot_id, 'a new sidecar run');
      const fresh = await waitUntil(async () => {
        const { events } = await allEvents(srv, alice, w.body.id, 'type=process_exec');
        return events.find((e) => e.boot_id === after.boot_id && (e.details.argv as string[])?.[1] === 'marker') ?? null;
      }, 'marker execs reported by the new sidecar', 60_000);
      t.equal(fresh.weaver_id, w.body.id, 'the running weaver is audited again, without being recreated');
      t.equal(fresh.seq >= 1, true);

      // the follow stream: new events arrive as they are stored
      const abort = new AbortController();
      const res = await fetch(`${srv.url}/api/weaver/${w.body.id}/audit?follow=true&type=process_exec&cursor=${encodeURIComponent(Buffer.from(`a1:${fresh.id}`).toString('base64url'))}`, {
        headers: { authorization: `Bearer ${alice}` },
        signal: abort.signal,
      });
      t.equal(res.status, 200);
      const reader = res.body!.getReader();
      let text = '';
      while (!/event: event\nid: [^\n]*\ndata: [^\n]*"marker"/.test(text)) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      abort.abort();
      const got = JSON.parse(/event: event\nid: .*\ndata: (.*)/.exec(text)![1]!) as { id: number; event_type: string };
      t.ok(got.id > fresh.id && got.event_type === 'process_exec', 'a live event after the cursor');
    });
  });
