/**
 * Debian's headless Chromium driven by playwright-core (no browser download): one fresh profile
 * per signed-in user, closed in teardown. Screenshots go to tests/web/screenshots/ (git-ignored).
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import type { Test } from 'tap';
import { ROOT, SERVER_BIN, run, type TestServer } from '../support/server.js';

export const CHROMIUM = '/usr/bin/chromium';
export const SHOTS = join(ROOT, 'tests/web/screenshots');

type T = Test;

/** Whether the browser is here; in CI (CI=true) its absence fails the test instead of skipping. */
export function haveChromium(t: T): boolean {
  if (existsSync(CHROMIUM)) return true;
  const why = `${CHROMIUM} missing: apt-get install chromium (listed in scripts/apt-packages.txt)`;
  if (process.env['CI'] === 'true') t.fail(`prerequisite missing in CI: ${why}`);
  else t.pass('browser tests', { skip: why });
  return false;
}

export async function openBrowser(t: T, viewport = { width: 1100, height: 800 }, deviceScaleFactor = 1): Promise<{ ctx: BrowserContext; page: Page }> {
  const profile = mkdtempSync(join(tmpdir(), 'loom-web-profile-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    deviceScaleFactor,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  t.teardown(async () => {
    await ctx.close().catch(() => undefined);
    rmSync(profile, { recursive: true, force: true });
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  // Every uncaught page error and console error fails the test that reads these, except the CSP
  // refusing inline style: xterm.js writes <style> elements (mirrored, see web/src/style-shim.ts);
  // inlineStyleOutsideTerminal() checks that nothing else on the page relies on inline style.
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/(Refused to apply|Applying) inline style/.test(m.text()) && !/status of 4\d\d/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  (page as Page & { problems?: string[] }).problems = problems;
  return { ctx, page };
}

export function problemsOf(page: Page): string[] {
  return (page as Page & { problems?: string[] }).problems ?? [];
}

export async function shot(page: Page, name: string): Promise<string> {
  mkdirSync(SHOTS, { recursive: true });
  const file = join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** A user with a password for the sign-in form (and an API token for setting things up). */
export async function userWithPassword(srv: TestServer, name: string, password: string): Promise<string> {
  const token = await srv.token(name);
  const r = await run(process.execPath, [SERVER_BIN, 'admin', 'passwd', '--user', name], { env: srv.env, input: `${password}\n` });
  if (r.code !== 0) throw new Error(r.stderr);
  return token;
}

/** Signs in through the form with the keyboard only. */
export async function signIn(page: Page, url: string, user: string, password: string): Promise<void> {
  await page.goto(url);
  await page.locator('#username').waitFor();
  await page.keyboard.type(user); // the username field has focus on load
  await page.keyboard.press('Tab');
  await page.keyboard.type(password);
  await page.keyboard.press('Enter');
  await page.locator('#whoami', { hasText: user }).waitFor();
}

/** The terminal's visible text, one string per row (xterm's DOM renderer). */
export async function screenText(page: Page): Promise<string[]> {
  return page.locator('#terminal .xterm-rows > div').allInnerTexts().then((rows) => rows.map((r) => r.replace(/\u00a0/g, ' ').trimEnd()));
}

/** <style> elements and style attributes anywhere but inside the xterm.js terminal. */
export async function inlineStyleOutsideTerminal(page: Page): Promise<string[]> {
  return page.evaluate(`[...document.querySelectorAll('style, [style]')].filter((e) => !e.closest('.xterm')).map((e) => e.outerHTML.slice(0, 120))`);
}

/**
 * Waits until a page expression is truthy. Evaluated through the DevTools protocol rather than
 * waitForFunction(string), which would need 'unsafe-eval' and so is refused by the console's CSP.
 */
export async function until(page: Page, expr: string, what: string, timeoutMs = 30_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await page.evaluate(expr)) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
