/**
 * loom-server killed (SIGKILL) in the middle of an app-consistent weaver snapshot (its layer is
 * copied and the weaver frozen; LOOM_BRANCHING_TEST_DELAY_MS holds it there): after restart the
 * weaver is thawed and running, the snapshot record and its layer are gone, no mount or layer is
 * left for it, and forking works again — the fork is adopted like any weaver on a further restart.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { freshDataDir, mountsUnder, startServer, type TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import type { Op } from '../branching/helpers.js';

type Weaver = { id: string; status: string; parent_weaver_id?: string };

const runcState = (dataDir: string, id: string): string | null => {
  const r = spawnSync('runc', ['--root', join(dataDir, 'local', 'runc'), 'state', id], { encoding: 'utf8' });
  return r.status === 0 ? (JSON.parse(r.stdout) as { status: string }).status : null;
};
const layerKeys = (dataDir: string): string[] =>
  Object.keys((JSON.parse(readFileSync(join(dataDir, 'local', 'layers', 'metadata.json'), 'utf8')) as { entries: Record<string, unknown> }).entries);

t.test('a weaver snapshot interrupted by kill -9 leaves no frozen weaver and no layer', async (t) => {
  const dataDir = freshDataDir();
  let srv: TestServer = await startServer({ dataDir, keepData: true, env: { LOOM_BRANCHING_TEST_DELAY_MS: '60000' } });
  let tok = await srv.token('crash');
  const ids: string[] = [];
  t.teardown(async () => {
    for (const id of ids) await srv.api('DELETE', `/api/weaver/${id}`, tok).catch(() => undefined);
    await srv.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  const w = await srv.api<Weaver>('POST', '/api/weaver', tok, {});
  ids.push(w.body.id);
  await waitUntil(async () => (await srv.api<Weaver>('GET', `/api/weaver/${w.body.id}`, tok)).body.status === 'running', 'weaver running', 120_000);
  const snap = await srv.api<Op>('POST', `/api/weaver/${w.body.id}/snapshot`, tok, { consistency_mode: 'app-consistent' });
  t.equal(snap.status, 202);
  const sid = snap.body.snapshot_id!;
  // the weaver is frozen first, then its layer is copied; the test delay holds the operation after the copy
  await waitUntil(async () => runcState(dataDir, w.body.id) === 'paused', 'weaver frozen during the snapshot');
  await waitUntil(async () => layerKeys(dataDir).includes(`snapshot/${sid}`), 'the layer copied while the weaver is frozen');
  t.equal(runcState(dataDir, w.body.id), 'paused', 'still frozen after the copy (held by the test delay)');
  await srv.stop('SIGKILL');
  t.equal(runcState(dataDir, w.body.id), 'paused', 'the crash left it frozen');

  srv = await startServer({ dataDir, keepData: true });
  tok = await srv.token('crash');
  t.equal(runcState(dataDir, w.body.id), 'running', 'thawed at start');
  t.equal((await srv.api<Weaver>('GET', `/api/weaver/${w.body.id}`, tok)).body.status, 'running', 'the API agrees');
  t.equal((await srv.api<Op>('GET', `/api/operations/${snap.body.operation_id}`, tok)).body.reason_code, 'INTERRUPTED');
  t.equal((await srv.api('GET', `/api/snapshots/${sid}`, tok)).status, 404, 'no snapshot record');
  t.notOk(layerKeys(dataDir).includes(`snapshot/${sid}`), 'no snapshot layer');
  t.same(mountsUnder(join(dataDir, 'local', 'layers')), [], 'no mount inside the layer store');

  const fork = await srv.api<Weaver>('POST', `/api/weaver/${w.body.id}/fork`, tok, {});
  t.equal(fork.status, 202, JSON.stringify(fork.body));
  ids.push(fork.body.id);
  await waitUntil(async () => (await srv.api<Weaver>('GET', `/api/weaver/${fork.body.id}`, tok)).body.status === 'running', 'fork running', 120_000);

  // a fork is adopted after a crash like any weaver
  await srv.stop('SIGKILL');
  srv = await startServer({ dataDir, keepData: true });
  tok = await srv.token('crash');
  t.ok(srv.logs.some((l) => l.includes('reconcile: adopted running weaver') && l.includes(fork.body.id)), 'the fork is adopted');
  const g = await srv.api<Weaver>('GET', `/api/weaver/${fork.body.id}`, tok);
  t.equal(g.body.status, 'running');
  t.equal(g.body.parent_weaver_id, w.body.id);
});
