/**
 * The secrets store on a real SQLite file: envelope encryption and its bindings, the master key
 * file (generated 0400, refused when wrong, missing or readable by others), master key rotation
 * (every secret still readable; an interrupted rotation completed), resolution weaver > repo > org,
 * identities (hashed, bound to one weaver, revoked), and the real binary refusing a wrong key.
 */
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { loadConfig } from '../../src/server/config/load.js';
import { openCore } from '../../src/server/server.js';
import { secretsMigrations } from '../../src/secrets/migrations.js';
import { Keyring } from '../../src/secrets/keyring.js';
import { SecretsStore } from '../../src/secrets/store.js';
import { SecretsService } from '../../src/secrets/service.js';
import { decryptVersion, encryptVersion, open, seal } from '../../src/secrets/crypto.js';
import { normalizeRepoUrl } from '../../src/secrets/model.js';
import { tokenEnv } from '../../src/provisioners/local/git.js';
import type { WeaverRef } from '../../src/secrets/policy.js';
import { SERVER_BIN, freshDataDir, run, startServer } from '../support/server.js';

const quiet = pino({ level: 'silent' });
/** A LoomError pattern for t.throws (matched as an object pattern). */
const status = (n: number) => ({ status: n }) as unknown as Error;

function core(dataDir: string) {
  const cfg = loadConfig({ LOOM_DATA_DIR: dataDir });
  return { cfg, core: openCore(cfg, quiet, [{ name: 'secrets', migrations: secretsMigrations }]) };
}

t.test('envelope: a sealed value opens only with its key and its binding', async (t) => {
  const kek = randomBytes(32);
  const b = { secretId: 's1', orgId: 'o1', scope: 'org', target: 'o1', name: 'API_KEY', version: 1 };
  const v = encryptVersion(kek, 1, b, Buffer.from('the value'));
  t.equal(decryptVersion(kek, 1, b, v).toString(), 'the value');
  t.notOk(v.ciphertext.includes(Buffer.from('the value')), 'ciphertext does not hold the plaintext');
  t.throws(() => decryptVersion(kek, 1, { ...b, name: 'OTHER' }, v), 'another name: refused');
  t.throws(() => decryptVersion(kek, 1, { ...b, version: 2 }, v), 'another version: refused');
  t.throws(() => decryptVersion(kek, 1, { ...b, scope: 'repo' }, v), 'another scope: refused');
  t.throws(() => decryptVersion(randomBytes(32), 1, b, v), 'another master key: refused');
  const flipped = Buffer.from(v.ciphertext);
  flipped[14]! ^= 1;
  t.throws(() => decryptVersion(kek, 1, b, { ...v, ciphertext: flipped }), 'a flipped bit: refused');
  t.throws(() => open(kek, seal(kek, Buffer.from('x'), 'a'), 'b'), 'associated data is checked');
});

t.test('repo URLs have one normal form; anything else is refused', async (t) => {
  t.equal(normalizeRepoUrl('HTTPS://GitHub.com:443/Acme/App.git/'), 'https://github.com/Acme/App');
  t.equal(normalizeRepoUrl('https://git.example.com:8443/a/b'), 'https://git.example.com:8443/a/b');
  for (const bad of ['http://github.com/a/b', 'https://u:p@github.com/a/b', 'https://github.com/a/b?x=1', 'https://github.com/', 'not a url', 'git@github.com:a/b']) {
    t.throws(() => normalizeRepoUrl(bad), status(400), bad);
  }
});

t.test('the clone token goes in git config through the environment, scoped to the URL, redirects off', async (t) => {
  const env = tokenEnv('https://git.example.com/a/b.git', 'tok');
  t.same(env, {
    GIT_CONFIG_COUNT: '2',
    GIT_CONFIG_KEY_0: 'http.https://git.example.com/a/b.git.extraHeader',
    GIT_CONFIG_VALUE_0: `Authorization: Basic ${Buffer.from('x-access-token:tok').toString('base64')}`,
    GIT_CONFIG_KEY_1: 'http.followRedirects',
    GIT_CONFIG_VALUE_1: 'false',
  });
  t.equal(tokenEnv('https://h/r', 'oauth2:tok').GIT_CONFIG_VALUE_0, `Authorization: Basic ${Buffer.from('oauth2:tok').toString('base64')}`, 'user:token given as is');
});

t.test('master key file: generated 0400 with a back-up warning; wrong, missing or exposed keys stop', async (t) => {
  const dir = freshDataDir();
  const { cfg, core: c } = core(dir);
  t.teardown(() => c.close());
  const lines: string[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });
  const k = Keyring.open(c.ctx.db, cfg.secrets.masterKeyFile, log);
  t.equal(k.version, 1);
  t.equal(cfg.secrets.masterKeyFile, join(dir, 'secrets', 'master.key'), 'default path under the data dir');
  t.equal(statSync(cfg.secrets.masterKeyFile).mode & 0o777, 0o400, 'mode 0400');
  t.match(readFileSync(cfg.secrets.masterKeyFile, 'utf8'), /^[0-9a-f]{64}\n$/);
  t.match(lines.join(''), /back this file up/);
  t.notOk(lines.join('').includes(readFileSync(cfg.secrets.masterKeyFile, 'utf8').trim()), 'the key is never logged');
  t.equal(Keyring.open(c.ctx.db, cfg.secrets.masterKeyFile, quiet).version, 1, 'opens again with the same key');

  const key = readFileSync(cfg.secrets.masterKeyFile);
  chmodSync(cfg.secrets.masterKeyFile, 0o644);
  t.throws(() => Keyring.open(c.ctx.db, cfg.secrets.masterKeyFile, quiet), /readable by others/);
  chmodSync(cfg.secrets.masterKeyFile, 0o600);
  writeFileSync(cfg.secrets.masterKeyFile, `${randomBytes(32).toString('hex')}\n`);
  t.throws(() => Keyring.open(c.ctx.db, cfg.secrets.masterKeyFile, quiet), /not the key this database was encrypted with/);
  writeFileSync(cfg.secrets.masterKeyFile, 'short\n');
  t.throws(() => Keyring.open(c.ctx.db, cfg.secrets.masterKeyFile, quiet), /not 64 hex digits/);
  renameSync(cfg.secrets.masterKeyFile, `${cfg.secrets.masterKeyFile}.gone`);
  t.throws(() => Keyring.open(c.ctx.db, cfg.secrets.masterKeyFile, quiet), /is missing, but the database holds secrets/);
  t.notOk(existsSync(cfg.secrets.masterKeyFile), 'and no new key was generated in its place');
  writeFileSync(cfg.secrets.masterKeyFile, key, { mode: 0o400 });
  t.equal(Keyring.open(c.ctx.db, cfg.secrets.masterKeyFile, quiet).version, 1, 'the right key opens it again');
});

/** A store with users alice (owner of acme), bob (member) and two weavers, one on a repo. */
async function fixture(t: Test) {
  const dir = freshDataDir();
  const { cfg, core: c } = core(dir);
  t.teardown(() => c.close());
  const alice = await c.ctx.users.create('alice', {});
  const bob = await c.ctx.users.create('bob', {});
  const acme = c.ctx.orgs.create(alice.id, 'Acme');
  c.ctx.orgs.addMember(acme, bob.id, 'member');
  const weavers = new Map<string, WeaverRef>();
  const w1: WeaverRef = { id: 'w1', org_id: acme.id, owner_user_id: bob.id, repo: 'https://github.com/acme/app.git' };
  const w2: WeaverRef = { id: 'w2', org_id: acme.id, owner_user_id: bob.id };
  weavers.set('w1', w1);
  weavers.set('w2', w2);
  const make = () =>
    new SecretsService({ store: new SecretsStore(c.ctx.db), keyring: Keyring.open(c.ctx.db, cfg.secrets.masterKeyFile, quiet), orgs: c.ctx.orgs, weavers: { get: (id) => weavers.get(id) ?? null }, log: quiet });
  return { cfg, c, alice, bob, acme, w1, w2, weavers, make };
}

const values = (svc: SecretsService, token: string) => Object.fromEntries(svc.fetch(token, undefined, 'test').secrets.map((s) => [s.name, s.value.toString()]));

t.test('resolution weaver > repo > org; identities bound, hashed and revoked', async (t) => {
  const f = await fixture(t);
  const svc = f.make();
  const v = (s: string) => Buffer.from(s);
  svc.put(f.alice, { orgId: f.acme.id, scope: 'org', target: f.acme.id }, 'TOKEN', v('org'), 'set');
  svc.put(f.alice, { orgId: f.acme.id, scope: 'org', target: f.acme.id }, 'ONLY_ORG', v('o'), 'set');
  svc.put(f.alice, svc.resolveTarget(f.alice, { scope: 'repo', org_id: f.acme.id, repo: 'https://GITHUB.com/acme/app' }), 'TOKEN', v('repo'), 'set');
  const t1 = svc.mintIdentity(f.w1);
  const t2 = svc.mintIdentity(f.w2);
  t.same(values(svc, t1), { TOKEN: 'repo', ONLY_ORG: 'o' }, 'repo beats org for the weaver on that repo');
  t.same(values(svc, t2), { TOKEN: 'org', ONLY_ORG: 'o' }, 'org for a weaver on no repo');
  svc.put(f.bob, svc.resolveTarget(f.bob, { scope: 'weaver', weaver_id: 'w1' }), 'TOKEN', v('weaver'), 'set');
  t.same(values(svc, t1), { TOKEN: 'weaver', ONLY_ORG: 'o' }, 'weaver beats repo');
  t.same(values(svc, t2).TOKEN, 'org', 'and only for that weaver');

  const hashes = f.c.ctx.db.prepare('SELECT token_hash FROM weaver_identities').all() as { token_hash: string }[];
  t.notOk(hashes.some((h) => h.token_hash === t1 || h.token_hash === t2), 'identities are stored hashed');
  const t1b = svc.mintIdentity(f.w1);
  t.throws(() => svc.fetch(t1, undefined, 'test'), status(401), 'a re-minted identity replaces the old one');
  t.equal(svc.fetch(t1b, undefined, 'test').weaver.id, 'w1', 'bound to exactly its weaver');
  svc.forgetWeaver('w1');
  t.throws(() => svc.fetch(t1b, undefined, 'test'), status(401), 'revoked when the weaver goes');
  t.equal(svc.list(f.alice, { org_id: f.acme.id }).filter((s) => s.scope === 'weaver').length, 0, 'its weaver secrets are gone');
  f.weavers.delete('w2');
  t.throws(() => svc.fetch(t2, undefined, 'test'), status(401), 'an identity of a weaver without a record is refused');

  // Asking for a name that does not resolve is a recorded denial.
  const t3 = svc.mintIdentity({ id: 'w1', org_id: f.acme.id });
  f.weavers.set('w1', f.w1);
  t.same(svc.fetch(t3, ['NOT_HERE'], 'test').secrets, []);
  const log = svc.accessLog(f.alice, f.acme.id, 100);
  t.ok(log.some((e) => e.outcome === 'denied' && e.name === 'NOT_HERE' && e.weaver_id === 'w1'), 'denial recorded');
  t.ok(log.some((e) => e.outcome === 'read' && e.name === 'TOKEN' && e.scope === 'weaver' && e.version === 1), 'read recorded with scope and version');
  t.notOk(JSON.stringify(log).match(/"(org|repo|weaver|o)"\s*[,}].*value/), 'no value field');
});

t.test('master key rotation re-wraps every data key; every secret stays readable', async (t) => {
  const f = await fixture(t);
  let svc = f.make();
  const vals: Record<string, string> = {};
  for (let i = 0; i < 5; i++) {
    const name = `KEY_${i}`;
    vals[name] = randomBytes(20).toString('hex');
    svc.put(f.alice, { orgId: f.acme.id, scope: 'org', target: f.acme.id }, name, Buffer.from('old'), 'set');
    svc.put(f.alice, { orgId: f.acme.id, scope: 'org', target: f.acme.id }, name, Buffer.from(vals[name]!), 'set');
  }
  const before = readFileSync(f.cfg.secrets.masterKeyFile, 'utf8');
  const r = Keyring.rotate(f.c.ctx.db, f.cfg.secrets.masterKeyFile, quiet);
  t.same(r, { version: 2, rewrapped: 10 });
  t.not(readFileSync(f.cfg.secrets.masterKeyFile, 'utf8'), before, 'a new key file');
  t.equal(statSync(f.cfg.secrets.masterKeyFile).mode & 0o777, 0o400);
  t.throws(() => svc.fetch(svc.mintIdentity(f.w2), undefined, 'test'), status(503), 'a server still holding the old key refuses until restarted');
  svc = f.make();
  t.same(values(svc, svc.mintIdentity(f.w2)), vals, 'every current value readable under the new key');
  const kv = f.c.ctx.db.prepare('SELECT DISTINCT kek_version FROM secret_versions').all() as { kek_version: number }[];
  t.same(kv, [{ kek_version: 2 }], 'every version re-wrapped');

  // A rotation that committed but crashed before installing its key file is completed on open.
  const cur = readFileSync(f.cfg.secrets.masterKeyFile);
  Keyring.rotate(f.c.ctx.db, f.cfg.secrets.masterKeyFile, quiet);
  const committed = readFileSync(f.cfg.secrets.masterKeyFile);
  chmodSync(f.cfg.secrets.masterKeyFile, 0o600);
  writeFileSync(f.cfg.secrets.masterKeyFile, cur);
  writeFileSync(`${f.cfg.secrets.masterKeyFile}.new`, committed, { mode: 0o400 });
  chmodSync(f.cfg.secrets.masterKeyFile, 0o400);
  svc = f.make();
  t.same(values(svc, svc.mintIdentity(f.w2)), vals, 'the interrupted rotation was completed');
  t.same(readFileSync(f.cfg.secrets.masterKeyFile), committed);
});

t.test('loom-server: a wrong master key stops it with one line; rotate-master-key keeps it starting', async (t) => {
  const dataDir = freshDataDir();
  const env = { ...process.env, LOOM_DATA_DIR: dataDir, LOOM_HTTP_ADDR: '127.0.0.1:0', LOOM_SERVER_WEAVER_ENABLED: 'false' };
  const srv = await startServer({ dataDir, keepData: true, env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  const tok = await srv.token('alice');
  const put = await srv.api<{ id: string }>('POST', '/api/secrets', tok, { name: 'API_KEY', scope: 'org', org_id: (await srv.api<{ orgs: { id: string }[] }>('GET', '/api/orgs', tok)).body.orgs[0]!.id, value_b64: Buffer.from('v').toString('base64') });
  t.equal(put.status, 201);
  t.match(srv.logs.join('\n'), /back this file up/, 'the first start says to back the key up');
  await srv.stop();

  const keyFile = join(dataDir, 'secrets', 'master.key');
  const key = readFileSync(keyFile);
  const wrong = join(dataDir, 'wrong.key');
  writeFileSync(wrong, `${randomBytes(32).toString('hex')}\n`, { mode: 0o400 });
  let r = await run(process.execPath, [SERVER_BIN], { env: { ...env, LOOM_SECRETS_MASTER_KEY_FILE: wrong } });
  t.not(r.code, 0, 'refuses to start');
  const lines = r.stderr.trim().split('\n').filter((l) => l.startsWith('loom-server:'));
  t.equal(lines.length, 1);
  t.match(lines[0], /^loom-server: secrets master key .*wrong\.key is not the key this database was encrypted with/);
  r = await run(process.execPath, [SERVER_BIN], { env: { ...env, LOOM_SECRETS_MASTER_KEY_FILE: join(dataDir, 'nope.key') } });
  t.not(r.code, 0);
  t.match(r.stderr, /loom-server: secrets master key .*nope\.key is missing/);

  r = await run(process.execPath, [SERVER_BIN, 'admin', 'rotate-master-key'], { env });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /rotated to version 2; 1 data key\(s\) re-wrapped. Back up/);
  t.not(readFileSync(keyFile, 'utf8'), key.toString());
  const again = await startServer({ dataDir, env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  t.equal((await again.api<{ count: number }>('GET', '/api/secrets', tok)).body.count, 1, 'starts with the rotated key');
  await again.stop();
});
