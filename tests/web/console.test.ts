/**
 * The web console in Debian's headless Chromium against the real loom-server and real weavers
 * (local backend, runc under conmon, the default busybox image): sign in, create a weaver and see
 * it run, work in its terminal (42, stty size after a resize, paste, scrollback after a reload,
 * exit), delete it and see it go; API errors shown as worded; narrow/200 % zoom layout.
 */
import t from 'tap';
import { startServer } from '../support/server.js';
import { haveChromium, inlineStyleOutsideTerminal, openBrowser, problemsOf, screenText, shot, signIn, until, userWithPassword } from './browser.js';

type Weaver = { id: string; status: string; org_id: string };
type Err = { error: { code: string; message: string } };

t.test('a user signs in, runs a weaver and works in it from the browser', async (t) => {
  if (!haveChromium(t)) return;
  const srv = await startServer({ t });
  const tok = await userWithPassword(srv, 'ada', 'ada-password-1');
  t.teardown(async () => {
    for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
  });
  const { ctx, page } = await openBrowser(t);
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: srv.url });

  // --- the page and its headers: a strict CSP of our own origin only
  const res = await page.goto(srv.url);
  const csp = res!.headers()['content-security-policy'] ?? '';
  t.match(csp, /default-src 'self'/);
  t.match(csp, /script-src 'self'(;|$)/, 'no inline or remote script');
  t.match(csp, /style-src 'self'(;|$)/, 'no inline style');
  t.match(csp, /frame-ancestors 'none'/);
  t.notMatch(csp, /https?:|unsafe-inline|unsafe-eval|\*/, 'no other origin, no unsafe-*');
  await page.locator('#username').waitFor();
  await shot(page, '01-sign-in');

  // --- a wrong password: the API's words on the page, and no cookie
  await page.fill('#username', 'ada');
  await page.fill('#password', 'not-it');
  await page.press('#password', 'Enter');
  await page.locator('#signin-error', { hasText: 'wrong username or password' }).waitFor();
  t.equal((await ctx.cookies()).filter((c) => c.name === 'loom_console').length, 0, 'no session cookie after a failed sign-in');

  // --- sign in with the keyboard only; the cookie is HttpOnly and SameSite=Strict
  await signIn(page, srv.url, 'ada', 'ada-password-1');
  const cookie = (await ctx.cookies()).find((c) => c.name === 'loom_console');
  t.ok(cookie, 'session cookie set');
  t.equal(cookie?.httpOnly, true, 'HttpOnly');
  t.equal(cookie?.sameSite, 'Strict', 'SameSite=Strict');
  t.equal(await page.evaluate(`document.cookie.includes('loom_console')`), false, 'scripts cannot read the session');
  await page.locator('#no-weavers').waitFor();

  // --- an API error is shown as the API words it
  const tooLong = await srv.api<Err>('POST', '/api/weaver', tok, { lifetime_hours: 1000 });
  t.equal(tooLong.status, 400);
  await page.fill('#f-lifetime', '1000');
  await page.click('#create button[type=submit]');
  await page.locator('#create-error').filter({ hasText: tooLong.body.error.message }).waitFor();
  t.equal(await page.locator('#create-error').innerText(), tooLong.body.error.message, 'the API message, verbatim');
  t.equal((await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers.length, 0, 'a refused create made nothing');
  await shot(page, '02-create-error');

  // --- create: the row appears and turns running without a reload
  await page.fill('#f-lifetime', '1');
  await page.fill('#f-env', 'GREETING=hello-web');
  await page.click('#create button[type=submit]');
  const row = page.locator('#weavers tbody tr').first();
  await row.waitFor();
  const id = (await row.getAttribute('data-id'))!;
  t.match(id, /^[0-9a-f-]{36}$/);
  const navigations: string[] = [];
  page.on('framenavigated', (f) => f === page.mainFrame() && navigations.push(f.url()));
  await page.locator(`#weavers tr[data-id="${id}"][data-status="running"]`).waitFor({ timeout: 120_000 });
  t.same(navigations.filter((u) => !u.includes('#')), [], 'the list updated without reloading the page');
  const cells = await page.locator(`#weavers tr[data-id="${id}"] > *`).allInnerTexts();
  t.match(cells[1], /loom\/default:latest/, 'image shown');
  t.match(cells[2], /running/, 'status shown');
  t.match(cells[3], /^\d+s$|^\d+m \d+s$/, 'age shown');
  t.match(cells[4], /^(59m \d+s|1h 0m)$/, 'time left of a one-hour weaver');
  // time left counts down live: wait for the cell to change
  const left1 = cells[4];
  await until(page, `document.querySelector('#weavers tr[data-id="${id}"] td.left')?.textContent !== ${JSON.stringify(left1)}`, 'time left to change');
  t.pass('time left ticks without a reload');
  await shot(page, '03-weavers');

  // --- the terminal: 42
  await page.click(`#weavers tr[data-id="${id}"] a:text("Terminal")`);
  await page.locator('#terminal[data-connected="true"]').waitFor();
  const waitScreen = async (re: RegExp, what: string) => {
    await until(
      page,
      `new RegExp(${JSON.stringify(re.source)}, ${JSON.stringify(re.flags)}).test([...document.querySelectorAll('#terminal .xterm-rows > div')].map((r) => (r.textContent ?? '').replace(/\\u00a0/g, ' ').trimEnd()).join('\\n'))`,
      what,
    ).catch(async (e: Error) => {
      throw new Error(`${what}: ${e.message}\nscreen:\n${(await screenText(page)).join('\n')}`);
    });
  };
  await waitScreen(/\$ ?$/m, 'a prompt');
  await page.keyboard.type('echo $((6*7))');
  await page.keyboard.press('Enter');
  await waitScreen(/^42$/m, 'the answer');
  t.ok((await screenText(page)).includes('42'), 'read 42 in the browser terminal');
  await page.keyboard.type('echo $GREETING');
  await page.keyboard.press('Enter');
  await waitScreen(/^hello-web$/m, 'the env var given at create');
  await shot(page, '04-terminal');

  // --- resize follows the window; stty size inside agrees with what the page shows
  const before = { cols: Number(await page.locator('#terminal').getAttribute('data-cols')), rows: Number(await page.locator('#terminal').getAttribute('data-rows')) };
  await page.setViewportSize({ width: 640, height: 560 });
  await until(page, `Number(document.querySelector('#terminal')?.getAttribute('data-cols')) !== ${before.cols}`, 'the terminal to follow the window');
  const after = { cols: Number(await page.locator('#terminal').getAttribute('data-cols')), rows: Number(await page.locator('#terminal').getAttribute('data-rows')) };
  t.ok(after.cols < before.cols, `narrower window, fewer columns (${before.cols} → ${after.cols})`);
  await page.keyboard.type('clear; stty size');
  await page.keyboard.press('Enter');
  await waitScreen(new RegExp(`^${after.rows} ${after.cols}$`, 'm'), `stty size ${after.rows} ${after.cols}`);
  t.pass(`stty size says ${after.rows} ${after.cols}`);
  await shot(page, '05-terminal-narrow');

  // --- paste through the page's clipboard button
  await page.evaluate(`navigator.clipboard.writeText('echo pasted-$((2+3))')`);
  await page.click('button:text("Paste")');
  await page.keyboard.press('Enter');
  await waitScreen(/^pasted-5$/m, 'the pasted line ran');
  // copy: select everything and use the copy button
  await page.locator('#terminal .xterm-screen').click();
  await page.evaluate(`navigator.clipboard.writeText('')`);
  await page.locator('#terminal .xterm-screen').dblclick({ position: { x: 20, y: 8 } });
  await page.click('button:text("Copy selection")');
  t.not(await page.evaluate(`navigator.clipboard.readText()`), '', 'a selection is copied to the clipboard');

  // --- a reload replays the scrollback (42 is there again before anything is typed)
  await page.reload();
  await page.locator('#terminal[data-connected="true"]').waitFor();
  await waitScreen(/^pasted-5$/m, 'scrollback after reconnect');
  t.pass('scrollback replayed on reconnect');

  // --- the page says when the weaver exits
  await page.locator('#terminal .xterm-screen').click();
  await page.keyboard.type('exit 3');
  await page.keyboard.press('Enter');
  await page.locator('#term-status', { hasText: 'exited with code 3' }).waitFor({ timeout: 60_000 });
  t.equal(await page.locator('#terminal').getAttribute('data-exited'), '3');
  await shot(page, '06-terminal-exited');

  // --- back to the list; delete it and see it go
  await page.setViewportSize({ width: 1100, height: 800 });
  await page.click('a:text("Back to weavers")');
  const gone = page.locator(`#weavers tr[data-id="${id}"]`);
  await gone.waitFor();
  await page.locator(`#weavers tr[data-id="${id}"] button:text("Delete")`).click();
  await gone.waitFor({ state: 'detached', timeout: 60_000 });
  const after404 = await srv.api<Err>('GET', `/api/weaver/${id}`, tok);
  t.equal(after404.status, 404, 'deleted on the server too');
  await page.locator('#no-weavers').waitFor();
  t.same(problemsOf(page), [], 'no page errors');
  t.same(await inlineStyleOutsideTerminal(page), [], 'no inline style outside the terminal (the CSP refuses it)');
});

t.test('narrow screens and 200 % zoom: no sideways scrolling, everything reachable by keyboard', async (t) => {
  if (!haveChromium(t)) return;
  const srv = await startServer({ t });
  const tok = await userWithPassword(srv, 'zoe', 'zoe-password-1');
  t.teardown(async () => {
    for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
  });
  const created = await srv.api<Weaver>('POST', '/api/weaver', tok, { lifetime_hours: 2 });
  t.equal(created.status, 202);
  // 200 % zoom of a 1280x800 window is a 640x400 CSS viewport at twice the pixel density.
  const { ctx, page } = await openBrowser(t, { width: 640, height: 400 }, 2);
  void ctx;
  await signIn(page, srv.url, 'zoe', 'zoe-password-1');
  await page.locator(`#weavers tr[data-id="${created.body.id}"][data-status="running"]`).waitFor({ timeout: 120_000 });
  const overflow = await page.evaluate(`document.documentElement.scrollWidth - document.documentElement.clientWidth`);
  t.equal(overflow, 0, 'the weavers page needs no sideways scrolling at 640 CSS px');
  await shot(page, '07-weavers-200pct');
  // Keyboard: Tab reaches the row's Delete button; Enter presses it.
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(`document.activeElement?.textContent === 'Delete'`);
  }
  t.ok(reached, 'Delete is reachable with Tab');
  await page.keyboard.press('Enter');
  await page.locator(`#weavers tr[data-id="${created.body.id}"]`).waitFor({ state: 'detached', timeout: 60_000 });
  t.pass('deleted with the keyboard');
});
