/**
 * The console's session in a real browser against the real server: org isolation (a second user
 * sees nothing of the first's), CSRF (state changes without the session's token are refused, also
 * from another origin's page), bearer requests unchanged, sign-out ends the session.
 */
import t from 'tap';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startServer } from '../support/server.js';
import { haveChromium, openBrowser, shot, signIn, until, userWithPassword } from './browser.js';

type Weaver = { id: string; status: string };
type Res = { status: number; body: string };

t.test('a second user sees none of the first user’s weavers', async (t) => {
  if (!haveChromium(t)) return;
  const srv = await startServer({ t });
  const aTok = await userWithPassword(srv, 'alice', 'alice-password-1');
  await userWithPassword(srv, 'bob', 'bob-password-1');
  t.teardown(async () => {
    for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', aTok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, aTok);
  });
  const w = await srv.api<Weaver>('POST', '/api/weaver', aTok, { lifetime_hours: 1 });
  t.equal(w.status, 202);

  const alice = await openBrowser(t);
  await signIn(alice.page, srv.url, 'alice', 'alice-password-1');
  await alice.page.locator(`#weavers tr[data-id="${w.body.id}"]`).waitFor();

  const bob = await openBrowser(t);
  await signIn(bob.page, srv.url, 'bob', 'bob-password-1');
  await bob.page.locator('#no-weavers').waitFor();
  // wait for a second poll of the list, so "none" is not just the first paint
  await until(bob.page, `window.performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/api/weavers')).length >= 2`, 'a second list poll');
  t.equal(await bob.page.locator('#weavers tbody tr').count(), 0, 'bob’s list is empty');
  t.equal(await bob.page.locator('#no-weavers').isVisible(), true);
  await shot(bob.page, '10-second-user');
  // Straight at the API with bob's cookie: alice's weaver is a 404, like one that does not exist.
  const got = (await bob.page.evaluate(`fetch('/api/weaver/${w.body.id}').then(async (r) => ({ status: r.status, body: await r.text() }))`)) as Res;
  t.equal(got.status, 404);
  t.match(got.body, /not found/);
  // and her terminal cannot be opened: no ticket for bob
  await bob.page.goto(`${srv.url}/#/weaver/${w.body.id}`);
  await bob.page.locator('#term-status', { hasText: 'not found' }).waitFor();
  t.pass('the terminal page says not found');
});

t.test('state-changing requests need the CSRF token; bearer requests are unchanged; sign-out ends the session', async (t) => {
  if (!haveChromium(t)) return;
  const srv = await startServer({ t });
  const tok = await userWithPassword(srv, 'carol', 'carol-password-1');
  t.teardown(async () => {
    for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
  });
  const count = async () => (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers.length;
  const { page } = await openBrowser(t);
  await signIn(page, srv.url, 'carol', 'carol-password-1');
  await page.locator('#no-weavers').waitFor();

  const post = (headers: string) =>
    page.evaluate(`fetch('/api/weaver', { method: 'POST', headers: ${headers}, body: '{"lifetime_hours":1}' }).then(async (r) => ({ status: r.status, body: await r.text() }))`) as Promise<Res>;
  const none = await post(`{ 'content-type': 'application/json' }`);
  t.equal(none.status, 403, 'no CSRF header: 403');
  t.match(none.body, /csrf_token_invalid/);
  const wrong = await post(`{ 'content-type': 'application/json', 'x-loom-csrf': 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }`);
  t.equal(wrong.status, 403, 'a wrong CSRF token: 403');
  t.equal(await count(), 0, 'nothing was created');

  // The right token, read the way the page reads it, works (so the refusals above were the token's doing).
  const ok = (await page.evaluate(
    `fetch('/console/session').then((r) => r.json()).then((s) => fetch('/api/weaver', { method: 'POST', headers: { 'content-type': 'application/json', 'x-loom-csrf': s.csrf_token }, body: '{"lifetime_hours":1}' })).then(async (r) => ({ status: r.status, body: await r.text() }))`,
  )) as Res;
  t.equal(ok.status, 202, ok.body);
  const id = (JSON.parse(ok.body) as Weaver).id;
  t.equal(await count(), 1);

  // DELETE without the token is refused too, and so is signing out.
  const del = (await page.evaluate(`fetch('/api/weaver/${id}', { method: 'DELETE' }).then((r) => ({ status: r.status, body: '' }))`)) as Res;
  t.equal(del.status, 403, 'DELETE without the token: 403');
  const out = (await page.evaluate(`fetch('/console/session', { method: 'DELETE' }).then((r) => ({ status: r.status, body: '' }))`)) as Res;
  t.equal(out.status, 403, 'sign-out without the token: 403');

  // Another origin's page (a different port of the same host is the same *site*, so the
  // SameSite=Strict cookie does go along): a form POST and a credentialed fetch both fail.
  const evil = createServer((req, res) => {
    res.setHeader('content-type', 'text/html');
    res.end(`<!doctype html><form method="post" action="${srv.url}/api/weaver" enctype="text/plain"><input name='{"lifetime_hours":1,"x":"' value='"}'></form>
<script>fetch(${JSON.stringify(srv.url)} + '/api/weaver/${id}', { method: 'DELETE', credentials: 'include' }).catch(() => 0).finally(() => { document.title = 'fetched'; document.forms[0].submit(); });</script>`);
  });
  await new Promise<void>((r) => evil.listen(0, '127.0.0.1', r));
  t.teardown(() => evil.close());
  const port = (evil.address() as AddressInfo).port;
  const attack = await openBrowser(t);
  // the victim is signed in in this browser too
  await signIn(attack.page, srv.url, 'carol', 'carol-password-1');
  // same site, other origin (another port of 127.0.0.1): the cookie goes along; the missing CSRF
  // token (and the foreign Origin) refuse it. Another site (localhost): the cookie stays home.
  for (const [host, expect] of [
    ['127.0.0.1', /"code":"(csrf_token_invalid|cross_origin)"/],
    ['localhost', /"code":"missing_token"/],
  ] as const) {
    const landed = attack.page.waitForURL(`${srv.url}/api/weaver`);
    await attack.page.goto(`http://${host}:${port}/`);
    await landed;
    const body = await attack.page.locator('body').innerText();
    t.match(body, expect, `a forged form post from ${host}:${port} was refused: ${body}`);
    t.equal(await count(), 1, 'no weaver created by the forged post');
    t.equal((await srv.api<Weaver>('GET', `/api/weaver/${id}`, tok)).status, 200, 'the cross-origin DELETE did nothing');
  }

  // A bearer request needs no CSRF header: the CLI and scripts are unchanged.
  const bearer = await srv.api<Weaver>('DELETE', `/api/weaver/${id}`, tok);
  t.equal(bearer.status, 204);

  // Sign out through the page: the cookie no longer works.
  await page.click('button:text("Sign out")');
  await page.locator('#username').waitFor();
  const after = (await page.evaluate(`fetch('/api/weavers').then((r) => ({ status: r.status, body: '' }))`)) as Res;
  t.equal(after.status, 401, 'signed out: the API answers 401');
});
