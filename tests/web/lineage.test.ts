/**
 * The lineage picture in a real browser from real weaver snapshots and forks: three generations
 * (weaver → snapshot → weaver from it → snapshot → …) drawn with exactly the right edges, marks
 * for in-use and pinned, click-through to a snapshot, and a new weaver started from there.
 */
import t from 'tap';
import { startServer, type TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { waitOp, type Op } from '../branching/helpers.js';
import { haveChromium, openBrowser, problemsOf, shot, signIn, until, userWithPassword } from './browser.js';

type Weaver = { id: string; status: string; reason?: string; snapshot_id?: string };
type Snapshot = { snapshot_id: string; parent_snapshot_id: string | null; pinned: boolean };

async function running(srv: TestServer, tok: string, id: string): Promise<void> {
  await waitUntil(async () => {
    const g = await srv.api<Weaver>('GET', `/api/weaver/${id}`, tok);
    if (g.body.status === 'failed') throw new Error(`weaver failed: ${g.body.reason}`);
    return g.body.status === 'running';
  }, `weaver ${id} running`, 120_000);
}

async function snapshot(srv: TestServer, tok: string, weaver: string): Promise<string> {
  const r = await srv.api<Op>('POST', `/api/weaver/${weaver}/snapshot`, tok, {});
  if (r.status !== 202) throw new Error(`snapshot: ${r.status} ${JSON.stringify(r.body)}`);
  const op = await waitOp(srv, tok, r.body.operation_id);
  if (op.status !== 'succeeded' || !op.snapshot_id) throw new Error(`snapshot op: ${JSON.stringify(op)}`);
  return op.snapshot_id;
}

async function fromSnapshot(srv: TestServer, tok: string, snap: string): Promise<string> {
  const r = await srv.api<Weaver>('POST', '/api/weaver', tok, { from_snapshot: snap, lifetime_hours: 1 });
  if (r.status !== 202) throw new Error(`from_snapshot: ${r.status} ${JSON.stringify(r.body)}`);
  await running(srv, tok, r.body.id);
  return r.body.id;
}

t.test('a lineage of three generations renders with the right edges; fork from a snapshot', async (t) => {
  if (!haveChromium(t)) return;
  const srv = await startServer({ t });
  const tok = await userWithPassword(srv, 'lin', 'lin-password-1');
  t.teardown(async () => {
    for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
  });

  const w1 = (await srv.api<Weaver>('POST', '/api/weaver', tok, { lifetime_hours: 1 })).body.id;
  await running(srv, tok, w1);
  const s1 = await snapshot(srv, tok, w1);
  const w2 = await fromSnapshot(srv, tok, s1);
  const s2 = await snapshot(srv, tok, w2);
  const w3 = await fromSnapshot(srv, tok, s2);
  const s3 = await snapshot(srv, tok, w3);
  // the server's own account of the chain, which the picture must match: each weaver names the
  // snapshot it was made from, each snapshot the weaver it was taken of
  const madeFrom = async (w: string) => (await srv.api<Weaver>('GET', `/api/weaver/${w}`, tok)).body.snapshot_id;
  const takenOf = async (s: string) => (await srv.api<Snapshot & { container_id: string }>('GET', `/api/snapshots/${s}`, tok)).body.container_id;
  t.same([await takenOf(s1), await madeFrom(w2), await takenOf(s2), await madeFrom(w3), await takenOf(s3)], [w1, s1, w2, s2, w3]);

  const { page } = await openBrowser(t);
  await signIn(page, srv.url, 'lin', 'lin-password-1');
  await page.click('nav a:text("Lineage")');
  await page.locator(`#lineage [data-key="s:${s3}"]`).waitFor();
  const edges = async () =>
    ((await page.evaluate(`[...document.querySelectorAll('#lineage path.edge')].map((p) => p.getAttribute('data-from') + ' -> ' + p.getAttribute('data-to'))`)) as string[]).sort();
  t.same(await edges(), [`${w1} -> ${s1}`, `${s1} -> ${w2}`, `${w2} -> ${s2}`, `${s2} -> ${w3}`, `${w3} -> ${s3}`].sort(), 'exactly the taken-of and made-from edges of three generations');
  const label = (key: string) => page.locator(`#lineage [data-key="${key}"]`).getAttribute('aria-label');
  t.match(await label(`s:${s1}`), /in use/, 's1 is in use (w2 runs on it)');
  t.match(await label(`s:${s1}`), new RegExp(`of weaver ${w1.slice(0, 8)}`), 's1 says which weaver it was taken of');
  t.notMatch(await label(`s:${s3}`), /in use/, 'nothing runs on s3 yet');
  t.match(await label(`w:${w2}`), /running/);
  // generations are drawn deeper and deeper (x of each snapshot's dot grows)
  const xs = (await page.evaluate(`[${[s1, s2, s3].map((s) => `Number(document.querySelector('#lineage [data-key="s:${s}"] rect').getAttribute('x'))`).join(',')}]`)) as number[];
  t.ok(xs[0]! < xs[1]! && xs[1]! < xs[2]!, `each generation indented under its parent (${xs.join(', ')})`);
  await shot(page, '20-lineage');

  // click through to s3 with the keyboard, pin it, start a weaver from it
  await page.locator(`#lineage [data-key="s:${s3}"]`).focus();
  await page.keyboard.press('Enter');
  await page.locator('#node-detail h2', { hasText: s3 }).waitFor();
  t.match(await page.locator('#node-detail').innerText(), new RegExp(`weaver ${w3}`), 'the detail names the weaver it was taken of');
  await page.click('#node-detail button:text("Pin")');
  await until(page, `(document.querySelector('#lineage [data-key="s:${s3}"]')?.getAttribute('aria-label') ?? '').includes('pinned')`, 'the pinned mark');
  t.equal((await srv.api<Snapshot>('GET', `/api/snapshots/${s3}`, tok)).body.pinned, true, 'pinned on the server');
  await shot(page, '21-lineage-detail');
  await page.click('#node-detail button:text("New weaver from here")');
  await page.waitForURL(/#\/weaver\//);
  const w4 = decodeURIComponent(page.url().split('#/weaver/')[1]!);
  await page.locator('#terminal[data-connected="true"]').waitFor({ timeout: 120_000 });
  t.equal((await srv.api<Weaver>('GET', `/api/weaver/${w4}`, tok)).body.snapshot_id, s3, 'the new weaver was made from s3');
  await page.click('nav a:text("Lineage")');
  await page.locator(`#lineage path.edge[data-from="${s3}"][data-to="${w4}"]`).waitFor();
  t.match(await label(`s:${s3}`), /in use/, 's3 is in use now');
  await shot(page, '22-lineage-forked');
  t.same(problemsOf(page), [], 'no page errors');
});
