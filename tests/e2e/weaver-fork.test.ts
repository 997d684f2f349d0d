/**
 * Weavers branch as weavers, through the real server (local backend, real runc containers on
 * overlay layers) and the real CLI: snapshot a running weaver (a layer of what it changed), fork it
 * into a new weaver that inherits image, env, command and files, start a weaver from a snapshot,
 * lineage, SNAPSHOT_IN_USE, and the bad inputs (404 without existence leaks, 400, 409, 429).
 */
import t from 'tap';
import { startServer, loomCli, tempDir, type TestServer } from '../support/server.js';
import { AttachClient, waitUntil } from '../support/attach.js';
import { waitOp, type Op } from '../branching/helpers.js';

type Weaver = { id: string; status: string; reason?: string; org_id: string; image: string; env_keys: string[]; parent_weaver_id?: string; snapshot_id?: string; expires_at: string; lifetime_hours: number };
type Err = { error: { code: string; message: string } };
type Snapshot = { snapshot_id: string; status: string; storage: string; bytes?: number; source_kind: string; container_id: string };

const PROMPT = /\$ /;

async function running(srv: TestServer, token: string, id: string): Promise<Weaver> {
  return waitUntil(async () => {
    const g = await srv.api<Weaver>('GET', `/api/weaver/${id}`, token);
    if (g.body.status === 'failed') throw new Error(`weaver failed: ${g.body.reason}`);
    return g.body.status === 'running' ? g.body : null;
  }, `weaver ${id} running`, 120_000);
}

/** Runs a shell line in the weaver and returns what it printed up to the marker. */
async function sh(srv: TestServer, token: string, id: string, line: string): Promise<string> {
  const a = await AttachClient.connect(srv.url, id, { token });
  try {
    await a.waitFor(PROMPT);
    const mark = `done-${Math.random().toString(36).slice(2, 8)}`;
    const from = a.output.length;
    // the marker is split in the typed line, so only its output matches
    a.send(`${line}; echo ${mark.slice(0, 5)}""${mark.slice(5)}\n`);
    await a.waitFor(new RegExp(`${mark}`), 30_000, from);
    return a.output.slice(from);
  } finally {
    await a.close();
  }
}

t.test('snapshot and fork a running weaver; weavers from snapshots', async (t) => {
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_MAX_CONCURRENT: '3' } });
  const tok = await srv.token('forker');
  const other = await srv.token('stranger');
  t.teardown(async () => {
    for (const tk of [tok, other]) {
      for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tk)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tk);
    }
    await srv.stop();
  });

  const created = await srv.api<Weaver>('POST', '/api/weaver', tok, { env: { SECRET_ISH: 'value-42' }, tags: { role: 'parent' } });
  t.equal(created.status, 202);
  const parent = await running(srv, tok, created.body.id);
  await sh(srv, tok, parent.id, 'echo parent-state > /workspace/state.txt; echo in-root > /tmp/root.txt');

  // --- snapshot: 202 operation with snapshot_id; a layer holding what changed only
  const snapR = await srv.api<Op>('POST', `/api/weaver/${parent.id}/snapshot`, tok, { labels: { why: 'test' } });
  t.equal(snapR.status, 202, JSON.stringify(snapR.body));
  t.ok(snapR.body.snapshot_id);
  const snapOp = await waitOp(srv, tok, snapR.body.operation_id);
  t.equal(snapOp.status, 'succeeded', JSON.stringify(snapOp));
  const sid = snapOp.snapshot_id!;
  const snap = (await srv.api<Snapshot>('GET', `/api/snapshots/${sid}`, tok)).body;
  t.equal(snap.storage, 'layer');
  t.equal(snap.source_kind, 'weaver');
  t.equal(snap.container_id, parent.id);
  t.ok((snap.bytes ?? Infinity) < 1 << 20, `the snapshot holds what changed, not the image (${snap.bytes} bytes)`);
  // the weaver keeps running and changes after the snapshot stay out of it
  await sh(srv, tok, parent.id, 'echo later > /workspace/state.txt');
  t.equal((await srv.api<Weaver>('GET', `/api/weaver/${parent.id}`, tok)).body.status, 'running');

  // --- a weaver from the snapshot: inherits env and files; its own lifetime
  const fromSnap = await srv.api<Weaver>('POST', '/api/weaver', tok, { from_snapshot: sid, lifetime_hours: 1 });
  t.equal(fromSnap.status, 202, JSON.stringify(fromSnap.body));
  t.equal(fromSnap.body.snapshot_id, sid);
  t.equal(fromSnap.body.parent_weaver_id, parent.id);
  t.equal(fromSnap.body.lifetime_hours, 1);
  t.same(fromSnap.body.env_keys, ['SECRET_ISH']);
  await running(srv, tok, fromSnap.body.id);
  const seen = await sh(srv, tok, fromSnap.body.id, 'cat /workspace/state.txt /tmp/root.txt; echo "env=$SECRET_ISH"');
  t.match(seen, /parent-state/, 'the /workspace of the snapshot');
  t.notMatch(seen, /later/, 'not what the parent wrote after it');
  t.match(seen, /in-root/, 'the root filesystem of the snapshot');
  t.match(seen, /env=value-42/, 'env values inherited');

  // --- fork: 202 with the new weaver (pending, parent, snapshot), the state of now
  const forkR = await srv.api<Weaver>('POST', `/api/weaver/${parent.id}/fork`, tok, { tags: { role: 'fork' }, env: { EXTRA: 'x' } });
  t.equal(forkR.status, 202, JSON.stringify(forkR.body));
  t.equal(forkR.body.status, 'pending');
  t.equal(forkR.body.parent_weaver_id, parent.id);
  t.ok(forkR.body.snapshot_id);
  const fork = await running(srv, tok, forkR.body.id);
  const inFork = await sh(srv, tok, fork.id, 'cat /workspace/state.txt; echo "env=$SECRET_ISH/$EXTRA"; echo fork-only > /workspace/fork.txt');
  t.match(inFork, /later/, 'a fork takes the state of now');
  t.match(inFork, /env=value-42\/x/);
  const inParent = await sh(srv, tok, parent.id, 'cat /workspace/fork.txt 2>&1');
  t.match(inParent, /No such file/, 'the parent is untouched by the fork');

  // listed with its parent; env values never in the API's weaver object
  const list = await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok);
  t.equal(list.body.weavers.find((w) => w.id === fork.id)?.parent_weaver_id, parent.id);
  t.notMatch(JSON.stringify(list.body), /value-42/, 'env values are not listed');

  // lineage names the weavers made from the snapshot
  const lin = await srv.api<{ weavers: { id: string }[] }>('GET', `/api/snapshots/${sid}/lineage`, tok);
  t.same(lin.body.weavers.map((w) => w.id), [fromSnap.body.id]);

  // --- bad input, each changing nothing
  const snapsBefore = (await srv.api<{ snapshots: Snapshot[] }>('GET', '/api/snapshots', tok)).body.snapshots.length;
  const unknown = '00000000-0000-4000-8000-000000000000';
  const answers: string[] = [];
  for (const [who, id] of [[tok, unknown], [other, parent.id]] as const) {
    const s = await srv.api<Err>('POST', `/api/weaver/${id}/snapshot`, who, {});
    t.equal(s.status, 404, 'snapshot of an unknown or invisible weaver');
    const f = await srv.api<Err>('POST', `/api/weaver/${id}/fork`, who, {});
    t.equal(f.status, 404, 'fork of an unknown or invisible weaver');
    answers.push(JSON.stringify([s.body, f.body]).replaceAll(id, 'X'));
  }
  t.equal(answers[0], answers[1], 'unknown and invisible weavers get the same answer');
  const invisibleSnap = await srv.api<Err>('POST', '/api/weaver', other, { from_snapshot: sid });
  t.equal(invisibleSnap.status, 404, "another org's snapshot is 404");
  const unknownSnap = await srv.api<Err>('POST', '/api/weaver', other, { from_snapshot: unknown });
  t.equal(unknownSnap.status, 404);
  t.equal(unknownSnap.body.error.message.replace(unknown, 'X'), invisibleSnap.body.error.message.replace(sid, 'X'), 'no existence leak between unknown and invisible');
  const both = await srv.api<Err>('POST', '/api/weaver', tok, { from_snapshot: sid, image: 'loom/default:latest' });
  t.equal(both.status, 400);
  t.equal(both.body.error.code, 'from_snapshot_with_image');
  const tooLong = await srv.api<Err>('POST', `/api/weaver/${parent.id}/fork`, tok, { lifetime_hours: 10_000 });
  t.equal(tooLong.status, 400);
  t.equal(tooLong.body.error.code, 'lifetime_too_long');
  const badBody = await srv.api<Err>('POST', `/api/weaver/${parent.id}/snapshot`, tok, { consistency_mode: 'sort-of' });
  t.equal(badBody.status, 400);
  // three weavers run: the limit (3) is reached, so a fork is 429 and makes nothing
  const full = await srv.api<Err>('POST', `/api/weaver/${parent.id}/fork`, tok, {});
  t.equal(full.status, 429, JSON.stringify(full.body));
  t.equal((await srv.api<{ snapshots: Snapshot[] }>('GET', '/api/snapshots', tok)).body.snapshots.length, snapsBefore, 'no snapshot left by refused forks');
  t.equal((await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers.length, 3, 'no weaver made by refused forks');

  // --- a snapshot weavers run on cannot be deleted; after them it can
  const inUse = await srv.api<Err>('DELETE', `/api/snapshots/${sid}`, tok);
  t.equal(inUse.status, 409);
  t.equal(inUse.body.error.code, 'SNAPSHOT_IN_USE');
  t.equal((await srv.api('DELETE', `/api/weaver/${fromSnap.body.id}`, tok)).status, 204);
  t.equal((await srv.api('DELETE', `/api/snapshots/${sid}`, tok)).status, 204);
  t.equal((await srv.api('GET', `/api/snapshots/${sid}`, tok)).status, 404);

  // --- a weaver that is not running cannot be forked
  const done = await srv.api<Weaver>('POST', '/api/weaver', tok, { command: ['/bin/sh', '-c', 'exit 0'] });
  await waitUntil(async () => (await srv.api<Weaver>('GET', `/api/weaver/${done.body.id}`, tok)).body.status === 'succeeded', 'short weaver exits');
  const notRunning = await srv.api<Err>('POST', `/api/weaver/${done.body.id}/fork`, tok, {});
  t.equal(notRunning.status, 409);
  t.equal(notRunning.body.error.code, 'WEAVER_NOT_RUNNING');

  // --- the CLI: weaver snapshot, fork -d, new --from-snapshot, snapshot lineage
  await srv.api('DELETE', `/api/weaver/${done.body.id}`, tok);
  await srv.api('DELETE', `/api/weaver/${fork.id}`, tok);
  const loom = loomCli(srv, tempDir());
  t.equal((await loom(['login', '--token', tok])).code, 0);
  const cs = await loom(['weaver', 'snapshot', parent.id, '--json']);
  t.equal(cs.code, 0, cs.stderr);
  const cliSnap = JSON.parse(cs.stdout) as Op;
  t.equal(cliSnap.status, 'succeeded');
  const cf = await loom(['weaver', 'fork', parent.id.slice(0, 8), '-d', '--ttl', '1']);
  t.equal(cf.code, 0, cf.stderr);
  const cliFork = cf.stdout.trim();
  t.equal((await srv.api<Weaver>('GET', `/api/weaver/${cliFork}`, tok)).body.parent_weaver_id, parent.id);
  await srv.api('DELETE', `/api/weaver/${cliFork}`, tok);
  const cn = await loom(['new', '--from-snapshot', cliSnap.snapshot_id!, '-d']);
  t.equal(cn.code, 0, cn.stderr);
  const cl = await loom(['snapshot', 'lineage', cliSnap.snapshot_id!]);
  t.equal(cl.code, 0, cl.stderr);
  t.match(cl.stdout, new RegExp(`weavers made from it:[\\s\\S]*${cn.stdout.trim()}`));
  const bad = await loom(['new', '--from-snapshot', cliSnap.snapshot_id!, '--image', 'x']);
  t.not(bad.code, 0);
  t.equal(bad.stderr.trim().split('\n').length, 1, 'one line of error');
});
