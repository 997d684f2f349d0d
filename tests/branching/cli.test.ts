/** The branching commands through the real `loom` binary against the real server. */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { startServer, loomCli, tempDir, type TestServer } from '../support/server.js';
import { cleanupContainers, makeFixture, runtimeState } from './helpers.js';

const fx = makeFixture();
let srv: TestServer;
let token: string;
let loom: ReturnType<typeof loomCli>;

t.teardown(() => fx.cleanup());

t.before(async () => {
  // The server's teardown (runtime delete, leak check) is registered before it starts; the API
  // cleanup registered after it runs first.
  srv = await startServer({ t, env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  t.teardown(() => cleanupContainers(srv, [token]));
  token = await srv.token('carol');
  loom = loomCli(srv, tempDir());
  const login = await loom(['login', '--token', token]);
  if (login.code !== 0) throw new Error(login.stderr);
});

interface OpJson { operation_id: string; status: string; container_id?: string; snapshot_id?: string; result_container_id?: string; capability_downgrades: string[] }

t.test('container create, snapshot (both forms), clone, fork, op --wait, snapshot ls --json, lineage, pin, rm', async (t) => {
  // A plain member registers from an uploaded archive of the fixture.
  const archive = join(fx.dir, 'rootfs.tar');
  execFileSync('tar', ['-C', fx.rootfs, '-cf', archive, '.']);
  const create = await loom(['--json', 'container', 'create', '--name', 'cli-demo', '--archive', archive, '--start', '--wait', '--', '/bin/sh', '-c', 'sleep 60']);
  t.equal(create.code, 0, create.stderr);
  const cop = JSON.parse(create.stdout) as OpJson;
  t.equal(cop.status, 'succeeded');
  const cid = cop.container_id!;
  t.equal(runtimeState(srv.dataDir, cid), 'running');

  const ls = await loom(['container', 'ls']);
  t.match(ls.stdout, /cli-demo\s+running/);

  // loom snapshot <target> (by name), without --wait, then loom op <id> --wait
  const s1 = await loom(['--json', 'snapshot', 'cli-demo', '--label', 'k=v', '--ttl', '3600']);
  t.equal(s1.code, 0, s1.stderr);
  const s1op = JSON.parse(s1.stdout) as OpJson;
  t.ok(s1op.snapshot_id);
  const wait = await loom(['op', s1op.operation_id, '--wait']);
  t.equal(wait.code, 0, wait.stderr);
  t.match(wait.stdout, /snapshot: succeeded/);
  t.equal(wait.stderr.includes('\r'), false, 'no progress bar when piped');
  t.match(wait.stderr, /capability downgrade: memory_state: CRIU unavailable/);

  // loom snapshot create <target> --wait, app-consistent
  const s2 = await loom(['snapshot', 'create', cid, '--consistency', 'app-consistent', '--wait']);
  t.equal(s2.code, 0, s2.stderr);
  t.match(s2.stdout, /snapshot: succeeded/);
  t.match(s2.stderr, /frozen for/);

  const lsJson = await loom(['snapshot', 'ls', '--json']);
  t.equal(lsJson.code, 0, lsJson.stderr);
  const snaps = JSON.parse(lsJson.stdout) as { snapshot_id: string; labels: Record<string, string>; expires_at: string | null }[];
  t.equal(snaps.length, 2);
  const first = snaps.find((s) => s.snapshot_id === s1op.snapshot_id)!;
  t.same(first.labels, { k: 'v' });
  t.ok(first.expires_at);
  const lsText = await loom(['snapshot', 'ls']);
  t.match(lsText.stdout, /^SNAPSHOT\s+CONTAINER/);

  const clone = await loom(['--json', 'clone', s1op.snapshot_id!.slice(0, 8), '--resume', 'immediate', '--name', 'cli-clone', '--wait']);
  t.equal(clone.code, 0, clone.stderr);
  const clop = JSON.parse(clone.stdout) as OpJson;
  t.equal(clop.status, 'succeeded');
  t.equal(runtimeState(srv.dataDir, clop.result_container_id!), 'running');

  const s3 = await loom(['--json', 'snapshot', 'cli-clone', '--wait']);
  const s3id = (JSON.parse(s3.stdout) as OpJson).snapshot_id!;
  const lin = await loom(['snapshot', 'lineage', s3id, '--json']);
  const l = JSON.parse(lin.stdout) as { lineage: { snapshot_id: string; depth: number }[] };
  t.same(l.lineage.map((n) => [n.snapshot_id, n.depth]), [[s3id, 0], [s1op.snapshot_id, 1]]);

  const fork = await loom(['fork', 'cli-demo', '--name', 'cli-fork', '--wait']);
  t.equal(fork.code, 0, fork.stderr);
  t.match(fork.stdout, /fork: succeeded/);
  t.match((await loom(['container', 'show', 'cli-fork'])).stdout, /status\s+created/);
  t.equal((await loom(['container', 'resume', 'cli-fork', '--wait'])).code, 0);
  t.equal((await loom(['container', 'kill', 'cli-fork', '--wait'])).code, 0);
  t.match((await loom(['container', 'show', 'cli-fork'])).stdout, /status\s+stopped/);

  t.equal((await loom(['snapshot', 'pin', s3id])).code, 0);
  const rmPinned = await loom(['snapshot', 'rm', s3id]);
  t.equal(rmPinned.code, 1);
  t.match(rmPinned.stderr, /pinned/);
  t.equal((await loom(['snapshot', 'unpin', s3id])).code, 0);
  t.equal((await loom(['snapshot', 'rm', s3id])).code, 0);

  const inUse = await loom(['snapshot', 'rm', s1op.snapshot_id!]);
  t.equal(inUse.code, 1);
  t.match(inUse.stderr, /in use/);

  t.equal((await loom(['container', 'rm', 'cli-clone', '--wait'])).code, 0);
  t.equal(runtimeState(srv.dataDir, clop.result_container_id!), null);

  const bad = await loom(['snapshot', 'cli-demo', '--consistency', 'eventual']);
  t.equal(bad.code, 2);
  const none = await loom(['snapshot', 'nope']);
  t.equal(none.code, 1);
  t.match(none.stderr, /not found/);
  const failedWait = await loom(['op', 'does-not-exist', '--wait']);
  t.equal(failedWait.code, 1);
});
