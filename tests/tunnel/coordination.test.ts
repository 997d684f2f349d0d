/**
 * Coordination without weavers: device registration with bad input and the wrong people, the CLI's
 * key file (0600, public half only sent), sessions refused for unknown weavers, and the ULA /48
 * generated once and kept across restarts. The real server and the real `loom` CLI.
 */
import t from 'tap';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, loomCli, tempDir, freshDataDir } from '../support/server.js';
import { newKeyPair, publicKeyFor } from '../../src/tunnel/keys.js';
import { initiationIsFor, mac1Key } from '../../src/tunnel/mac1.js';
import { addMacs, createInitiation, makeIdentity } from '../../src/tunnel/engine/noise.js';
import Database from 'better-sqlite3';
import { ConfigError, loadConfig } from '../../src/server/config/load.js';

type Err = { error: { code: string; message: string } };
type Device = { id: string; name: string; public_key: string };
const key = () => newKeyPair().publicKey.toString('base64');

t.test('the gateway routes an initiation by its mac1: only the addressed weaver key validates it', async (t) => {
  const client = newKeyPair();
  const weaverA = newKeyPair();
  const weaverB = newKeyPair();
  const id = makeIdentity(client.privateKey, weaverA.publicKey);
  const { message } = createInitiation(id, 1);
  addMacs(message, id.mac1KeyPeer, null); // as the client's engine sends it
  t.ok(initiationIsFor(message, mac1Key(weaverA.publicKey)), 'the addressed weaver');
  t.notOk(initiationIsFor(message, mac1Key(weaverB.publicKey)), 'another weaver');
  const tampered = Buffer.from(message);
  tampered[8] = tampered[8]! ^ 1;
  t.notOk(initiationIsFor(tampered, mac1Key(weaverA.publicKey)), 'a changed byte breaks mac1');
  t.notOk(initiationIsFor(message.subarray(0, 147), mac1Key(weaverA.publicKey)), 'a short datagram is not an initiation');
  const asData = Buffer.from(message);
  asData[0] = 4;
  t.notOk(initiationIsFor(asData, mac1Key(weaverA.publicKey)), 'another message type is not an initiation');
});

t.test('gateway variables: wrong values stop the server naming the variable', async (t) => {
  for (const [name, value] of [['LOOM_TUNNEL_UDP_ADDR', 'nope'], ['LOOM_TUNNEL_UDP_ADDR', '0.0.0.0:70000'], ['LOOM_TUNNEL_UDP_ENDPOINT', 'host:port']]) {
    t.throws(() => loadConfig({ [name!]: value }), new ConfigError(name!, 'host:port, e.g. 0.0.0.0:51820 or [::]:51820 (empty: off)'), `${name}=${value}`);
  }
  t.same(loadConfig({ LOOM_TUNNEL_UDP_ADDR: '[::]:51820' }).tunnel, { udpAddr: '[::]:51820', udpEndpoint: '', k8sImage: '' });
  t.same(loadConfig({}).tunnel, { udpAddr: '', udpEndpoint: '', k8sImage: '' }, 'off by default');
});

t.test('X25519 keys: the public half matches wg pubkey', async (t) => {
  const kp = newKeyPair();
  t.same(publicKeyFor(kp.privateKey), kp.publicKey);
});

t.test('devices and sessions: bad input, other users, nothing changed', async (t) => {
  const srv = await startServer({ t, env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  const alice = await srv.token('alice');
  const mallory = await srv.token('mallory');
  const k1 = key();
  const ok = await srv.api<Device>('POST', '/api/wg/devices', alice, { name: 'laptop', public_key: k1 });
  t.equal(ok.status, 201);
  const list = async (tok: string) => JSON.stringify((await srv.api('GET', '/api/wg/devices', tok)).body);
  const before = await list(alice);
  const cases: [string, unknown, number, string][] = [
    ['no body', undefined, 400, 'invalid_request'],
    ['missing key', { name: 'x' }, 400, 'invalid_request'],
    ['key not base64', { name: 'x', public_key: 'not a key!' }, 400, 'invalid_public_key'],
    ['key too short', { name: 'x', public_key: Buffer.alloc(31, 1).toString('base64') }, 400, 'invalid_public_key'],
    ['key non-canonical', { name: 'x', public_key: k1.slice(0, 42) + (k1[42] === 'B' ? 'C' : 'B') + '=' }, 400, 'invalid_public_key'],
    ['all-zero key', { name: 'x', public_key: Buffer.alloc(32).toString('base64') }, 400, 'invalid_public_key'],
    ['name with slash', { name: '../etc', public_key: key() }, 400, 'invalid_request'],
    ['name too long', { name: 'a'.repeat(64), public_key: key() }, 400, 'invalid_request'],
    ['empty name', { name: '', public_key: key() }, 400, 'invalid_request'],
    ['unknown field', { name: 'x', public_key: key(), private_key: key() }, 400, 'invalid_request'],
    ['same key again', { name: 'other', public_key: k1 }, 409, 'device_key_exists'],
    ['same name again', { name: 'laptop', public_key: key() }, 409, 'device_name_exists'],
  ];
  for (const [what, body, status, code] of cases) {
    const r = await srv.api<Err>('POST', '/api/wg/devices', alice, body);
    t.equal(r.status, status, `${what}: ${status}`);
    t.equal(r.body.error?.code, code, `${what}: ${code} (${r.body.error?.message})`);
  }
  // Someone else's key cannot be registered by another user either (keys are unique).
  t.equal((await srv.api<Err>('POST', '/api/wg/devices', mallory, { name: 'laptop', public_key: k1 })).status, 409);
  t.equal((await srv.api('GET', '/api/wg/devices', null)).status, 401);
  t.equal((await srv.api('DELETE', `/api/wg/devices/${ok.body.id}`, mallory)).status, 404, "another user's device is 404");
  t.equal((await srv.api('DELETE', '/api/wg/devices/laptop', mallory)).status, 404);
  t.same(JSON.parse(await list(mallory)), { devices: [], count: 0 }, 'devices are per user');
  const sessionCases: [string, unknown, number, string][] = [
    ['unknown weaver', { weaver_id: 'nope', device: 'laptop' }, 404, 'not_found'],
    ['no device', { weaver_id: 'nope' }, 400, 'invalid_request'],
    ['extra field', { weaver_id: 'nope', device: 'laptop', address: 'fd00::1' }, 400, 'invalid_request'],
    ['weaver id too long', { weaver_id: 'x'.repeat(65), device: 'laptop' }, 400, 'invalid_request'],
  ];
  for (const [what, body, status, code] of sessionCases) {
    const r = await srv.api<Err>('POST', '/api/wg/sessions', alice, body);
    t.equal(r.status, status, `session ${what}: ${status}`);
    t.equal(r.body.error?.code, code, `session ${what}: ${code}`);
  }
  t.equal((await srv.api('DELETE', '/api/wg/sessions/nope', alice)).status, 404);
  t.equal(await list(alice), before, 'nothing changed');
});

t.test('the CLI: key file 0600, public half only, list, revoke, errors', async (t) => {
  const srv = await startServer({ t, env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  const tok = await srv.token('carol');
  const dir = tempDir();
  const loom = loomCli(srv, dir);
  t.equal((await loom(['login', '--token', tok])).code, 0);
  const reg = await loom(['wg', 'devices', 'register', '--name', 'work-laptop', '--json']);
  t.equal(reg.code, 0, reg.stderr);
  const keyFile = join(dir, 'wg-key');
  t.equal(statSync(keyFile).mode & 0o777, 0o600, 'key file is 0600');
  const priv = readFileSync(keyFile, 'utf8').trim();
  const d = JSON.parse(reg.stdout) as Device;
  t.equal(d.public_key, publicKeyFor(Buffer.from(priv, 'base64')).toString('base64'), 'the server has the public half');
  t.notOk(srv.logs.join('\n').includes(priv), 'the private key never reached the server');
  const db = new Database(join(srv.dataDir, 'loom.db'), { readonly: true });
  t.notOk(JSON.stringify(db.prepare('SELECT * FROM wg_devices').all()).includes(priv));
  db.close();
  const again = await loom(['wg', 'devices', 'register', '--name', 'other-name']);
  t.not(again.code, 0);
  t.match(again.stderr.trim(), /already registered/);
  t.equal(again.stderr.trim().split('\n').length, 1, 'one line');
  const ls = await loom(['wg', 'devices', 'list', '--json']);
  t.same((JSON.parse(ls.stdout) as Device[]).map((x) => x.name), ['work-laptop']);
  const table = await loom(['wg', 'devices', 'list']);
  t.match(table.stdout, /work-laptop.*\(this machine\)/);
  t.match((await loom(['wg', 'devices', 'register', '--name', 'bad/name'])).stderr, /invalid device name/);
  t.match((await loom(['wg', 'devices', 'revoke', 'nope'])).stderr, /device not found/);
  chmodSync(keyFile, 0o644);
  const loose = await loom(['wg', 'devices', 'register', '--name', 'x']);
  t.not(loose.code, 0);
  t.match(loose.stderr, /readable by others.*chmod 600/);
  chmodSync(keyFile, 0o600);
  t.equal((await loom(['wg', 'devices', 'revoke', 'work-laptop'])).code, 0);
  t.same(JSON.parse((await loom(['wg', 'devices', 'list', '--json'])).stdout), []);
  writeFileSync(keyFile, 'garbage\n', { mode: 0o600 });
  t.match((await loom(['wg', 'devices', 'register', '--name', 'y'])).stderr, /does not hold a WireGuard private key/);
});

t.test('the ULA /48 is generated once and kept', async (t) => {
  const dataDir = freshDataDir();
  const prefix = () => {
    const db = new Database(join(dataDir, 'loom.db'), { readonly: true });
    const p = (db.prepare('SELECT ula_prefix FROM wg_installation').all() as { ula_prefix: string }[]).map((r) => r.ula_prefix);
    db.close();
    return p;
  };
  const a = await startServer({ dataDir, keepData: true, env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  await a.stop();
  const first = prefix();
  t.equal(first.length, 1);
  t.match(first[0], /^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}::\/48$/);
  const b = await startServer({ dataDir, env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  t.same(prefix(), first, 'same prefix after a restart');
  await b.stop();
});
