/**
 * Brute-force brake (issue 9 item 8) through the real server: failed sign-ins on /device/login are
 * counted per account and per client address (separate loopback addresses stand for separate
 * clients); past the limit every try — even with the right password — is a 429 with Retry-After.
 * Unknown device codes on /auth/device/poll count per address the same way. Bounded counts only.
 */
import t from 'tap';
import { request } from 'node:http';
import { SERVER_BIN, run, startServer, type TestServer } from '../support/server.js';

const MAX = 3;
let srv: TestServer;

t.before(async () => {
  srv = await startServer({ env: { LOOM_SERVER_WEAVER_ENABLED: 'false', LOOM_LOGIN_MAX_FAILURES: String(MAX), LOOM_LOGIN_WINDOW_SECS: '3600' } });
  for (const [user, pw] of [['alice', 'alice-password'], ['bob', 'bob-password'], ['carol', 'carol-password']]) {
    const r = await run(process.execPath, [SERVER_BIN, 'admin', 'passwd', '--user', user!], { env: srv.env, input: `${pw}\n` });
    if (r.code !== 0) throw new Error(r.stderr);
  }
});
t.teardown(() => srv?.stop());

/** POSTs a form from a given local address (each loopback address is a different client). */
function post(path: string, form: Record<string, string> | string, from: string, type = 'application/x-www-form-urlencoded'): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  const body = typeof form === 'string' ? form : new URLSearchParams(form).toString();
  const u = new URL(srv.url + path);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path: u.pathname, method: 'POST', localAddress: from, headers: { 'content-type': type, 'content-length': Buffer.byteLength(body) } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}
const login = (username: string, password: string, from: string) => post('/device/login', { username, password }, from);

t.test('failed sign-ins are limited per account and per address, with a clear 429', async (t) => {
  const A = '127.0.0.2';
  const B = '127.0.0.3';
  for (let i = 1; i <= MAX; i++) t.equal((await login('alice', `wrong-${i}`, A)).status, 401, `wrong password ${i} of ${MAX}: 401`);
  const blocked = await login('alice', 'alice-password', A);
  t.equal(blocked.status, 429, 'the right password after the limit is still refused (a guess is never confirmed)');
  const retry = Number(blocked.headers['retry-after']);
  t.ok(Number.isInteger(retry) && retry > 0 && retry <= 3600, `Retry-After is a whole number of seconds within the window (${blocked.headers['retry-after']})`);
  t.match(blocked.body, /Too many failed sign-ins/);
  t.notOk(blocked.headers['set-cookie'], 'no session cookie');

  const otherAddrSameAccount = await login('alice', 'alice-password', B);
  t.equal(otherAddrSameAccount.status, 429, 'the account is blocked from every address');
  const otherAccountSameAddr = await login('bob', 'bob-password', A);
  t.equal(otherAccountSameAddr.status, 429, 'the address is blocked for every account');
  const clean = await login('bob', 'bob-password', B);
  t.equal(clean.status, 303, 'another account from another address signs in');
  t.match(String(clean.headers['set-cookie']), /loom_web=/);
});

t.test('a successful sign-in resets the account\'s count, not the address\'s', async (t) => {
  const C = '127.0.0.4';
  const D = '127.0.0.5';
  for (let i = 1; i < MAX; i++) t.equal((await login('carol', 'nope', C)).status, 401);
  t.equal((await login('carol', 'carol-password', D)).status, 303, 'carol signs in from elsewhere');
  t.equal((await login('carol', 'nope', D)).status, 401, 'her count started over: one more failure is only a 401');
  t.equal((await login('nobody', 'x', C)).status, 401, 'address C: its last allowed failure');
  t.equal((await login('carol', 'carol-password', C)).status, 429, 'address C stays blocked');
});

t.test('unknown device codes count against the address', async (t) => {
  const E = '127.0.0.6';
  for (let i = 1; i <= MAX; i++) {
    const r = await post('/auth/device/poll', JSON.stringify({ device_code: `loom_d_guess${i}` }), E, 'application/json');
    t.equal(r.status, 400, `guess ${i}: 400 invalid_device_code`);
  }
  const r = await post('/auth/device/poll', JSON.stringify({ device_code: 'loom_d_guess-more' }), E, 'application/json');
  t.equal(r.status, 429);
  t.ok(Number(r.headers['retry-after']) > 0, 'Retry-After header');
  t.equal((JSON.parse(r.body) as { error: { code: string } }).error.code, 'too_many_attempts');
});
