/**
 * Issue 12 item 5 with real BPF: what a user does to a weaver through the API is in its audit
 * trail. An exec over POST and one over the WebSocket (each of a marker binary that exits 7) and a
 * file written with PUT /api/weaver/:id/files must all come back from GET /api/weaver/:id/audit.
 * They are seen by the same kernel capture as everything else: exec runs through `runc exec`, in
 * the weaver's cgroup, and the files API writes through the weaver's own toolbox (cat into a
 * temporary name, then a rename onto the path), so nothing is recorded by the server on the
 * kernel's behalf.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { startServer, type TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { LoomClient } from '../../src/client/index.js';
import { allEvents, bpfUnavailable, buildWorkload, importWorkloadImage, sidecarReady, skipOrFail, type AuditEventView } from './helpers.js';

t.setTimeout(600_000);

const why = bpfUnavailable();
if (why) skipOrFail(t, why);
else
  t.test('exec (POST and WebSocket) and file writes through the API are in the audit trail', async (t) => {
    const workload = buildWorkload(t);
    const srv: TestServer = await startServer({
      env: { LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'true', LOOM_SERVER_WEAVER_AUDIT_METRICS_PORT: '0', LOOM_SERVER_WEAVER_AUDIT_HEALTH_PORT: '0' },
    });
    const admin = await srv.token('xf-admin', true);
    const aliceTok = await srv.token('alice');
    const alice = new LoomClient({ serverUrl: srv.url, token: aliceTok });
    t.teardown(async () => {
      for (const w of await alice.listWeavers().catch(() => [])) await alice.deleteWeaver(w.id).catch(() => undefined);
      await srv.stop();
    });
    const image = await importWorkloadImage(t, srv, admin, workload);
    await waitUntil(async () => sidecarReady(srv), 'the audit sidecar to be ready', 60_000);
    const w = await alice.waitUntilRunning((await alice.createWeaver({ image, command: ['sleep', '3600'] })).id, { timeoutMs: 120_000 });

    const tag = randomBytes(4).toString('hex');
    const post = await alice.exec(w.id, ['/bin/audit-workload', 'marker', `post-${tag}`]);
    t.equal(post.exit_code, 7, 'the POST exec ran the marker');
    const session = await alice.execStream(w.id, ['/bin/audit-workload', 'marker', `ws-${tag}`]);
    session.stdout.resume();
    session.stderr.resume();
    t.equal(await session.exit, 7, 'the WebSocket exec ran the marker');
    const path = `/tmp/put-${tag}.txt`;
    t.same(await alice.writeFile(w.id, path, 'written through the files API'), { path, bytes: 29 });

    const argvOf = (e: AuditEventView) => (e.details.argv as string[] | undefined) ?? [];
    const found = await waitUntil(async () => {
      const { events, gaps } = await allEvents(srv, aliceTok, w.id);
      const execOf = (arg: string) => events.find((e) => e.event_type === 'process_exec' && argvOf(e)[1] === 'marker' && argvOf(e)[2] === arg);
      const exitOf = (x: AuditEventView | undefined) => x && events.find((e) => e.event_type === 'process_exit' && e.exec_id === x.exec_id);
      const p = execOf(`post-${tag}`), s = execOf(`ws-${tag}`);
      const rename = events.find((e) => e.event_type === 'file_write' && e.details.new_path === path);
      if (!exitOf(p) || !exitOf(s) || !rename) return null;
      return { events, gaps, p: p!, s: s!, pExit: exitOf(p)!, sExit: exitOf(s)!, rename };
    }, 'the exec and the file write in the audit trail', 60_000);

    t.same(found.gaps, [], 'nothing lost');
    t.ok(found.events.every((e) => e.weaver_id === w.id), "every event is this weaver's");
    for (const [what, x, exit] of [['POST', found.p, found.pExit], ['WebSocket', found.s, found.sExit]] as const) {
      t.equal(x.details.filename, '/bin/audit-workload', `${what} exec: the binary`);
      t.equal(x.ret, 0, `${what} exec succeeded`);
      t.equal(exit.ret, 7, `${what} exec: its exit code`);
    }
    // the upload: cat opens a temporary name for writing, then mv renames it onto the path
    const tmp = String(found.rename.details.path);
    t.match(tmp, new RegExp(`^/tmp/\\.put-${tag}\\.txt\\.loom-upload-`), 'renamed from the upload temp file');
    t.equal(found.rename.ret, 0, 'the rename succeeded');
    const open = found.events.find((e) => e.event_type === 'file_open' && e.details.path === tmp);
    t.ok(open && open.details.write === true && open.details.create === true && open.ret >= 0, 'the temp file was opened for writing and created');
    // and who did it: the toolbox shell the server ran, with the path in its argv
    t.ok(
      found.events.some((e) => e.event_type === 'process_exec' && argvOf(e).includes(path) && [found.rename.exec_id, found.rename.parent_exec_id].includes(e.exec_id)),
      'the rename was done by the toolbox exec that carries the path (or its child)',
    );
  });
