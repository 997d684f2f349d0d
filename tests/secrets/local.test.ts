/**
 * Secrets end to end on the local backend: the real loom-server (runc under conmon), the real
 * `loom` CLI, real tmpfs mounts, a real private repository over HTTPS. A weaver reads its values
 * from files; the values appear nowhere else: not in the SQLite files, config.json, conmon logs,
 * server logs, any weaver process's environment or argv, `loom weaver ps --json`.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { lstatSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, loomCli, mountsUnder, tempDir, type TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { startGitHttps } from '../support/git-https-auth.js';

type Weaver = { id: string; status: string; reason?: string; org_id: string };
type Secret = { id: string; name: string; scope: string; current_version: number; weaver_id?: string };

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const rand = (n = 24) => randomBytes(n).toString('hex');

/** Every regular file under dir, not descending into other mounts (a weaver's tmpfs is the one place values may be). */
function filesUnder(dir: string, mounts: Set<string>, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (mounts.has(p)) continue;
    const st = lstatSync(p);
    if (st.isDirectory()) filesUnder(p, mounts, out);
    else if (st.isFile()) out.push(p);
  }
  return out;
}

/** Files under the data dir (outside mounts) that contain any of the needles. */
function filesHolding(dataDir: string, needles: string[]): string[] {
  const mounts = new Set(mountsUnder(dataDir));
  return filesUnder(dataDir, mounts).filter((f) => {
    const buf = readFileSync(f);
    return needles.some((n) => buf.includes(n) || buf.includes(Buffer.from(n).toString('base64')));
  });
}

/** pids of the host processes whose environment says they belong to this weaver. */
function weaverPids(id: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/environ`).includes(`LOOM_WEAVER_ID=${id}`)) out.push(Number(d));
    } catch {
      /* gone or not ours */
    }
  }
  return out;
}

async function logsOf(srv: TestServer, token: string, id: string): Promise<string> {
  const r = await srv.api<string>('GET', `/api/weaver/${id}/logs`, token);
  return typeof r.body === 'string' ? r.body : JSON.stringify(r.body);
}

async function running(srv: TestServer, token: string, id: string): Promise<Weaver> {
  return waitUntil(async () => {
    const g = await srv.api<Weaver>('GET', `/api/weaver/${id}`, token);
    if (g.body.status === 'failed') throw new Error(`weaver failed: ${g.body.reason}`);
    return g.body.status === 'running' ? g.body : null;
  }, `weaver ${id} running`, 60_000);
}

// Prints, once, what the weaver sees, then the hash of the key each time it changes.
const PROBE = [
  'sh', '-c',
  [
    'echo "uid=$(id -u) dir=$LOOM_SECRETS_DIR ptr=$OPENAI_API_KEY_FILE"',
    'echo "files=$(ls /run/secrets/loom | tr "\\n" ",")"',
    'echo "owner=$(stat -c %u:%a /run/secrets/loom/OPENAI_API_KEY 2>/dev/null)"',
    'echo "mount=$(grep " /run/secrets/loom " /proc/self/mountinfo | cut -d" " -f6)"',
    '(echo x > /run/secrets/loom/NEW) 2>/dev/null && echo write=allowed || echo write=refused',
    'last=; while :; do h=$(sha256sum /run/secrets/loom/OPENAI_API_KEY 2>/dev/null | cut -c1-64); if [ "$h" != "$last" ]; then echo "hash=$h"; last=$h; fi; sleep 0.2; done',
  ].join('; '),
];

t.test('secrets injected as files into local weavers', async (t) => {
  const gitDir = tempDir('loom-git-');
  const gitToken = `ghp_${rand()}`;
  const git = await startGitHttps(gitDir, gitToken, { private: { 'README.md': 'private repo\n' } });
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_GIT_CA_FILE: git.caFile, LOOM_SERVER_WEAVER_GIT_ALLOWED_NETWORKS: '127.0.0.1/32' } });
  const alice = await srv.token('alice'); // owner of org acme
  const bob = await srv.token('bob'); // member of acme
  const carol = await srv.token('carol'); // member of acme
  const mallory = await srv.token('mallory'); // another org
  const root = await srv.token('root', true); // server admin
  const made: [string, string][] = [];
  t.teardown(async () => {
    for (const [tok, id] of made) await srv.api('DELETE', `/api/weaver/${id}`, tok);
    await srv.stop();
    await git.close();
  });
  const acme = (await srv.api<{ id: string }>('POST', '/api/orgs', alice, { name: `Acme ${rand(4)}` })).body;
  t.equal((await srv.api('POST', `/api/orgs/${acme.id}/members`, alice, { username: 'bob', role: 'member' })).status, 201, 'bob joins acme as a member');
  t.equal((await srv.api('POST', `/api/orgs/${acme.id}/members`, alice, { username: 'carol', role: 'member' })).status, 201, 'carol too');

  const aliceDir = tempDir();
  const bobDir = tempDir();
  const loomA = loomCli(srv, aliceDir);
  const loomB = loomCli(srv, bobDir);
  t.equal((await loomA(['login', '--token', alice])).code, 0);
  t.equal((await loomB(['login', '--token', bob])).code, 0);

  const KEY1 = `sk-${rand()}`;
  const KEY2 = `sk-${rand()}`;
  const WEAVER_ONLY = `w-${rand()}`;
  const secrets = [KEY1, KEY2, WEAVER_ONLY, gitToken];

  // An org admin stores the keys; the value only ever goes in on stdin.
  let r = await loomA(['secret', 'set', 'OPENAI_API_KEY', '--org', acme.id], { input: `${KEY1}\n` });
  t.equal(r.code, 0, r.stderr);
  r = await loomA(['secret', 'set', 'GIT_TOKEN', '--repo', git.url('private'), '--org', acme.id], { input: gitToken });
  t.equal(r.code, 0, r.stderr);

  // A member may not; nor may a value come as an argument.
  r = await loomB(['secret', 'set', 'OTHER', '--org', acme.id], { input: 'x' });
  t.not(r.code, 0);
  t.match(r.stderr, /owner or admin/);
  r = await loomA(['secret', 'set', 'OTHER', 'plain-value', '--org', acme.id]);
  t.not(r.code, 0);
  t.match(r.stderr, /never taken as an argument.*stdin/);

  // A member starts a weaver on the private repository; the clone uses the repo's GIT_TOKEN.
  r = await loomB(['new', '--org', acme.id, '--repo', git.url('private'), '--json', '--', ...PROBE], { timeoutMs: 120_000 });
  t.equal(r.code, 0, r.stderr);
  const w1 = JSON.parse(r.stdout) as Weaver;
  made.push([bob, w1.id]);
  await running(srv, bob, w1.id);
  t.ok(git.served.some((p) => p.endsWith('/git-upload-pack')), 'the private repository was served to the authenticated clone');
  t.ok(git.authHeaders.length > 0, 'git sent the token as a header');

  const first = await waitUntil(async () => {
    const l = await logsOf(srv, bob, w1.id);
    return /hash=[0-9a-f]{64}/.test(l) ? l : null;
  }, 'the weaver printed what it sees');
  t.match(first, `hash=${sha(KEY1)}`, 'the weaver read the value from its file');
  t.match(first, 'uid=1000 dir=/run/secrets/loom ptr=/run/secrets/loom/OPENAI_API_KEY', 'env holds pointers only');
  t.match(first, /files=GIT_TOKEN,OPENAI_API_KEY,/, 'one file per secret that resolves (org and repo scope)');
  t.match(first, 'owner=1000:400', '0400, owned by the weaver user');
  t.match(first, /mount=ro,nosuid,nodev,noexec/, 'mounted read-only, nosuid, nodev, noexec');
  t.match(first, 'write=refused', 'the weaver cannot write its secrets dir');

  // A weaver-scoped secret, by the weaver's owner; another plain member may not (role matrix).
  const carolSet = await srv.api<{ error: { code: string } }>('POST', '/api/secrets', carol, { name: 'ONLY_W1', scope: 'weaver', weaver_id: w1.id, value_b64: Buffer.from(WEAVER_ONLY).toString('base64') });
  t.equal(carolSet.status, 403, 'another member may not manage the weaver\'s secrets');
  t.equal((await srv.api('POST', '/api/secrets', mallory, { name: 'ONLY_W1', scope: 'weaver', weaver_id: w1.id, value_b64: 'eA==' })).status, 404, 'another org: not found');
  r = await loomB(['secret', 'set', 'ONLY_W1', '--weaver', w1.id], { input: WEAVER_ONLY });
  t.equal(r.code, 0, r.stderr);

  // Another weaver of the same org, and a weaver of another org.
  const w2 = (await srv.api<Weaver>('POST', '/api/weaver', alice, { org_id: acme.id, command: ['sh', '-c', 'echo "files=$(ls /run/secrets/loom | tr "\\n" ",")"; sleep 3600'] })).body;
  made.push([alice, w2.id]);
  const w3 = (await srv.api<Weaver>('POST', '/api/weaver', mallory, { command: ['sh', '-c', 'echo "files=$(ls /run/secrets/loom 2>&1 | tr "\\n" ",")"; sleep 3600'] })).body;
  made.push([mallory, w3.id]);
  await running(srv, alice, w2.id);
  await running(srv, mallory, w3.id);
  const l2 = await waitUntil(async () => /files=/.exec(await logsOf(srv, alice, w2.id)) && logsOf(srv, alice, w2.id), 'w2 listing');
  t.match(l2, /files=OPENAI_API_KEY,\s/, 'same org, no repo, not w1: only the org secret');
  t.notMatch(l2, /ONLY_W1|GIT_TOKEN/);
  const l3 = await waitUntil(async () => /files=/.exec(await logsOf(srv, mallory, w3.id)) && logsOf(srv, mallory, w3.id), 'w3 listing');
  t.match(l3, /files=\s/, 'a weaver of another org gets nothing');

  // Rotation shows inside the running weaver.
  r = await loomA(['secret', 'rotate', 'OPENAI_API_KEY', '--org', acme.id], { input: KEY2 });
  t.equal(r.code, 0, r.stderr);
  await waitUntil(async () => (await logsOf(srv, bob, w1.id)).includes(`hash=${sha(KEY2)}`), 'the rotated value inside w1');
  t.pass('rotation visible in the running weaver');

  // A forged identity is refused and recorded.
  const forged = await srv.api('POST', '/internal/secrets/fetch', null, {}, { authorization: `Bearer loom_w_${randomBytes(32).toString('base64url')}` });
  t.equal(forged.status, 401);
  const none = await srv.api('POST', '/internal/secrets/fetch', alice, {});
  t.equal(none.status, 401, 'a user token is not a weaver identity');

  // Metadata only, for everyone; another org's secrets are 404.
  const listB = await srv.api<{ secrets: Secret[] }>('GET', `/api/secrets?org_id=${acme.id}`, bob);
  t.equal(listB.status, 200);
  t.same(listB.body.secrets.map((s) => s.name).sort(), ['GIT_TOKEN', 'ONLY_W1', 'OPENAI_API_KEY']);
  const listM = await srv.api('GET', `/api/secrets?org_id=${acme.id}`, mallory);
  t.equal(listM.status, 404, 'another org\'s secrets are not found');
  const key = listB.body.secrets.find((s) => s.name === 'OPENAI_API_KEY')!;
  t.equal((await srv.api('GET', `/api/secrets/${key.id}`, mallory)).status, 404);
  t.equal((await srv.api('DELETE', `/api/secrets/${key.id}`, mallory)).status, 404);
  t.equal((await srv.api('DELETE', `/api/secrets/${key.id}`, bob)).status, 403, 'a member cannot delete an org secret');
  const versions = await loomB(['secret', 'versions', 'OPENAI_API_KEY', '--org', acme.id, '--json']);
  t.same((JSON.parse(versions.stdout) as { version: number; current: boolean }[]).map((v) => [v.version, v.current]), [[1, false], [2, true]]);

  // The access log: reads by w1 (name, scope, version), the forged attempt; admins only.
  const logM = await srv.api('GET', `/api/secrets/log?org_id=${acme.id}`, bob);
  t.equal(logM.status, 403, 'a member does not read the access log');
  r = await loomA(['secret', 'log', '--org', acme.id, '--json']);
  t.equal(r.code, 0, r.stderr);
  const log = JSON.parse(r.stdout) as { weaver_id: string; name: string; scope: string; version: number; outcome: string; purpose: string }[];
  t.ok(log.some((e) => e.weaver_id === w1.id && e.name === 'OPENAI_API_KEY' && e.scope === 'org' && e.version === 2 && e.outcome === 'read'), 'the read of version 2 by w1');
  t.ok(log.some((e) => e.weaver_id === w1.id && e.name === 'GIT_TOKEN' && e.purpose === 'git-clone' && e.outcome === 'read'), 'the clone\'s read of GIT_TOKEN');
  const all = await srv.api<{ entries: { outcome: string; reason: string }[] }>('GET', '/api/secrets/log', root);
  t.ok(all.body.entries.some((e) => e.outcome === 'denied' && /unknown or revoked/.test(e.reason)), 'the forged identity is recorded as a denial');

  // The values are nowhere but the encrypted store and the weavers' tmpfs.
  const ps = await loomB(['weaver', 'ps', '--json']);
  t.equal(ps.code, 0);
  const outputs = [r.stdout, ps.stdout, versions.stdout, JSON.stringify(listB.body), JSON.stringify(all.body), srv.logs.join('\n')];
  for (const s of secrets) for (const o of outputs) t.notOk(o.includes(s), 'no value in API answers, CLI output or server logs');
  t.ok(filesHolding(srv.dataDir, [w1.id]).some((f) => f.endsWith('config.json')), 'control: the search finds what the files do hold');
  t.same(filesHolding(srv.dataDir, secrets), [], 'no value in any file of the data dir (SQLite and -wal, config.json, conmon logs, …)');
  const config = readFileSync(join(srv.dataDir, 'local', 'weavers', w1.id, 'config.json'), 'utf8');
  t.match(config, '/run/secrets/loom', 'the config has the mount');
  const pids = weaverPids(w1.id);
  t.ok(pids.length > 0, 'found the weaver\'s processes');
  for (const pid of pids) {
    for (const f of ['environ', 'cmdline']) {
      const text = readFileSync(`/proc/${pid}/${f}`);
      t.notOk(secrets.some((s) => text.includes(s)), `no value in /proc/${pid}/${f}`);
    }
  }
  t.notOk(git.authHeaders.some((h) => outputs.some((o) => o.includes(h))), 'the auth header is in no output either');

  // Deleting the weaver unmounts its tmpfs, revokes its identity, drops its weaver secrets.
  t.equal((await srv.api('DELETE', `/api/weaver/${w1.id}`, bob)).status, 204);
  made.splice(made.findIndex(([, id]) => id === w1.id), 1);
  t.same(mountsUnder(join(srv.dataDir, 'local', 'weavers', w1.id)), [], 'no mount of w1 left');
  const after = await srv.api<{ secrets: Secret[] }>('GET', `/api/secrets?org_id=${acme.id}`, alice);
  t.notOk(after.body.secrets.some((s) => s.name === 'ONLY_W1'), 'weaver secrets go with the weaver');
});

t.test('private clone: a named --git-secret, and a clear failure when it does not resolve', async (t) => {
  const gitDir = tempDir('loom-git-');
  const token = `glpat-${rand()}`;
  const git = await startGitHttps(gitDir, token, { app: { 'main.txt': 'app\n' } });
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_GIT_CA_FILE: git.caFile, LOOM_SERVER_WEAVER_GIT_ALLOWED_NETWORKS: '127.0.0.1/32' } });
  const alice = await srv.token('alice');
  const made: string[] = [];
  t.teardown(async () => {
    for (const id of made) await srv.api('DELETE', `/api/weaver/${id}`, alice);
    await srv.stop();
    await git.close();
  });
  const dir = tempDir();
  const loom = loomCli(srv, dir);
  await loom(['login', '--token', alice]);
  // No token: the clone fails (the server asks for credentials).
  let r = await loom(['new', '--repo', git.url('app'), '--json', '--', 'sleep', '3600'], { timeoutMs: 120_000 });
  t.not(r.code, 0, 'an anonymous clone of a private repo fails');
  t.match(r.stderr, /git clone failed/);
  made.push(...(await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', alice)).body.weavers.map((w) => w.id));

  r = await loom(['new', '--repo', git.url('app'), '--git-secret', 'MISSING_TOKEN', '--json', '--', 'sleep', '3600'], { timeoutMs: 120_000 });
  t.not(r.code, 0);
  t.match(r.stderr, /MISSING_TOKEN does not resolve/);
  made.push(...(await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', alice)).body.weavers.map((w) => w.id).filter((id) => !made.includes(id)));

  r = await loom(['secret', 'set', 'DEPLOY_TOKEN', '--org', 'alice'], { input: token });
  t.equal(r.code, 0, r.stderr);
  r = await loom(['new', '--repo', git.url('app'), '--git-secret', 'DEPLOY_TOKEN', '--json', '--', 'sh', '-c', 'cat /workspace/app/main.txt; sleep 3600'], { timeoutMs: 120_000 });
  t.equal(r.code, 0, r.stderr);
  const w = JSON.parse(r.stdout) as Weaver;
  made.push(w.id);
  const out = await waitUntil(async () => ((await logsOf(srv, alice, w.id)).includes('app') ? logsOf(srv, alice, w.id) : null), 'the cloned file');
  t.match(out, 'app', 'cloned with the named secret');
  const ps = await loom(['weaver', 'ps', '--json']);
  for (const o of [r.stdout, r.stderr, ps.stdout, srv.logs.join('\n'), out]) t.notOk(o.includes(token), 'the token is in no output');
  t.same(filesHolding(srv.dataDir, [token]), [], 'nor in any file of the data dir');
});

t.test('kill -9 of loom-server: the running weaver keeps its secrets, and rotation reaches it after the restart', async (t) => {
  const first = await startServer({ keepData: true });
  const dataDir = first.dataDir;
  let current: TestServer = first;
  const alice = await first.token('alice');
  let wid = '';
  t.teardown(async () => {
    if (wid) await current.api('DELETE', `/api/weaver/${wid}`, alice);
    await current.stop();
  });
  const org = (await first.api<{ orgs: { id: string }[] }>('GET', '/api/orgs', alice)).body.orgs[0]!.id;
  const K1 = `k1-${rand()}`;
  const K2 = `k2-${rand()}`;
  const set = (srv: TestServer, v: string) => srv.api('POST', '/api/secrets', alice, { name: 'OPENAI_API_KEY', scope: 'org', org_id: org, value_b64: Buffer.from(v).toString('base64') });
  t.equal((await set(first, K1)).status, 201);
  const w = (await first.api<Weaver>('POST', '/api/weaver', alice, { command: PROBE })).body;
  wid = w.id;
  await running(first, alice, w.id);
  await waitUntil(async () => (await logsOf(first, alice, w.id)).includes(`hash=${sha(K1)}`), 'K1 inside');

  await first.stop('SIGKILL');
  const second = await startServer({ dataDir });
  current = second;
  await running(second, alice, w.id);
  t.match(second.logs.join('\n'), /adopted a running weaver's secrets mount/, 'the injector adopted the mount');
  t.equal((await set(second, K2)).status, 200, 'rotated through the restarted server');
  await waitUntil(async () => (await logsOf(second, alice, w.id)).includes(`hash=${sha(K2)}`), 'K2 inside after the restart');
  t.pass('rotation reached the weaver that outlived the server');
  t.same(filesHolding(dataDir, [K1, K2]), [], 'no value in any file of the data dir');
  t.notOk([...first.logs, ...second.logs].some((l) => l.includes(K1) || l.includes(K2)), 'nor in either server\'s log');
  t.equal((await second.api('DELETE', `/api/weaver/${w.id}`, alice)).status, 204);
  wid = '';
  t.same(mountsUnder(join(dataDir, 'local', 'weavers', w.id)), [], 'unmounted on delete');
});
