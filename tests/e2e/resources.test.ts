/**
 * No user can exhaust the machine (issue 9 items 5 and 9), through the real server with real
 * runc containers and bounded counts: request-time validation of cpu/memory with a per-weaver
 * maximum, cgroup cpu/memory/pids limits on branching containers, per-user and per-org quotas
 * across weavers and branching containers, the free-space floor, and the disk cap monitor.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, loomCli, tempDir, type TestServer } from '../support/server.js';
import { createRunning } from '../support/weavers.js';
import { waitUntil } from '../support/attach.js';
import { cleanupContainers, mutate } from '../branching/helpers.js';

type Weaver = { id: string; status: string; reason?: string };
type Err = { error: { code: string; message: string } };

async function cleanup(srv: TestServer, tokens: string[]): Promise<void> {
  for (const tok of tokens) {
    for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
  }
  await cleanupContainers(srv, tokens);
  await srv.stop();
}

const running = (srv: TestServer, tok: string, body: Record<string, unknown>) => createRunning<Weaver>(srv, tok, body);

/** A cgroup v1 controller file of a container, or the v2 file; null when neither exists. */
function cgroupValue(controller: string, v1file: string, v2file: string, path: string): string | null {
  for (const p of [join('/sys/fs/cgroup', controller, path, v1file), join('/sys/fs/cgroup', path, v2file), join('/sys/fs/cgroup/unified', path, v2file)]) {
    if (existsSync(p)) return readFileSync(p, 'utf8').trim();
  }
  return null;
}

t.test('cpu and memory are checked at request time against the minimum and the per-weaver maximum', async (t) => {
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_MAX_CPU: '2', LOOM_SERVER_WEAVER_MAX_MEMORY: '1Gi', LOOM_SERVER_WEAVER_DEFAULT_MEMORY: '256Mi' } });
  const tok = await srv.token('alice');
  t.teardown(() => cleanup(srv, [tok]));
  const cases: [Record<string, string>, number, string, RegExp][] = [
    [{ cpu: '0' }, 400, 'invalid_resources', /cpu "0" is below the minimum of 10m/],
    [{ cpu: '0m' }, 400, 'invalid_resources', /below the minimum/],
    [{ memory: '1' }, 400, 'invalid_resources', /memory "1" is below the minimum of 16Mi/],
    [{ memory: '900Ti' }, 400, 'resources_too_large', /memory "900Ti" is over the limit of 1Gi per weaver \(LOOM_SERVER_WEAVER_MAX_MEMORY\)/],
    [{ cpu: '64' }, 400, 'resources_too_large', /cpu "64" is over the limit of 2 per weaver \(LOOM_SERVER_WEAVER_MAX_CPU\)/],
    [{ cpu: '2001m' }, 400, 'resources_too_large', /LOOM_SERVER_WEAVER_MAX_CPU/],
    [{ memory: '99999999999999999999999999Ti' }, 400, 'resources_too_large', /LOOM_SERVER_WEAVER_MAX_MEMORY/],
  ];
  for (const [resources, status, code, msg] of cases) {
    const r = await srv.api<Err>('POST', '/api/weaver', tok, { resources });
    t.equal(r.status, status, JSON.stringify(resources));
    t.equal(r.body.error.code, code, JSON.stringify(resources));
    t.match(r.body.error.message, msg);
  }
  t.equal((await srv.api<{ count: number }>('GET', '/api/weavers', tok)).body.count, 0, 'nothing was created');
  // The CLI gets the same one-line refusal.
  const loom = loomCli(srv, tempDir());
  await loom(['login', '--token', tok]);
  const cli = await loom(['new', '--memory', '900Ti', '--detach']);
  t.not(cli.code, 0);
  t.match(cli.stderr, /over the limit of 1Gi per weaver/);
  t.equal(cli.stderr.trim().split('\n').length, 1);
  // At the limit is fine.
  const ok = await running(srv, tok, { resources: { cpu: '2', memory: '1Gi' } });
  t.equal(ok.status, 'running');
});

t.test('quotas count weavers and branching containers together, per user and per org; branching containers get cgroup limits', async (t) => {
  const srv = await startServer({
    env: {
      LOOM_SERVER_WEAVER_DEFAULT_CPU: '500m', LOOM_SERVER_WEAVER_DEFAULT_MEMORY: '128Mi', LOOM_SERVER_WEAVER_PIDS_LIMIT: '64',
      LOOM_QUOTA_USER_COUNT: '2', LOOM_QUOTA_USER_CPU: '0', LOOM_QUOTA_USER_MEMORY: '0',
      LOOM_QUOTA_ORG_COUNT: '0', LOOM_QUOTA_ORG_CPU: '1500m', LOOM_QUOTA_ORG_MEMORY: '0',
    },
  });
  const alice = await srv.token('alice');
  const bob = await srv.token('bob');
  t.teardown(() => cleanup(srv, [alice, bob]));

  // alice: one weaver and one started branching container hit her count quota of 2.
  const w1 = await running(srv, alice, {});
  const c1 = await mutate(srv, alice, 'POST', '/api/containers', { name: 'c1', image: 'loom/default:latest', command: ['/bin/sh', '-c', 'sleep 300'], start_immediately: true });
  t.equal(c1.status, 'succeeded', JSON.stringify(c1));
  const third = await srv.api<Err>('POST', '/api/weaver', alice, {});
  t.equal(third.status, 429);
  t.equal(third.body.error.code, 'user_quota_count');
  t.match(third.body.error.message, /user quota of 2 weavers and branching containers is used up .*LOOM_QUOTA_USER_COUNT/);
  const thirdC = await srv.api<Err>('POST', '/api/containers', alice, { name: 'c2', image: 'loom/default:latest', command: ['/bin/true'] });
  t.equal(thirdC.status, 429, 'a branching container counts in the same quota');
  t.equal(thirdC.body.error.code, 'user_quota_count');

  // The branching container runs under the same cgroup limits as a weaver.
  const cg = `loom/branching-${c1.container_id}`;
  t.equal(cgroupValue('memory', 'memory.limit_in_bytes', 'memory.max', cg), String(128 * 1024 * 1024), 'memory limit');
  t.equal(cgroupValue('pids', 'pids.max', 'pids.max', cg), '64', 'pids limit');
  const quota = cgroupValue('cpu', 'cpu.cfs_quota_us', 'cpu.max', cg);
  t.match(quota, /^50000\b/, 'cpu limit of 500m');

  // Deleting the weaver frees a slot.
  t.equal((await srv.api('DELETE', `/api/weaver/${w1.id}`, alice)).status, 204);
  const c2 = await mutate(srv, alice, 'POST', '/api/containers', { name: 'c2', image: 'loom/default:latest', command: ['/bin/true'] });
  t.equal(c2.status, 'succeeded');

  // The org CPU quota (1500m) spans its members: alice's running container holds 500m of the team's? No:
  // c1 is in alice's personal org. In a shared org, alice and bob together get 1500m.
  const org = await srv.api<{ id: string }>('POST', '/api/orgs', bob, { name: 'Team Q' });
  t.equal(org.status, 201, JSON.stringify(org.body));
  const add = await srv.api('POST', `/api/orgs/${org.body.id}/members`, bob, { username: 'alice', role: 'member' });
  t.equal(add.status, 201, JSON.stringify(add.body));
  await running(srv, bob, { org_id: org.body.id, resources: { cpu: '1' } });
  const over = await srv.api<Err>('POST', '/api/weaver', bob, { org_id: org.body.id, resources: { cpu: '600m' } });
  t.equal(over.status, 429);
  t.equal(over.body.error.code, 'org_quota_cpu');
  t.match(over.body.error.message, /org CPU quota of 1500m would be passed \(1 held, 600m asked; LOOM_QUOTA_ORG_CPU\)/);
  const fits = await srv.api<Weaver>('POST', '/api/weaver', bob, { org_id: org.body.id, resources: { cpu: '500m' } });
  t.equal(fits.status, 202, 'what fits in the org quota is accepted');
});

t.test('under the free-space floor creates are refused with 507', async (t) => {
  const srv = await startServer({ env: { LOOM_MIN_FREE_DISK: '1000Ti' } });
  const tok = await srv.token('alice');
  t.teardown(() => cleanup(srv, [tok]));
  const w = await srv.api<Err>('POST', '/api/weaver', tok, {});
  t.equal(w.status, 507);
  t.equal(w.body.error.code, 'insufficient_storage');
  t.match(w.body.error.message, /below the floor of 1000Ti; LOOM_MIN_FREE_DISK/);
  const c = await srv.api<Err>('POST', '/api/containers', tok, { name: 'x', image: 'loom/default:latest', command: ['/bin/true'] });
  t.equal(c.status, 507);
  t.equal((await srv.api<{ count: number }>('GET', '/api/weavers', tok)).body.count, 0);
  t.equal((await srv.api<{ count: number }>('GET', '/api/containers', tok)).body.count, 0);
});

t.test('a weaver that writes past the disk cap is stopped with the reason', async (t) => {
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_DISK_MAX: '8Mi', LOOM_SERVER_WEAVER_DISK_CHECK_SECS: '1' } });
  const tok = await srv.token('alice');
  t.teardown(() => cleanup(srv, [tok]));
  // It writes only when told to, so the test sees it running before the monitor can stop it.
  const w = await running(srv, tok, { command: ['/bin/sh', '-c', 'while [ ! -e /tmp/go ]; do sleep 0.1; done; dd if=/dev/zero of=/workspace/fill bs=1M count=32 && sync && sleep 600'] });
  const go = await srv.api<{ exit_code: number }>('POST', `/api/weaver/${w.id}/exec`, tok, { command: ['touch', '/tmp/go'] });
  t.equal(go.body.exit_code, 0, 'told the weaver to write');
  const failed = await waitUntil(async () => {
    const g = await srv.api<Weaver>('GET', `/api/weaver/${w.id}`, tok);
    return g.body.status === 'failed' ? g.body : null;
  }, 'the weaver to be stopped at the cap', 60_000);
  t.match(failed.reason, /^disk_quota_exceeded: the weaver wrote \d+ MiB .* over the cap of 8 MiB \(LOOM_SERVER_WEAVER_DISK_MAX\); it was stopped$/);
  // The record says failed first; the container's removal follows.
  const gone = await waitUntil(async () => {
    const live = execFileSync('runc', ['--root', join(srv.dataDir, 'local', 'runc'), 'list', '-q'], { encoding: 'utf8' }).split('\n');
    return live.includes(w.id) ? null : true;
  }, 'the container to be removed', 30_000);
  t.ok(gone, 'its container was stopped and removed');
  // A weaver under the cap keeps running through checks.
  const small = await running(srv, tok, { command: ['/bin/sh', '-c', 'dd if=/dev/zero of=/workspace/small bs=1M count=1 && echo wrote-small && sleep 600'] });
  const logs = await waitUntil(async () => {
    const text = await fetch(`${srv.url}/api/weaver/${small.id}/logs`, { headers: { authorization: `Bearer ${tok}` } }).then((x) => x.text());
    return text.includes('wrote-small') ? text : null;
  }, 'the small write');
  t.ok(logs);
  t.equal((await srv.api<Weaver>('GET', `/api/weaver/${small.id}`, tok)).body.status, 'running');
});
