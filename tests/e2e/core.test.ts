import t from 'tap';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import Database from 'better-sqlite3';
import { CLI_BIN, SERVER_BIN, freshDataDir, loomCli, run, startServer, tempDir, type TestServer } from '../support/server.js';

type Org = { id: string; slug: string; name: string; is_personal: boolean; role: string };
type Err = { error: { code: string; message: string } };

const sha256hex = (s: string) => createHash('sha256').update(s).digest('hex');

/** A session token through the device flow, over HTTP only (user with a password, approve, poll). */
async function deviceSession(srv: TestServer, user: string): Promise<string> {
  const pw = await run(process.execPath, [SERVER_BIN, 'admin', 'passwd', '--user', user], { env: srv.env, input: 'correct horse battery\n' });
  if (pw.code !== 0) throw new Error(pw.stderr);
  const start = await srv.api<{ device_code: string; user_code: string }>('POST', '/auth/device/start', null, {});
  const form = (o: Record<string, string>) => new URLSearchParams(o);
  const login = await fetch(`${srv.url}/device/login`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form({ username: user, password: 'correct horse battery', code: start.body.user_code }), redirect: 'manual' });
  const cookie = login.headers.get('set-cookie')!.split(';')[0]!;
  const approve = await fetch(`${srv.url}/device/approve`, { method: 'POST', headers: { cookie, 'content-type': 'application/x-www-form-urlencoded' }, body: form({ user_code: start.body.user_code, decision: 'approve' }) });
  if (approve.status !== 200) throw new Error(`approve: ${approve.status}`);
  const poll = await srv.api<{ access_token: string }>('POST', '/auth/device/poll', null, { device_code: start.body.device_code });
  return poll.body.access_token;
}

t.test('appliance core end to end', async (t) => {
  // The token service's clock is moved through this file (a test-only knob, see testKnobs()).
  const clockFile = join(tempDir(), 'auth-clock-offset-ms');
  const srv = await startServer({ t, env: { LOOM_TEST_AUTH_CLOCK_FILE: clockFile } });

  await t.test('health and metrics need no token', async (t) => {
    const h = await srv.api<{ status: string; checks: Record<string, { ok: boolean }> }>('GET', '/health', null);
    t.equal(h.status, 200);
    t.equal(h.body.status, 'ok');
    t.equal(h.body.checks['database']?.ok, true);
    t.ok(h.headers.get('x-request-id'), 'request id header');
    const m = await fetch(srv.url + '/metrics').then((r) => r.text());
    t.match(m, /loom_http_requests_total\{method="GET",route="\/health",status="200"\} \d+/);
    t.match(m, /loom_http_request_duration_seconds_bucket/);
  });

  const alice = await srv.token('alice');
  const bob = await srv.token('bob');

  await t.test('every /api route needs a valid token', async (t) => {
    for (const [method, path] of [['GET', '/api/orgs'], ['POST', '/api/orgs'], ['GET', '/api/me'], ['GET', '/api/orgs/x/members']] as const) {
      const r = await srv.api<Err>(method, path, null, method === 'POST' ? { name: 'x' } : undefined);
      t.equal(r.status, 401, `${method} ${path} without token`);
      t.equal(r.body.error.code, 'missing_token');
      const bad = await srv.api<Err>(method, path, 'loom_a_not-a-real-token', method === 'POST' ? { name: 'x' } : undefined);
      t.equal(bad.status, 401);
      t.equal(bad.body.error.code, 'invalid_token');
    }
    const before = await srv.api<{ orgs: Org[] }>('GET', '/api/orgs', alice);
    t.equal(before.body.orgs.length, 1, 'nothing was created by the rejected POSTs');
  });

  await t.test('expired tokens are refused and removed', async (t) => {
    const tok = await srv.token('carol');
    t.equal((await srv.api('GET', '/api/me', tok)).status, 200);
    const db = new Database(join(srv.dataDir, 'loom.db'));
    db.prepare("UPDATE tokens SET expires_at = '2000-01-01T00:00:00.000Z' WHERE name = 'admin token' AND user_id = (SELECT id FROM users WHERE username = 'carol')").run();
    const r = await srv.api<Err>('GET', '/api/me', tok);
    t.equal(r.status, 401);
    t.equal(r.body.error.code, 'invalid_token');
    const left = db.prepare("SELECT COUNT(*) AS n FROM tokens WHERE user_id = (SELECT id FROM users WHERE username = 'carol')").get() as { n: number };
    t.equal(left.n, 0, 'expired token deleted');
    const hashes = db.prepare('SELECT token_hash FROM tokens WHERE user_id = (SELECT id FROM users WHERE username = ?)').all('alice') as { token_hash: string }[];
    t.same(hashes.map((h) => h.token_hash), [sha256hex(alice)], "alice's one token is stored as the SHA-256 of the token, nothing else");
    const all = db.prepare('SELECT token_hash FROM tokens').all() as { token_hash: string }[];
    for (const h of all) t.match(h.token_hash, /^[0-9a-f]{64}$/, 'every stored token is a SHA-256 hex digest');
    db.close();
  });

  await t.test('API tokens: created, listed without the secret', async (t) => {
    const tok = await srv.api<{ token: string }>('POST', '/api/tokens', alice, { name: 'ci', expires_in_days: 1 });
    t.equal(tok.status, 201);
    t.match(tok.body.token, /^loom_a_/);
    const list = await srv.api<{ tokens: { name: string }[] }>('GET', '/api/tokens', alice);
    t.ok(list.body.tokens.some((x) => x.name === 'ci'));
    t.notOk(JSON.stringify(list.body).includes(tok.body.token), 'token listing never shows the secret');
  });

  await t.test('session tokens slide their expiry on use, and expire when idle', async (t) => {
    t.teardown(() => writeFileSync(clockFile, '0'));
    const setClock = (offsetMs: number) => writeFileSync(clockFile, String(offsetMs));
    type Me = { token: { kind: string; expires_at: string } };
    const session = await deviceSession(srv, 'erin');
    t.match(session, /^loom_s_/, 'the device flow hands out a session token');
    const db = new Database(join(srv.dataDir, 'loom.db'), { readonly: true });
    t.teardown(() => db.close());
    const stored = () => (db.prepare('SELECT expires_at FROM tokens WHERE token_hash = ?').get(sha256hex(session)) as { expires_at: string } | undefined)?.expires_at;

    const me0 = await srv.api<Me>('GET', '/api/me', session);
    t.equal(me0.status, 200);
    t.equal(me0.body.token.kind, 'session');
    const e0 = Date.parse(me0.body.token.expires_at);
    t.equal(stored(), me0.body.token.expires_at, 'the expiry the API shows is the stored one');

    // Two minutes later on the server's token clock (a use writes the new expiry at most once a minute).
    setClock(120_000);
    const me1 = await srv.api<Me>('GET', '/api/me', session);
    t.equal(me1.status, 200);
    const e1 = Date.parse(me1.body.token.expires_at);
    t.ok(e1 >= e0 + 120_000, `a use two minutes later moved the expiry forward by at least two minutes (${me0.body.token.expires_at} → ${me1.body.token.expires_at})`);
    t.equal(stored(), me1.body.token.expires_at, 'and stored it');

    // An API token with a fixed lifetime does not slide.
    const api = (await srv.api<{ token: string }>('POST', '/api/tokens', alice, { name: 'fixed', expires_in_days: 1 })).body.token;
    const a0 = (await srv.api<Me>('GET', '/api/me', api)).body.token.expires_at;
    setClock(240_000);
    t.equal((await srv.api<Me>('GET', '/api/me', api)).body.token.expires_at, a0, 'an API token keeps its expiry');

    // Unused past its (slid) expiry, the session is refused and removed.
    setClock(e1 - Date.now() + 60_000);
    const idle = await srv.api<Err>('GET', '/api/me', session);
    t.equal(idle.status, 401, 'an idle session expires');
    t.equal(idle.body.error.code, 'invalid_token');
    t.equal(stored(), undefined, 'the expired session is deleted');
  });

  await t.test('bad input is a clear error and changes nothing', async (t) => {
    const cases: [string, string | object, number, string][] = [
      ['malformed JSON', '{"name":', 400, 'malformed_json'],
      ['wrong type', { name: 42 }, 400, 'invalid_request'],
      ['unknown field', { name: 'Team X', colour: 'red' }, 400, 'invalid_request'],
      ['missing field', {}, 400, 'invalid_request'],
      ['empty name', { name: '' }, 400, 'invalid_request'],
      ['bad slug', { name: 'Team X', slug: 'Not A Slug!' }, 400, 'invalid_slug'],
      ['too large', { name: 'x'.repeat(2 * 1024 * 1024) }, 413, 'body_too_large'],
    ];
    for (const [what, body, status, code] of cases) {
      const r = await srv.api<Err>('POST', '/api/orgs', alice, body);
      t.equal(r.status, status, `${what}: status`);
      t.equal(r.body.error.code, code, `${what}: code`);
      t.type(r.body.error.message, 'string');
    }
    const unknown = await srv.api<Err>('GET', '/api/nope', alice);
    t.equal(unknown.status, 404);
    t.equal(unknown.body.error.code, 'not_found');
    const after = await srv.api<{ orgs: Org[] }>('GET', '/api/orgs', alice);
    t.same(after.body.orgs.map((o) => o.slug), ['alice'], 'no org was created by bad requests');
  });

  await t.test("user B can neither list, read nor change anything of user A's org", async (t) => {
    const team = await srv.api<Org>('POST', '/api/orgs', alice, { name: 'Alpha Team' });
    t.equal(team.status, 201);
    t.equal(team.body.slug, 'alpha-team');
    t.equal(team.body.role, 'owner');
    const dup = await srv.api<Err>('POST', '/api/orgs', alice, { name: 'Alpha Team' });
    t.equal(dup.status, 409);

    const aliceOrgs = (await srv.api<{ orgs: Org[] }>('GET', '/api/orgs', alice)).body.orgs;
    const bobOrgs = (await srv.api<{ orgs: Org[] }>('GET', '/api/orgs', bob)).body.orgs;
    t.same(bobOrgs.map((o) => o.slug), ['bob'], 'B lists only his own org');
    const alicePersonal = aliceOrgs.find((o) => o.is_personal)!;
    const orgs = [team.body, alicePersonal];
    // Reads first, then the adding call, the removing one last (so a broken check cannot hide
    // behind an object an earlier call destroyed); then the owner's view must be unchanged.
    for (const org of orgs) {
      const read = await srv.api<Err>('GET', `/api/orgs/${org.id}`, bob);
      t.equal(read.status, 404, 'read is 404, not 403');
      t.notMatch(JSON.stringify(read.body), org.name, 'no name leaks');
      t.equal((await srv.api('GET', `/api/orgs/${org.id}/members`, bob)).status, 404);
    }
    const unknownId = await srv.api<Err>('GET', '/api/orgs/00000000-0000-4000-8000-000000000000', bob);
    t.equal(unknownId.status, 404, 'an unknown id looks the same as a hidden one');
    for (const org of orgs) t.equal((await srv.api('POST', `/api/orgs/${org.id}/members`, bob, { username: 'bob' })).status, 404, 'cannot add himself');
    for (const org of orgs) t.equal((await srv.api('DELETE', `/api/orgs/${org.id}/members/alice`, bob)).status, 404, 'cannot remove the owner');
    for (const org of orgs) {
      const members = await srv.api<{ members: { username: string }[] }>('GET', `/api/orgs/${org.id}/members`, alice);
      t.equal(members.status, 200, `${org.slug} still there for its owner`);
      t.same(members.body.members.map((m) => m.username), ['alice'], `${org.slug}: membership unchanged`);
    }
    t.same((await srv.api<{ orgs: Org[] }>('GET', '/api/orgs', alice)).body.orgs.map((o) => o.id).sort(), aliceOrgs.map((o) => o.id).sort(), "the owner's orgs are unchanged");

    // Membership is checked on every request, not only at creation.
    t.equal((await srv.api('POST', `/api/orgs/${team.body.id}/members`, alice, { username: 'bob' })).status, 201);
    t.equal((await srv.api('GET', `/api/orgs/${team.body.id}`, bob)).status, 200, 'B sees it once a member');
    const forbidden = await srv.api<Err>('POST', `/api/orgs/${team.body.id}/members`, bob, { username: 'carol' });
    t.equal(forbidden.status, 403, 'a member cannot add members');
    t.equal((await srv.api('DELETE', `/api/orgs/${team.body.id}/members/bob`, alice)).status, 204);
    t.equal((await srv.api('GET', `/api/orgs/${team.body.id}`, bob)).status, 404, 'removed: 404 again');
    const lastOwner = await srv.api<Err>('DELETE', `/api/orgs/${team.body.id}/members/alice`, alice);
    t.equal(lastOwner.status, 409, 'the last owner stays');
    const personal = await srv.api<Err>('POST', `/api/orgs/${alicePersonal.id}/members`, alice, { username: 'bob' });
    t.equal(personal.status, 400, 'a personal org takes no members');
  });

  await t.test('CLI: login --token, whoami, org list/create, logout', async (t) => {
    const cfg = tempDir();
    t.teardown(() => rmSync(cfg, { recursive: true, force: true }));
    const loom = loomCli(srv, cfg);
    const login = await loom(['login', '--token', alice]);
    t.equal(login.code, 0, login.stderr);
    t.match(login.stdout, /Logged in to .* as alice/);
    const st = statSync(join(cfg, 'credentials.json'));
    t.equal(st.mode & 0o777, 0o600, 'credentials file is 0600');
    const creds = JSON.parse(readFileSync(join(cfg, 'credentials.json'), 'utf8')) as { servers: Record<string, unknown> };
    t.ok(creds.servers[srv.url], 'keyed by server URL');

    t.match((await loom(['whoami'])).stdout, /^alice on /);
    const created = await loom(['org', 'create', 'Beta Crew', '--slug', 'beta']);
    t.equal(created.code, 0, created.stderr);
    const list = await loom(['org', 'list', '--json']);
    const orgs = JSON.parse(list.stdout) as Org[];
    t.ok(orgs.some((o) => o.slug === 'beta' && o.role === 'owner'));
    const table = await loom(['org', 'list']);
    t.match(table.stdout, /^ID\s+SLUG\s+NAME\s+ROLE\s+PERSONAL/);

    const dup = await loom(['org', 'create', 'Beta Crew', '--slug', 'beta']);
    t.equal(dup.code, 1);
    t.equal(dup.stderr.trim().split('\n').length, 1, 'one line');
    t.match(dup.stderr, /^loom: an org with slug beta already exists/);
    t.notMatch(dup.stderr, /at .*\.js/, 'no stack trace');

    t.equal((await loom(['logout'])).code, 0);
    const after = await loom(['whoami']);
    t.equal(after.code, 1);
    t.match(after.stderr, /^loom: not logged in to /);
    const revoked = await srv.api('GET', '/api/me', alice);
    t.equal(revoked.status, 401, 'logout revoked the token on the server');
  });

  await t.test('CLI: device-flow login approved on the /device page', async (t) => {
    const pw = await run(process.execPath, [SERVER_BIN, 'admin', 'passwd', '--user', 'dave'], { env: srv.env, input: 'correct horse battery\n' });
    t.equal(pw.code, 0, pw.stderr);
    const cfg = tempDir();
    const child = spawn(process.execPath, [CLI_BIN, 'login'], { env: { ...process.env, LOOM_SERVER_URL: srv.url, LOOM_CONFIG_DIR: cfg }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<string>((resolve) => {
      createInterface({ input: child.stderr }).on('line', (l) => {
        const m = /^\s+([A-Z0-9]{4}-[A-Z0-9]{4})\s*$/.exec(l);
        if (m) resolve(m[1]!);
      });
    });
    const exited = new Promise<number | null>((r) => child.once('exit', r));

    // Wrong password: refused, nothing approved.
    const bad = await fetch(`${srv.url}/device/login`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ username: 'dave', password: 'wrong', code }), redirect: 'manual' });
    t.equal(bad.status, 401);
    const login = await fetch(`${srv.url}/device/login`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ username: 'dave', password: 'correct horse battery', code }), redirect: 'manual' });
    t.equal(login.status, 303);
    const cookie = login.headers.get('set-cookie')!.split(';')[0]!;
    t.match(login.headers.get('set-cookie')!, /HttpOnly; SameSite=Strict/);
    const pageHtml = await fetch(`${srv.url}/device?code=${code}`, { headers: { cookie } }).then((r) => r.text());
    t.match(pageHtml, /Signed in as <b>dave<\/b>/);
    const wrongCode = await fetch(`${srv.url}/device/approve`, { method: 'POST', headers: { cookie, 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ user_code: 'ZZZZ-ZZZZ', decision: 'approve' }) });
    t.equal(wrongCode.status, 400, 'unknown code refused');
    const approve = await fetch(`${srv.url}/device/approve`, { method: 'POST', headers: { cookie, 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ user_code: code.toLowerCase(), decision: 'approve' }) });
    t.equal(approve.status, 200);
    t.equal(await exited, 0, 'loom login exits 0');
    t.match(out, /Logged in to .* as dave/);
    const who = await loomCli(srv, cfg)(['whoami', '--json']);
    t.equal((JSON.parse(who.stdout) as { username: string }).username, 'dave');
  });

  await t.test('device poll rejects unknown codes and answers pending', async (t) => {
    const bad = await srv.api<Err>('POST', '/auth/device/poll', null, { device_code: 'nope' });
    t.equal(bad.status, 400);
    t.equal(bad.body.error.code, 'invalid_device_code');
    const wrongType = await srv.api<Err>('POST', '/auth/device/poll', null, { device_code: 5 });
    t.equal(wrongType.status, 400);
    const s = await srv.api<{ device_code: string; user_code: string; verification_uri: string; interval: number; expires_in: number }>('POST', '/auth/device/start', null, {});
    t.equal(s.status, 200);
    t.match(s.body.user_code, /^[A-Z0-9]{4}-[A-Z0-9]{4}$/);
    t.equal(s.body.verification_uri, `${srv.url}/device`);
    const p = await srv.api<{ status: string }>('POST', '/auth/device/poll', null, { device_code: s.body.device_code });
    t.same(p.body, { status: 'pending' });
  });

  await t.test('CLI errors are one line with a non-zero exit', async (t) => {
    const loom = loomCli(srv, tempDir());
    const notLogged = await loom(['org', 'list']);
    t.equal(notLogged.code, 1);
    t.match(notLogged.stderr, /^loom: not logged in to http:\/\/127\.0\.0\.1:\d+: run `loom login`\n$/);
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', () => r()));
    const closedPort = (closed.address() as { port: number }).port;
    await new Promise((r) => closed.close(r));
    const unreachable = await loom(['--server-url', `http://127.0.0.1:${closedPort}`, 'login', '--token', 'x']);
    t.equal(unreachable.code, 1);
    t.equal(unreachable.stderr, `loom: cannot reach http://127.0.0.1:${closedPort}: ECONNREFUSED\n`);
    const badToken = await loom(['login', '--token', 'loom_a_bogus']);
    t.equal(badToken.code, 1);
    t.match(badToken.stderr, /^loom: invalid or expired token/);
    const unknownCmd = await loom(['frobnicate']);
    t.not(unknownCmd.code, 0);
  });
});

t.test('server start-up failures are one clear line', async (t) => {
  const bad = await run(process.execPath, [SERVER_BIN], { env: { ...process.env, LOOM_DATA_DIR: freshDataDir(), LOOM_SERVER_WEAVER_MAX_CONCURRENT: 'lots' } });
  t.equal(bad.code, 1);
  t.equal(bad.stderr, 'loom-server: invalid LOOM_SERVER_WEAVER_MAX_CONCURRENT: "lots" (accepts a whole number from 1 to 100000)\n');
  const badAddr = await run(process.execPath, [SERVER_BIN], { env: { ...process.env, LOOM_DATA_DIR: freshDataDir(), LOOM_HTTP_ADDR: 'nope' } });
  t.equal(badAddr.code, 1);
  t.match(badAddr.stderr, /^loom-server: invalid LOOM_HTTP_ADDR: "nope"/);
  const badBackend = await run(process.execPath, [SERVER_BIN], { env: { ...process.env, LOOM_DATA_DIR: freshDataDir(), LOOM_SERVER_WEAVER_BACKEND: 'docker' } });
  t.match(badBackend.stderr, /^loom-server: invalid LOOM_SERVER_WEAVER_BACKEND: "docker" \(accepts one of local, kubernetes\)\n$/);

  // A data dir that is not writable (a file in the way; root ignores mode bits).
  const parent = freshDataDir();
  const blocker = join(parent, 'file');
  writeFileSync(blocker, 'x');
  const ro = await run(process.execPath, [SERVER_BIN], { env: { ...process.env, LOOM_DATA_DIR: join(blocker, 'data'), LOOM_HTTP_ADDR: '127.0.0.1:0', LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  t.equal(ro.code, 1);
  t.match(ro.stderr, /^loom-server: data dir .* is not writable: /m);

  // A port in use.
  const holder = createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => holder.close());
  const port = (holder.address() as { port: number }).port;
  const dataDir = freshDataDir();
  const inUse = await run(process.execPath, [SERVER_BIN], { env: { ...process.env, LOOM_DATA_DIR: dataDir, LOOM_HTTP_ADDR: `127.0.0.1:${port}`, LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  t.equal(inUse.code, 1);
  t.match(inUse.stderr, new RegExp(`^loom-server: cannot listen on 127\\.0\\.0\\.1:${port}: address already in use`, 'm'));
});

t.test('SIGTERM shuts down gracefully', async (t) => {
  const srv = await startServer({ t, env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  const code = await srv.stop('SIGTERM');
  t.equal(code, 0);
  t.ok(srv.logs.some((l) => l.includes('"msg":"stopped"')));
});
