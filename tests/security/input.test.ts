/**
 * Small input fixes through the real server (issue 9 items 12 and 13): image names are checked
 * before the upload is read and errors never show the server's temp path; token and org names
 * refuse NUL and control bytes; logs are raw by default and plain on request; an empty body sent
 * with `content-type: application/json` is accepted where a route takes no body.
 */
import t from 'tap';
import { request } from 'node:http';
import { startServer, type TestServer } from '../support/server.js';
import { deleteWeavers, runningWeaver } from './team.js';
import { waitUntil } from '../support/attach.js';

type Err = { error: { code: string; message: string } };

let srv: TestServer;
let root: string;
let alice: string;

t.before(async () => {
  srv = await startServer();
  root = await srv.token('root', true);
  alice = await srv.token('alice');
});
t.teardown(async () => {
  if (srv) {
    await deleteWeavers(srv, [alice]);
    await srv.stop();
  }
});

/** POSTs an upload whose body never finishes (1 GB announced, 4 KB sent); resolves with the answer. */
function endlessUpload(path: string, token: string): Promise<{ status: number; body: string; bodyDone: boolean }> {
  return new Promise((resolve, reject) => {
    const u = new URL(srv.url + path);
    let sent = 0;
    const req = request({ host: u.hostname, port: u.port, path: u.pathname + u.search, method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/x-tar', 'content-length': String(1024 ** 3) } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, body, bodyDone: sent >= 1024 ** 3 });
        req.destroy();
      });
    });
    req.on('error', (e) => ((e as NodeJS.ErrnoException).code === 'ECONNRESET' || (e as NodeJS.ErrnoException).code === 'EPIPE' ? undefined : reject(e)));
    req.write(Buffer.alloc(4096));
    sent = 4096;
  });
}

t.test('image upload: the name is validated before the body is read', async (t) => {
  for (const name of ['../../etc', 'a/../../b', 'x/./y', '..']) {
    const r = await endlessUpload(`/api/images?name=${encodeURIComponent(name)}`, root);
    t.equal(r.status, 400, `${name}: answered 400 while the body was still being sent`);
    t.equal(r.bodyDone, false);
    t.equal((JSON.parse(r.body) as Err).error.code, 'invalid_image_name');
  }
  const list = await srv.api<{ images: { name: string }[] }>('GET', '/api/images', root);
  t.notOk(list.body.images.some((i) => i.name.includes('..')), 'nothing was stored');
});

t.test('image upload errors never show the server\'s temp path', async (t) => {
  const r = await srv.api<Err>('POST', '/api/images?name=junk:1', root, 'this is not a tar archive', { 'content-type': 'application/x-tar' });
  t.equal(r.status, 400);
  t.equal(r.body.error.code, 'bad_image');
  t.notOk(r.body.error.message.includes(srv.dataDir), `message has no server path: ${r.body.error.message}`);
  t.notMatch(r.body.error.message, /upload-|image\.tar|\/tmp\//);
  t.match(r.body.error.message, /uploaded archive/);
});

t.test('token and org names refuse NUL and control bytes', async (t) => {
  for (const name of ['a\u0000b', 'line\nbreak', 'bell\u0007', 'esc\u001b[31m', 'c1\u009b', '   ']) {
    const r = await srv.api<Err>('POST', '/api/tokens', alice, { name });
    t.equal(r.status, 400, `token name ${JSON.stringify(name)}`);
    t.equal(r.body.error.code, name.trim() === '' ? 'invalid_token_name' : 'invalid_token_name');
  }
  const list = await srv.api<{ tokens: { name: string }[] }>('GET', '/api/tokens', alice);
  t.equal(list.body.tokens.length, 1, 'no token was made');
  t.equal((await srv.api('POST', '/api/tokens', alice, { name: 'ci – deploy ✓' })).status, 201, 'unicode names are fine');
  const o = await srv.api<Err>('POST', '/api/orgs', alice, { name: 'Team\u0000X' });
  t.equal(o.status, 400);
  t.equal(o.body.error.code, 'invalid_org_name');
});

t.test('logs: raw terminal bytes by default, ?plain=1 strips escapes', async (t) => {
  const w = await runningWeaver(srv, alice, { command: ['/bin/sh', '-c', "printf '\\033[31mred\\033[0m \\033]0;title\\007done\\r\\n'; sleep 600"] });
  const raw = await waitUntil(async () => {
    const r = await srv.api<string>('GET', `/api/weaver/${w.id}/logs`, alice);
    return r.body.includes('done') ? r.body : null;
  }, 'log line');
  t.match(raw, /\u001b\[31mred\u001b\[0m \u001b\]0;title\u0007done/, 'raw view keeps the escapes');
  const plain = await srv.api<string>('GET', `/api/weaver/${w.id}/logs?plain=1`, alice);
  t.match(plain.body, /data: red done\n/, 'plain view: only the text');
  t.notMatch(plain.body, /\u001b|\u0007/);
  const bad = await srv.api<Err>('GET', `/api/weaver/${w.id}/logs?plain=yes`, alice);
  t.equal(bad.status, 400);
});

t.test('an empty body with content-type: application/json is no body where a route takes none', async (t) => {
  const json = { 'content-type': 'application/json' };
  const tok = await srv.api<{ id: string; token: string }>('POST', '/api/tokens', alice, { name: 'to-delete' });
  const del = await srv.api('DELETE', `/api/tokens/${tok.body.id}`, alice, '', json);
  t.equal(del.status, 204, 'DELETE with the header and no body');
  const org = await srv.api<{ id: string }>('POST', '/api/orgs', alice, { name: 'Empty bodies' });
  const bob = await srv.token('bob-empty');
  const bobId = (await srv.api<{ id: string }>('GET', '/api/me', bob)).body.id;
  t.equal((await srv.api('POST', `/api/orgs/${org.body.id}/members`, alice, { user_id: bobId })).status, 201);
  t.equal((await srv.api('DELETE', `/api/orgs/${org.body.id}/members/${bobId}`, alice, '', json)).status, 204, 'DELETE member');
  const start = await srv.api<{ device_code: string }>('POST', '/auth/device/start', null, '', json);
  t.equal(start.status, 200, 'device start with the header and no body');
  t.ok(start.body.device_code);
  const start2 = await srv.api('POST', '/auth/device/start', null);
  t.equal(start2.status, 200, 'and with no header at all');
  for (const p of ['/api/containers/00000000-0000-0000-0000-000000000000/kill', '/api/snapshots/00000000-0000-0000-0000-000000000000/pin']) {
    const r = await srv.api<Err>('POST', p, alice, '', json);
    t.equal(r.status, 404, `${p}: reaches the route (404), not a 400 about the body`);
  }
  const t2 = await srv.token('alice');
  t.equal((await srv.api('POST', '/auth/logout', t2, '', json)).status, 204, 'logout with the header and no body');
  t.equal((await srv.api('GET', '/api/me', t2)).status, 401, 'and the token is gone');
  const t3 = await srv.token('alice');
  t.equal((await srv.api('POST', '/auth/logout', t3)).status, 204, 'logout with no header and no body');
  // Routes that need a body still say so; a body on a body-less action is still refused.
  const need = await srv.api<Err>('POST', '/api/orgs', alice, '', json);
  t.equal(need.status, 400);
  t.equal(need.body.error.code, 'invalid_request');
  const extra = await srv.api<Err>('POST', '/auth/logout', alice, { x: 1 });
  t.equal(extra.status, 400, 'logout with fields');
  t.equal((await srv.api('GET', '/api/me', alice)).status, 200, 'and the refused logout left the token alone');
  const poisoned = await srv.api<Err>('POST', '/api/orgs', alice, '{"__proto__":{"x":1},"name":"p"}');
  t.equal(poisoned.status, 400, 'prototype poisoning is still refused');
});
