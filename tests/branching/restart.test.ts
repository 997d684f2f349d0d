/**
 * A server killed (SIGKILL) in the middle of a snapshot: after restart the operation is failed
 * with INTERRUPTED, the partial snapshot tree and record are gone, orphan trees are removed,
 * and the container (which outlives the server under conmon) is still known and running.
 */
import t from 'tap';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { freshDataDir, startServer, type TestServer } from '../support/server.js';
import { cleanupContainers, forceRuntimeCleanup, makeFixture, mutate, runtimeState, snapshotExists, snapshotFile, type Op } from './helpers.js';
import { waitUntil } from '../support/attach.js';

t.test('restart in the middle of an operation', async (t) => {
  const fx = makeFixture();
  t.teardown(() => fx.cleanup());
  const dataDir = freshDataDir();
  const env = { LOOM_SERVER_WEAVER_ENABLED: 'false', LOOM_BRANCHING_IMPORT_ROOTS: fx.dir };
  // Each server registers its teardown (runtime delete of the data dir's containers) before it
  // starts; the last one also checks for leftovers and removes the data dir.
  let srv: TestServer = await startServer({ t, dataDir, keepData: true, env });
  let token = await srv.token('alice', true);
  const create = await mutate(srv, token, 'POST', '/api/containers', { name: 'r', rootfs_path: fx.rootfs, command: ['/bin/sh', '-c', 'sleep 120'], start_immediately: true });
  t.equal(create.status, 'succeeded');
  const cid = create.container_id!;
  await srv.stop();

  // again, with operations that sleep after copying so the kill lands mid-operation
  srv = await startServer({ t, dataDir, keepData: true, env: { ...env, LOOM_BRANCHING_TEST_DELAY_MS: '20000' } });
  const r = await srv.api<Op>('POST', `/api/containers/${cid}/snapshot`, token, { consistency_mode: 'crash-consistent' });
  t.equal(r.status, 202);
  const sid = r.body.snapshot_id!;
  await waitUntil(async () => snapshotFile(dataDir, sid, 'hello.txt') !== null, 'the copy to be on disk', 10_000, 50);
  t.pass('the copy is on disk');
  const mid = await srv.api<Op>('GET', `/api/operations/${r.body.operation_id}`, token);
  t.equal(mid.body.status, 'running');
  mkdirSync(join(dataDir, 'local', 'layers', 'l', 'orphan-tree'));
  await srv.stop('SIGKILL');

  srv = await startServer({ t, dataDir, keepData: true, env });
  token = await srv.token('alice', true);
  const op = await srv.api<Op>('GET', `/api/operations/${r.body.operation_id}`, token);
  t.equal(op.status, 200);
  t.equal(op.body.status, 'failed');
  t.equal(op.body.reason_code, 'INTERRUPTED');
  t.ok(op.body.reason_message);
  t.ok(op.body.completed_at);
  t.equal((await srv.api('GET', `/api/snapshots/${sid}`, token)).status, 404);
  t.notOk(snapshotExists(dataDir, sid), 'partial snapshot removed');
  t.notOk(existsSync(join(dataDir, 'local', 'layers', 'l', 'orphan-tree')), 'a layer directory no entry names is removed');
  const c = await srv.api<{ status: string }>('GET', `/api/containers/${cid}`, token);
  t.equal(c.body.status, 'running', 'the container outlived the server');
  t.equal(runtimeState(dataDir, cid), 'running');
  // and branching works again
  const again = await mutate(srv, token, 'POST', `/api/containers/${cid}/snapshot`, { consistency_mode: 'crash-consistent' });
  t.equal(again.status, 'succeeded');

  // a container whose process died while the server was down is stopped after restart
  await srv.stop();
  forceRuntimeCleanup(dataDir);
  srv = await startServer({ t, dataDir, env });
  t.equal((await srv.api<{ status: string }>('GET', `/api/containers/${cid}`, token)).body.status, 'stopped');
  // A stopped container keeps its root filesystem mounted (it can be snapshotted or resumed):
  // delete it, so the last stop's leak check finds nothing of this data dir.
  await cleanupContainers(srv, [token]);
});
