/**
 * loom-server killed (SIGKILL) at the worst moments of branching:
 *  - while an app-consistent snapshot holds a container, or a weaver, frozen: after restart the
 *    source is thawed (runc says running, the API says running, resume says already running);
 *  - in the clone phase of a fork: after restart the fork's container record and files and the
 *    intermediate snapshot are gone, and the source is untouched.
 * LOOM_BRANCHING_TEST_DELAY_MS makes the work sleep after each copy (inside the freeze for an
 * app-consistent snapshot), so the kill lands in a known phase; the test waits on that phase.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { freshDataDir, startServer, type TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { cleanupContainers, forceRuntimeCleanup, makeFixture, mutate, containerDirOf, rootfsOf, runtimeState, snapshotExists, snapshotFile, type Op } from './helpers.js';

const weaverRuntimeState = (dataDir: string, id: string): string | null => {
  const r = spawnSync('runc', ['--root', join(dataDir, 'local', 'runc'), 'state', id], { encoding: 'utf8' });
  return r.status === 0 ? (JSON.parse(r.stdout) as { status: string }).status : null;
};

t.test('a container frozen by an app-consistent snapshot is thawed after a crash', async (t) => {
  const fx = makeFixture();
  const dataDir = freshDataDir();
  const env = { LOOM_SERVER_WEAVER_ENABLED: 'false', LOOM_BRANCHING_IMPORT_ROOTS: fx.dir };
  let srv: TestServer = await startServer({ dataDir, keepData: true, env });
  let token = await srv.token('alice', true);
  t.teardown(async () => {
    await cleanupContainers(srv, [token]).catch(() => undefined);
    await srv.stop();
    forceRuntimeCleanup(dataDir);
    rmSync(dataDir, { recursive: true, force: true });
    fx.cleanup();
  });
  const create = await mutate(srv, token, 'POST', '/api/containers', { name: 'f', rootfs_path: fx.rootfs, command: ['/bin/sh', '-c', 'sleep 300'], start_immediately: true });
  t.equal(create.status, 'succeeded');
  const cid = create.container_id!;
  await srv.stop();
  srv = await startServer({ dataDir, keepData: true, env: { ...env, LOOM_BRANCHING_TEST_DELAY_MS: '60000' } });
  const snap = await srv.api<Op>('POST', `/api/containers/${cid}/snapshot`, token, { consistency_mode: 'app-consistent' });
  t.equal(snap.status, 202);
  await waitUntil(async () => runtimeState(dataDir, cid) === 'paused', 'container frozen by the snapshot');
  await srv.stop('SIGKILL');
  t.equal(runtimeState(dataDir, cid), 'paused', 'the crash left it frozen (what restart must undo)');

  srv = await startServer({ dataDir, keepData: true, env });
  token = await srv.token('alice', true);
  t.equal(runtimeState(dataDir, cid), 'running', 'thawed at start');
  t.equal((await srv.api<{ status: string }>('GET', `/api/containers/${cid}`, token)).body.status, 'running', 'the API agrees with the runtime');
  const op = await srv.api<Op>('GET', `/api/operations/${snap.body.operation_id}`, token);
  t.equal(op.body.reason_code, 'INTERRUPTED');
  t.equal((await srv.api('GET', `/api/snapshots/${snap.body.snapshot_id}`, token)).status, 404, 'the interrupted snapshot is gone');
  const resume = await srv.api<{ error: { code: string } }>('POST', `/api/containers/${cid}/resume`, token);
  t.equal(resume.status, 409);
  t.equal(resume.body.error.code, 'CONTAINER_ALREADY_RUNNING');
  t.notOk(existsSync(join(dataDir, 'local', 'runc.freezes', cid)), 'the freeze record is gone');
});

t.test('a weaver frozen by an app-consistent snapshot is thawed after a crash', async (t) => {
  const dataDir = freshDataDir();
  let srv: TestServer = await startServer({ dataDir, keepData: true, env: { LOOM_BRANCHING_TEST_DELAY_MS: '60000' } });
  let token = await srv.token('bob');
  let wid = '';
  t.teardown(async () => {
    if (wid) await srv.api('DELETE', `/api/weaver/${wid}`, token).catch(() => undefined);
    await srv.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  const w = await srv.api<{ id: string }>('POST', '/api/weaver', token, {});
  t.equal(w.status, 202);
  wid = w.body.id;
  await waitUntil(async () => (await srv.api<{ status: string }>('GET', `/api/weaver/${wid}`, token)).body.status === 'running', 'weaver running', 90_000);
  const snap = await srv.api<Op>('POST', `/api/containers/${wid}/snapshot`, token, { consistency_mode: 'app-consistent' });
  t.equal(snap.status, 202);
  await waitUntil(async () => weaverRuntimeState(dataDir, wid) === 'paused', 'weaver frozen by the snapshot');
  await srv.stop('SIGKILL');
  t.equal(weaverRuntimeState(dataDir, wid), 'paused', 'the crash left it frozen');

  srv = await startServer({ dataDir, keepData: true });
  token = await srv.token('bob');
  await waitUntil(async () => (await srv.api<{ status: string }>('GET', `/api/weaver/${wid}`, token)).status === 200, 'weaver known after restart');
  t.equal(weaverRuntimeState(dataDir, wid), 'running', 'thawed at start');
  t.equal((await srv.api<{ status: string }>('GET', `/api/weaver/${wid}`, token)).body.status, 'running');
  t.equal((await srv.api('GET', `/api/snapshots/${snap.body.snapshot_id}`, token)).status, 404);
});

t.test('a fork interrupted in its clone phase leaves no container and no snapshot', async (t) => {
  const fx = makeFixture();
  const dataDir = freshDataDir();
  const env = { LOOM_SERVER_WEAVER_ENABLED: 'false', LOOM_BRANCHING_IMPORT_ROOTS: fx.dir };
  let srv: TestServer = await startServer({ dataDir, keepData: true, env });
  let token = await srv.token('carol', true);
  t.teardown(async () => {
    await cleanupContainers(srv, [token]).catch(() => undefined);
    await srv.stop();
    forceRuntimeCleanup(dataDir);
    rmSync(dataDir, { recursive: true, force: true });
    fx.cleanup();
  });
  const create = await mutate(srv, token, 'POST', '/api/containers', { name: 'src', rootfs_path: fx.rootfs, command: ['/bin/sh', '-c', 'sleep 300'], start_immediately: true });
  const cid = create.container_id!;
  await srv.stop();

  srv = await startServer({ dataDir, keepData: true, env: { ...env, LOOM_BRANCHING_TEST_DELAY_MS: '60000' } });
  const fork = await srv.api<Op>('POST', `/api/containers/${cid}/fork`, token, { resume_policy: 'immediate' });
  t.equal(fork.status, 202);
  const result = fork.body.result_container_id!;
  const sid = fork.body.snapshot_id!;
  // Snapshot phase: the copy is on disk, the snapshot not yet recorded ready.
  await waitUntil(async () => snapshotFile(dataDir, sid, 'hello.txt') !== null, 'snapshot copied');
  t.equal((await srv.api<{ status: string }>('GET', `/api/snapshots/${sid}`, token)).body.status, 'creating', 'still in the snapshot phase');
  await srv.stop('SIGKILL');
  srv = await startServer({ dataDir, keepData: true, env });
  token = await srv.token('carol', true);
  t.equal((await srv.api('GET', `/api/containers/${result}`, token)).status, 404, 'snapshot phase: no fork container left');
  t.equal((await srv.api('GET', `/api/snapshots/${sid}`, token)).status, 404, 'snapshot phase: no snapshot left');
  await srv.stop();

  // Clone phase: the delay follows every copy, so the fork's snapshot becomes ready after one
  // delay, then the clone's copy lands and the kill comes during the clone's delay.
  srv = await startServer({ dataDir, keepData: true, env: { ...env, LOOM_BRANCHING_TEST_DELAY_MS: '8000' } });
  const fork2 = await srv.api<Op>('POST', `/api/containers/${cid}/fork`, token, { resume_policy: 'immediate' });
  t.equal(fork2.status, 202);
  const result2 = fork2.body.result_container_id!;
  const sid2 = fork2.body.snapshot_id!;
  await waitUntil(async () => existsSync(join(rootfsOf(dataDir, result2), 'hello.txt')), 'clone copy on disk', 60_000);
  const mid = await srv.api<{ status: string }>('GET', `/api/snapshots/${sid2}`, token);
  t.equal(mid.body.status, 'ready', 'the intermediate snapshot was complete');
  t.equal((await srv.api<Op>('GET', `/api/operations/${fork2.body.operation_id}`, token)).body.status, 'running', 'killed mid-clone');
  await srv.stop('SIGKILL');

  srv = await startServer({ dataDir, keepData: true, env });
  const op = await srv.api<Op>('GET', `/api/operations/${fork2.body.operation_id}`, token);
  t.equal(op.body.status, 'failed');
  t.equal(op.body.reason_code, 'INTERRUPTED');
  t.equal((await srv.api('GET', `/api/containers/${result2}`, token)).status, 404, 'the failed fork container record is removed');
  t.equal((await srv.api('GET', `/api/snapshots/${sid2}`, token)).status, 404, 'the intermediate snapshot is removed');
  t.notOk(snapshotExists(dataDir, sid2), 'its layer too');
  t.notOk(existsSync(containerDirOf(dataDir, result2)), "the fork's files are gone");
  t.equal(runtimeState(dataDir, result2), null, 'no runtime container for the fork');
  t.equal((await srv.api<{ status: string }>('GET', `/api/containers/${cid}`, token)).body.status, 'running', 'the source runs on');
  // and forking works again
  const again = await mutate(srv, token, 'POST', `/api/containers/${cid}/fork`, { resume_policy: 'manual' });
  t.equal(again.status, 'succeeded');
});
