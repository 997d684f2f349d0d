/**
 * Upgrade: a data dir written by the release before seed containers moved onto the layer stack
 * (commit OLD_RELEASE: one volume per container under branching/containers, its own runc root,
 * one whole tree per snapshot) is taken over by this build. The old release is built from git
 * into a temp dir and run for real; then this build starts on the same data dir.
 * What must hold: migrations run; containers are listed, a running one is stopped by the upgrade
 * (its root filesystem moved) and resumes with its files; snapshots become layers and clone with
 * their files; the old layout and runtime root are gone; nothing leaks.
 */
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, freshDataDir, startServer, type TestServer } from '../support/server.js';
import { tempDir } from '../native/helpers.js';
import { waitUntil } from '../support/attach.js';
import { cleanupContainers, makeFixture, mutate, rootfsOf, runtimeState, snapshotFile } from './helpers.js';
import type { Container } from '../../src/branching/store.js';

const OLD_RELEASE = '64cdbe2a2d71f79bd90db3043fd576941cdcf10c';
const haveCommit = spawnSync('git', ['-C', ROOT, 'cat-file', '-e', `${OLD_RELEASE}^{commit}`]).status === 0;

t.test('a data dir of the previous release works after the upgrade', { skip: haveCommit ? false : `the previous release (commit ${OLD_RELEASE}) is not in this clone's history (a shallow clone); it is built from git, so there is nothing to upgrade from` }, async (t) => {
  // The old release, built from git into a temp dir with this checkout's dependencies and native build.
  const old = tempDir(t, 'loom-old-release-');
  execFileSync('sh', ['-c', `git -C "${ROOT}" archive ${OLD_RELEASE} | tar -x -C "${old}"`]);
  symlinkSync(join(ROOT, 'node_modules'), join(old, 'node_modules'));
  mkdirSync(join(old, 'native'), { recursive: true });
  symlinkSync(join(ROOT, 'native', 'build'), join(old, 'native', 'build'));
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(old, 'tsconfig.json')], { stdio: 'inherit', timeout: 600_000 });
  const oldBin = join(old, 'dist', 'server', 'main.js');

  const fx = makeFixture();
  t.teardown(() => fx.cleanup());
  const dataDir = freshDataDir();
  const env = { LOOM_SERVER_WEAVER_ENABLED: 'false', LOOM_BRANCHING_IMPORT_ROOTS: fx.dir };
  let srv: TestServer = await startServer({ t, dataDir, keepData: true, env, serverBin: oldBin });
  const token = await srv.token('alice', true);
  const up = await mutate(srv, token, 'POST', '/api/containers', { name: 'up', rootfs_path: fx.rootfs, command: ['/bin/sh', '-c', 'echo v1 > /state.txt; sleep 300'], start_immediately: true });
  t.equal(up.status, 'succeeded', JSON.stringify(up));
  const upId = up.container_id!;
  const oldRootfs = join(dataDir, 'branching', 'containers', upId, 'vol', 'rootfs');
  await waitUntil(async () => existsSync(join(oldRootfs, 'state.txt')), 'the old release\'s container to write its file');
  const snap = await mutate(srv, token, 'POST', `/api/containers/${upId}/snapshot`, { consistency_mode: 'crash-consistent' });
  t.equal(snap.status, 'succeeded', JSON.stringify(snap));
  const sid = snap.snapshot_id!;
  t.ok(existsSync(join(dataDir, 'branching', 'snapshots', sid, 'rootfs', 'state.txt')), 'the old release wrote a whole tree per snapshot');
  const idle = await mutate(srv, token, 'POST', '/api/containers', { name: 'idle', rootfs_path: fx.rootfs, command: ['/bin/sh', '-c', 'sleep 300'] });
  const idleId = idle.container_id!;
  await srv.stop();
  const oldRunc = join(dataDir, 'branching', 'runc');
  t.equal(spawnSync('runc', ['--root', oldRunc, 'state', upId]).status, 0, 'the container outlives the old server under its own runc root');

  // This build on the same data dir (the last server checks for leaks when it stops).
  srv = await startServer({ t, dataDir, env });
  t.notOk(existsSync(join(dataDir, 'branching')), 'the old layout (volumes, trees, runc root) is gone');
  const c = await srv.api<Container>('GET', `/api/containers/${upId}`, token);
  t.equal(c.status, 200, 'the old token and container are still there (migrations ran)');
  t.equal(c.body.status, 'stopped');
  t.match(c.body.reason ?? '', /upgrade/);
  t.equal((await srv.api<Container>('GET', `/api/containers/${idleId}`, token)).body.status, 'created');
  t.equal(snapshotFile(dataDir, sid, 'state.txt'), 'v1\n', 'the snapshot tree became a layer');

  const res = await mutate(srv, token, 'POST', `/api/containers/${upId}/resume`);
  t.equal(res.status, 'succeeded', JSON.stringify(res));
  t.equal(runtimeState(dataDir, upId), 'running', 'resumed on the one runtime root');
  t.equal(readFileSync(join(rootfsOf(dataDir, upId), 'hello.txt'), 'utf8'), 'hello\n');
  t.equal(readFileSync(join(rootfsOf(dataDir, upId), 'state.txt'), 'utf8'), 'v1\n', 'its files came along');

  const clone = await mutate(srv, token, 'POST', `/api/snapshots/${sid}/clone`, { resume_policy: 'immediate' });
  t.equal(clone.status, 'succeeded', JSON.stringify(clone));
  t.equal(readFileSync(join(rootfsOf(dataDir, clone.result_container_id!), 'state.txt'), 'utf8'), 'v1\n', 'a clone of an old snapshot has its files');
  const r2 = await mutate(srv, token, 'POST', `/api/containers/${idleId}/resume`);
  t.equal(r2.status, 'succeeded', JSON.stringify(r2));
  // A snapshot of the upgraded container is a layer on its base, like any new one.
  const s2 = await mutate(srv, token, 'POST', `/api/containers/${upId}/snapshot`, { consistency_mode: 'crash-consistent' });
  t.equal(s2.status, 'succeeded');
  t.equal(snapshotFile(dataDir, s2.snapshot_id!, 'hello.txt'), 'hello\n');

  await cleanupContainers(srv, [token]);
  for (const s of [sid, s2.snapshot_id!]) t.equal((await srv.api('DELETE', `/api/snapshots/${s}`, token)).status, 204);
  await srv.stop(); // throws on leftovers: processes, cgroups, mounts of this data dir
  t.pass('nothing leaked');
});
