/**
 * The branching API end to end through the real server over HTTP, with real runc + conmon
 * containers: the reference walkthrough, fork divergence, app-consistent snapshots, lineage,
 * pins, idempotency, TTL GC, bad input and org scoping.
 */
import t from 'tap';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, type TestServer } from '../support/server.js';
import { cleanupContainers, makeFixture, mutate, containerDirOf, rootfsOf, runtimeState, snapshotExists, snapshotFile, waitOp, type Op } from './helpers.js';
import { waitUntil } from '../support/attach.js';

/** Whether the file exists with exactly this content. */
function fileIs(path: string, content: string): boolean {
  try {
    return readFileSync(path, 'utf8') === content;
  } catch {
    return false;
  }
}

interface Container { id: string; name: string; status: string; source_snapshot_id?: string; org_id: string }
interface Snapshot { snapshot_id: string; parent_snapshot_id: string | null; container_id: string; status: string; pinned: boolean; frozen_ms?: number; expires_at: string | null }
interface Lineage { snapshot_id: string; lineage: { snapshot_id: string; parent_snapshot_id: string | null; container_id: string; created_at: string; depth: number }[] }

const fx = makeFixture();
let srv: TestServer;
let token: string;
let other: string;

t.teardown(() => fx.cleanup());

t.before(async () => {
  // The server's teardown (runtime delete of its containers, leak check) is registered before it
  // starts; the API cleanup below is registered later and so runs first. alice is a server admin
  // registering from an import root (the fixture's folder).
  srv = await startServer({ t, env: { LOOM_SERVER_WEAVER_ENABLED: 'false', LOOM_BRANCHING_GC_INTERVAL_SECS: '1', LOOM_BRANCHING_IMPORT_ROOTS: fx.dir } });
  t.teardown(() => cleanupContainers(srv, [token, other]));
  token = await srv.token('alice', true);
  other = await srv.token('mallory');
});

async function register(name: string, command: string[], start = true): Promise<Container> {
  const op = await mutate(srv, token, 'POST', '/api/containers', { name, rootfs_path: fx.rootfs, command, start_immediately: start });
  if (op.status !== 'succeeded') throw new Error(`register failed: ${JSON.stringify(op)}`);
  return (await srv.api<Container>('GET', `/api/containers/${op.container_id}`, token)).body;
}

async function snapshot(id: string, body: Record<string, unknown> = { consistency_mode: 'crash-consistent' }): Promise<{ op: Op; snap: Snapshot }> {
  const op = await mutate(srv, token, 'POST', `/api/containers/${id}/snapshot`, body);
  const snap = (await srv.api<Snapshot>('GET', `/api/snapshots/${op.snapshot_id}`, token)).body;
  return { op, snap };
}

t.test('walkthrough: register, snapshot, clone immediate; the clone runs and has hello.txt', async (t) => {
  const create = await srv.api<Op>('POST', '/api/containers', token, { name: 'demo', rootfs_path: fx.rootfs, command: ['/bin/sh', '-lc', 'sleep 60'], start_immediately: true });
  t.equal(create.status, 202);
  t.ok(create.body.operation_id);
  t.equal(create.body.status_url, `/api/operations/${create.body.operation_id}`);
  const createOp = await waitOp(srv, token, create.body.operation_id);
  t.equal(createOp.status, 'succeeded', JSON.stringify(createOp));
  t.equal(createOp.progress_pct, 100);
  const cid = createOp.container_id!;
  const c = (await srv.api<Container>('GET', `/api/containers/${cid}`, token)).body;
  t.equal(c.status, 'running');
  t.equal(runtimeState(srv.dataDir, cid), 'running');

  const snapOp = await mutate(srv, token, 'POST', `/api/containers/${cid}/snapshot`, { consistency_mode: 'crash-consistent' });
  t.equal(snapOp.status, 'succeeded', JSON.stringify(snapOp));
  t.same(snapOp.capability_downgrades, ['memory_state: CRIU unavailable; filesystem state only']);
  for (const k of ['operation_id', 'operation_type', 'status', 'progress_pct', 'warnings', 'capability_downgrades', 'started_at', 'updated_at', 'completed_at']) t.ok(k in snapOp, k);
  const sid = snapOp.snapshot_id!;
  t.equal(snapshotFile(srv.dataDir, sid, 'hello.txt'), 'hello\n');

  const cloneOp = await mutate(srv, token, 'POST', `/api/snapshots/${sid}/clone`, { resume_policy: 'immediate' });
  t.equal(cloneOp.status, 'succeeded', JSON.stringify(cloneOp));
  const clone = (await srv.api<Container>('GET', `/api/containers/${cloneOp.result_container_id}`, token)).body;
  t.equal(clone.status, 'running');
  t.equal(clone.source_snapshot_id, sid);
  t.equal(runtimeState(srv.dataDir, clone.id), 'running');
  t.equal(readFileSync(join(rootfsOf(srv.dataDir, clone.id), 'hello.txt'), 'utf8'), 'hello\n');

  // manual resume policy: created but stopped until resume
  const manual = await mutate(srv, token, 'POST', `/api/snapshots/${sid}/clone`, { resume_policy: 'manual', name: 'later' });
  const m = (await srv.api<Container>('GET', `/api/containers/${manual.result_container_id}`, token)).body;
  t.equal(m.status, 'created');
  t.equal(m.name, 'later');
  t.equal(runtimeState(srv.dataDir, m.id), null);
  const res = await mutate(srv, token, 'POST', `/api/containers/${m.id}/resume`);
  t.equal(res.status, 'succeeded', JSON.stringify(res));
  t.equal((await srv.api<Container>('GET', `/api/containers/${m.id}`, token)).body.status, 'running');

  // kill leaves the rootfs; a killed container can still be snapshotted and resumed
  const kill = await mutate(srv, token, 'POST', `/api/containers/${m.id}/kill`);
  t.equal(kill.status, 'succeeded', JSON.stringify(kill));
  t.equal((await srv.api<Container>('GET', `/api/containers/${m.id}`, token)).body.status, 'stopped');
  t.ok(existsSync(join(rootfsOf(srv.dataDir, m.id), 'hello.txt')));
  const again = await srv.api<{ error: { code: string } }>('POST', `/api/containers/${m.id}/kill`, token);
  t.equal(again.status, 409);
  t.equal(again.body.error.code, 'CONTAINER_NOT_RUNNING');

  // delete removes process and files
  const del = await mutate(srv, token, 'DELETE', `/api/containers/${m.id}`);
  t.equal(del.status, 'succeeded');
  t.equal((await srv.api('GET', `/api/containers/${m.id}`, token)).status, 404);
  t.notOk(existsSync(containerDirOf(srv.dataDir, m.id)));
  t.equal(runtimeState(srv.dataDir, m.id), null);
});

t.test('fork: snapshot + clone in one operation; the two trees diverge', async (t) => {
  const parent = await register('parent', ['/bin/sh', '-c', 'sleep 60']);
  writeFileSync(join(rootfsOf(srv.dataDir, parent.id), 'state.txt'), 'v1\n');
  const op = await mutate(srv, token, 'POST', `/api/containers/${parent.id}/fork`, { resume_policy: 'immediate', name: 'child' });
  t.equal(op.status, 'succeeded', JSON.stringify(op));
  t.equal(op.operation_type, 'fork');
  t.ok(op.snapshot_id);
  const childId = op.result_container_id!;
  t.equal(runtimeState(srv.dataDir, childId), 'running');
  const p = rootfsOf(srv.dataDir, parent.id);
  const c = rootfsOf(srv.dataDir, childId);
  t.equal(readFileSync(join(c, 'state.txt'), 'utf8'), 'v1\n');
  writeFileSync(join(p, 'state.txt'), 'parent\n');
  writeFileSync(join(c, 'state.txt'), 'child\n');
  writeFileSync(join(c, 'only-child.txt'), 'x');
  t.equal(readFileSync(join(p, 'state.txt'), 'utf8'), 'parent\n');
  t.equal(readFileSync(join(c, 'state.txt'), 'utf8'), 'child\n');
  t.notOk(existsSync(join(p, 'only-child.txt')));
  t.equal(snapshotFile(srv.dataDir, op.snapshot_id!, 'state.txt'), 'v1\n');
});

t.test('a container process writes its own files; a fork made from it diverges', async (t) => {
  const writer = await register('writer', ['/bin/sh', '-c', 'echo parent > /from-process.txt; sleep 60']);
  await waitUntil(async () => fileIs(join(rootfsOf(srv.dataDir, writer.id), 'from-process.txt'), 'parent\n'), 'the process to write its file');
  const op = await mutate(srv, token, 'POST', `/api/containers/${writer.id}/fork`, { resume_policy: 'manual', command: ['/bin/sh', '-c', 'echo child > /from-process.txt; sleep 60'] });
  t.equal(op.status, 'succeeded');
  const childRoot = rootfsOf(srv.dataDir, op.result_container_id!);
  t.equal(readFileSync(join(childRoot, 'from-process.txt'), 'utf8'), 'parent\n');
  await mutate(srv, token, 'POST', `/api/containers/${op.result_container_id}/resume`);
  await waitUntil(async () => fileIs(join(childRoot, 'from-process.txt'), 'child\n'), "the fork's own process to write its file");
  t.equal(readFileSync(join(childRoot, 'from-process.txt'), 'utf8'), 'child\n');
  t.equal(readFileSync(join(rootfsOf(srv.dataDir, writer.id), 'from-process.txt'), 'utf8'), 'parent\n');
});

t.test('app-consistent snapshot of a busy writer is a frozen state and records frozen time', async (t) => {
  const script = 'i=0; while true; do i=$((i+1)); echo $i >> /log.txt; echo $i > /b.tmp; mv /b.tmp /b.txt; done';
  const w = await register('busy', ['/bin/sh', '-c', script]);
  const log = join(rootfsOf(srv.dataDir, w.id), 'log.txt');
  await waitUntil(async () => existsSync(log) && readFileSync(log, 'utf8').split('\n').length > 100, 'the writer to be busy');
  for (let round = 0; round < 3; round++) {
    const { op, snap } = await snapshot(w.id, { consistency_mode: 'app-consistent' });
    t.equal(op.status, 'succeeded', JSON.stringify(op));
    t.ok(op.warnings.some((x) => /frozen for [0-9.]+ ms/.test(x)), op.warnings.join('; '));
    t.type(snap.frozen_ms, 'number');
    t.ok(snap.frozen_ms! > 0);
    const lines = (snapshotFile(srv.dataDir, snap.snapshot_id, 'log.txt') ?? '').split('\n').filter(Boolean).map(Number);
    const last = lines[lines.length - 1]!;
    t.equal(lines.length, last, 'the log is whole: 1..n');
    const b = Number((snapshotFile(srv.dataDir, snap.snapshot_id, 'b.txt') ?? '').trim());
    t.ok(b === last || b === last - 1, `b.txt (${b}) agrees with the log's last line (${last})`);
  }
  // the writer was thawed: it keeps writing
  const before = readFileSync(log, 'utf8').length;
  await waitUntil(async () => readFileSync(log, 'utf8').length > before, 'the writer to write again after the snapshots');
  t.pass('still running after the snapshot');
  t.equal(runtimeState(srv.dataDir, w.id), 'running');
});

t.test('lineage: snapshot → clone → snapshot → clone', async (t) => {
  const root = await register('lin', ['/bin/sh', '-c', 'sleep 60'], false);
  const s1 = (await snapshot(root.id)).snap;
  const c1 = await mutate(srv, token, 'POST', `/api/snapshots/${s1.snapshot_id}/clone`, { resume_policy: 'manual' });
  const s2 = (await snapshot(c1.result_container_id!)).snap;
  const c2 = await mutate(srv, token, 'POST', `/api/snapshots/${s2.snapshot_id}/clone`, { resume_policy: 'manual' });
  const s3 = (await snapshot(c2.result_container_id!)).snap;
  t.equal(s1.parent_snapshot_id, null);
  t.equal(s2.parent_snapshot_id, s1.snapshot_id);
  t.equal(s3.parent_snapshot_id, s2.snapshot_id);
  const l = await srv.api<Lineage>('GET', `/api/snapshots/${s3.snapshot_id}/lineage`, token);
  t.equal(l.status, 200);
  t.same(
    l.body.lineage.map((n) => [n.snapshot_id, n.parent_snapshot_id, n.container_id, n.depth]),
    [
      [s3.snapshot_id, s2.snapshot_id, c2.result_container_id, 0],
      [s2.snapshot_id, s1.snapshot_id, c1.result_container_id, 1],
      [s1.snapshot_id, null, root.id, 2],
    ],
  );
  for (const n of l.body.lineage) t.ok(n.created_at);
  const l1 = await srv.api<Lineage>('GET', `/api/snapshots/${s1.snapshot_id}/lineage`, token);
  t.equal(l1.body.lineage.length, 1);
});

t.test('pins and in-use snapshots', async (t) => {
  const c = await register('pins', ['/bin/sh', '-c', 'sleep 60'], false);
  const s = (await snapshot(c.id)).snap;
  const pin = await srv.api<Snapshot>('POST', `/api/snapshots/${s.snapshot_id}/pin`, token);
  t.equal(pin.status, 200);
  t.equal(pin.body.pinned, true);
  const del1 = await srv.api<{ error: { code: string; message: string } }>('DELETE', `/api/snapshots/${s.snapshot_id}`, token);
  t.equal(del1.status, 409);
  t.equal(del1.body.error.code, 'SNAPSHOT_PINNED');
  t.equal((await srv.api<Snapshot>('POST', `/api/snapshots/${s.snapshot_id}/unpin`, token)).body.pinned, false);
  const del2 = await srv.api('DELETE', `/api/snapshots/${s.snapshot_id}`, token);
  t.equal(del2.status, 204);
  t.equal((await srv.api<{ error: { code: string } }>('GET', `/api/snapshots/${s.snapshot_id}`, token)).body.error.code, 'SNAPSHOT_NOT_FOUND');
  await waitUntil(async () => !snapshotExists(srv.dataDir, s.snapshot_id), 'the snapshot layer to be removed');
  t.pass('tree removed');

  // a snapshot with a live clone is in use until the clone is deleted
  const s2 = (await snapshot(c.id)).snap;
  const cl = await mutate(srv, token, 'POST', `/api/snapshots/${s2.snapshot_id}/clone`, { resume_policy: 'manual' });
  const inUse = await srv.api<{ error: { code: string; message: string } }>('DELETE', `/api/snapshots/${s2.snapshot_id}`, token);
  t.equal(inUse.status, 409);
  t.equal(inUse.body.error.code, 'SNAPSHOT_IN_USE');
  t.match(inUse.body.error.message, cl.result_container_id!);
  await mutate(srv, token, 'DELETE', `/api/containers/${cl.result_container_id}`);
  t.equal((await srv.api('DELETE', `/api/snapshots/${s2.snapshot_id}`, token)).status, 204);
  const missing = await srv.api<{ error: { code: string } }>('DELETE', `/api/snapshots/${s2.snapshot_id}`, token);
  t.equal(missing.status, 404);
  t.equal(missing.body.error.code, 'SNAPSHOT_NOT_FOUND');
});

t.test('idempotency keys', async (t) => {
  const c = await register('idem', ['/bin/sh', '-c', 'sleep 60'], false);
  const body = { consistency_mode: 'crash-consistent', idempotency_key: 'key-1', labels: { a: 'b' } };
  const a = await srv.api<Op>('POST', `/api/containers/${c.id}/snapshot`, token, body);
  const b = await srv.api<Op>('POST', `/api/containers/${c.id}/snapshot`, token, { labels: { a: 'b' }, idempotency_key: 'key-1', consistency_mode: 'crash-consistent' });
  t.equal(a.status, 202);
  t.equal(b.status, 202);
  t.equal(b.body.operation_id, a.body.operation_id);
  t.equal(b.body.snapshot_id, a.body.snapshot_id);
  await waitOp(srv, token, a.body.operation_id);
  const after = await srv.api<Op>('POST', `/api/containers/${c.id}/snapshot`, token, body);
  t.equal(after.body.operation_id, a.body.operation_id, 'still the same after completion');
  const conflict = await srv.api<{ error: { code: string } }>('POST', `/api/containers/${c.id}/snapshot`, token, { ...body, consistency_mode: 'app-consistent' });
  t.equal(conflict.status, 409);
  t.equal(conflict.body.error.code, 'IDEMPOTENCY_CONFLICT');
  const snaps = await srv.api<{ snapshots: Snapshot[] }>('GET', `/api/snapshots?container_id=${c.id}`, token);
  t.equal(snaps.body.snapshots.length, 1, 'one snapshot for the key');
});

t.test('TTL garbage collection of expired unpinned snapshots; pinned ones survive', async (t) => {
  const c = await register('ttl', ['/bin/sh', '-c', 'sleep 60'], false);
  const gone = (await snapshot(c.id, { consistency_mode: 'crash-consistent', ttl_seconds: 1 })).snap;
  const kept = (await snapshot(c.id, { consistency_mode: 'crash-consistent', ttl_seconds: 1 })).snap;
  t.ok(gone.expires_at);
  t.equal((await srv.api<Snapshot>('POST', `/api/snapshots/${kept.snapshot_id}/pin`, token)).body.pinned, true);
  // A marker that expires after the pinned one: once the collector has taken it, a collection ran
  // after the pinned snapshot's expiry too, and would have taken it were the pin ignored.
  const marker = (await snapshot(c.id, { consistency_mode: 'crash-consistent', ttl_seconds: 1 })).snap;
  t.ok(Date.parse(marker.expires_at!) >= Date.parse(kept.expires_at!), 'the marker expires no earlier than the pinned snapshot');
  await waitUntil(async () => (await srv.api('GET', `/api/snapshots/${gone.snapshot_id}`, token)).status === 404, 'the expired snapshot to be collected', 20_000);
  await waitUntil(async () => (await srv.api('GET', `/api/snapshots/${marker.snapshot_id}`, token)).status === 404, 'the marker to be collected', 20_000);
  await waitUntil(async () => !snapshotExists(srv.dataDir, gone.snapshot_id), 'the expired layer to be removed');
  t.pass('expired snapshot and its tree collected');
  t.equal((await srv.api('GET', `/api/snapshots/${kept.snapshot_id}`, token)).status, 200, 'pinned survives');
  t.ok(snapshotExists(srv.dataDir, kept.snapshot_id));
});

t.test('bad input', async (t) => {
  const bad = async (body: unknown, code?: string) => {
    const r = await srv.api<{ error: { code: string; message: string } }>('POST', '/api/containers', token, body);
    t.equal(r.status, 400, JSON.stringify(body));
    if (code) t.equal(r.body.error.code, code, r.body.error.message);
    return r.body.error;
  };
  const ok = { name: 'x', rootfs_path: fx.rootfs, command: ['/bin/true'] };
  await bad({ ...ok, rootfs_path: 'relative/rootfs' }, 'INVALID_ROOTFS_PATH');
  await bad({ ...ok, rootfs_path: '/' }, 'INVALID_ROOTFS_PATH');
  await bad({ ...ok, rootfs_path: `${fx.rootfs}/../rootfs` }, 'INVALID_ROOTFS_PATH');
  await bad({ ...ok, rootfs_path: '/nonexistent/rootfs' }, 'INVALID_ROOTFS_PATH');
  await bad({ ...ok, rootfs_path: join(fx.rootfs, 'hello.txt') }, 'INVALID_ROOTFS_PATH');
  await bad({ ...ok, rootfs_path: join(fx.rootfs, 'bin', 'sh') }, 'INVALID_ROOTFS_PATH');
  await bad({ ...ok, rootfs_path: join(srv.dataDir, 'branching') }, 'INVALID_ROOTFS_PATH');
  await bad({ ...ok, command: '/bin/sh -c "sleep 60"' }, 'invalid_request');
  await bad({ ...ok, command: [] }, 'invalid_request');
  await bad({ ...ok, shell: true }, 'invalid_request');
  await bad({ ...ok, env: { 'BAD-KEY': 'x' } }, 'INVALID_ENV');
  const c = await register('badinput', ['/bin/sh', '-c', 'sleep 60'], false);
  for (const body of [{ consistency_mode: 'eventually' }, {}, { consistency_mode: 'crash-consistent', extra: 1 }, { consistency_mode: 'crash-consistent', ttl_seconds: '5' }]) {
    const r = await srv.api<{ error: { code: string } }>('POST', `/api/containers/${c.id}/snapshot`, token, body);
    t.equal(r.status, 400, JSON.stringify(body));
  }
  const s = (await snapshot(c.id)).snap;
  for (const body of [{ resume_policy: 'later' }, { resume_policy: 'manual', bogus: 1 }, {}]) {
    t.equal((await srv.api('POST', `/api/snapshots/${s.snapshot_id}/clone`, token, body)).status, 400, JSON.stringify(body));
  }
  t.equal((await srv.api<{ error: { code: string } }>('GET', '/api/containers/nope', token)).body.error.code, 'CONTAINER_NOT_FOUND');
  t.equal((await srv.api<{ error: { code: string } }>('POST', '/api/snapshots/nope/clone', token, { resume_policy: 'manual' })).body.error.code, 'SNAPSHOT_NOT_FOUND');
  t.equal((await srv.api('GET', '/api/operations/nope', token)).status, 404);
  t.equal((await srv.api('GET', '/api/containers', null)).status, 401);
});

t.test("another org's containers, snapshots and operations are 404", async (t) => {
  const c = await register('private', ['/bin/sh', '-c', 'sleep 60'], false);
  const { op, snap } = await snapshot(c.id);
  const owned = async () => ({
    container: (await srv.api<Container>('GET', `/api/containers/${c.id}`, token)).body,
    snapshot: (await srv.api<Snapshot>('GET', `/api/snapshots/${snap.snapshot_id}`, token)).body,
    containers: (await srv.api<{ containers: Container[] }>('GET', '/api/containers', token)).body.containers.map((x) => x.id).sort(),
    snapshots: (await srv.api<{ snapshots: Snapshot[] }>('GET', '/api/snapshots', token)).body.snapshots.map((x) => x.snapshot_id).sort(),
  });
  const before = await owned();
  // Reads first, then calls that create or change state, destructive ones last: were isolation
  // broken, an early delete must not make the later checks pass on objects that are gone.
  const paths: [string, string, unknown?][] = [
    ['GET', `/api/containers/${c.id}`],
    ['GET', `/api/snapshots/${snap.snapshot_id}`],
    ['GET', `/api/snapshots/${snap.snapshot_id}/lineage`],
    ['GET', `/api/operations/${op.operation_id}`],
    ['POST', `/api/containers/${c.id}/snapshot`, { consistency_mode: 'crash-consistent' }],
    ['POST', `/api/containers/${c.id}/fork`, { resume_policy: 'manual' }],
    ['POST', `/api/snapshots/${snap.snapshot_id}/clone`, { resume_policy: 'manual' }],
    ['POST', `/api/snapshots/${snap.snapshot_id}/pin`, {}],
    ['POST', `/api/snapshots/${snap.snapshot_id}/unpin`, {}],
    ['POST', `/api/containers/${c.id}/resume`, {}],
    ['POST', `/api/containers/${c.id}/kill`, {}],
    ['DELETE', `/api/snapshots/${snap.snapshot_id}`],
    ['DELETE', `/api/containers/${c.id}`],
  ];
  t.equal((await srv.api<{ containers: unknown[] }>('GET', '/api/containers', other)).body.containers.length, 0);
  t.equal((await srv.api<{ snapshots: unknown[] }>('GET', '/api/snapshots', other)).body.snapshots.length, 0);
  // registering into an org one is not a member of
  const r = await srv.api('POST', '/api/containers', other, { name: 'x', rootfs_path: fx.rootfs, command: ['/bin/true'], org_id: c.org_id });
  t.equal(r.status, 404, 'registering into the org is 404');
  for (const [m, p, b] of paths) t.equal((await srv.api(m, p, other, b)).status, 404, `${m} ${p}`);
  // Nothing of the owner's changed: same objects, same state, nothing new in the org.
  const after = await owned();
  t.equal(after.container.status, before.container.status, 'the container is untouched');
  t.equal(after.snapshot.pinned, false, 'the snapshot is not pinned');
  t.same(after, before, "the owner's containers and snapshots are all still there, unchanged");
  t.equal(runtimeState(srv.dataDir, c.id), null, 'the created container was not started');
});
