/**
 * An image stays while anything stacks on it (issue 17 item 4), through the real server and
 * runc: a weaver snapshot on the busybox image keeps `image rm` refused after the weaver is gone;
 * once the snapshot goes the name can be removed, the unpacked tree stays while another name
 * (loom/default, same digest) keeps it, and goes with the last name.
 */
import t from 'tap';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, type TestServer } from '../support/server.js';
import { createRunning } from '../support/weavers.js';
import { waitUntil } from '../support/attach.js';

type Weaver = { id: string; status: string; reason?: string };
type Op = { operation_id: string; status: string; snapshot_id?: string };
type ImageView = { name: string; digest: string; in_use: number; users?: string[] };

const running = (srv: TestServer, tok: string, body: Record<string, unknown>) => createRunning<Weaver>(srv, tok, body);

t.test('a snapshot keeps its image; names and unpacked trees go in order', async (t) => {
  const srv = await startServer({ t });
  const admin = await srv.token('img-admin', true);
  const images = async () => (await srv.api<{ images: ImageView[] }>('GET', '/api/images', admin)).body.images;
  const w = await running(srv, admin, { image: 'loom/minimal' });
  const snap = await srv.api<Op>('POST', `/api/weaver/${w.id}/snapshot`, admin, {});
  t.equal(snap.status, 202, JSON.stringify(snap.body));
  const op = await waitUntil(async () => {
    const o = (await srv.api<Op>('GET', `/api/operations/${snap.body.operation_id}`, admin)).body;
    return ['succeeded', 'failed', 'cancelled', 'timed_out'].includes(o.status) ? o : null;
  }, 'snapshot done', 60_000);
  t.equal(op.status, 'succeeded');
  const sid = op.snapshot_id!;
  t.equal((await srv.api('DELETE', `/api/weaver/${w.id}`, admin)).status, 204);

  const minimal = (await images()).find((i) => i.name === 'loom/minimal:latest')!;
  t.ok(minimal.users?.some((u) => u === `snapshot ${sid}`), `the snapshot is a user: ${JSON.stringify(minimal.users)}`);
  const refused = await srv.api<{ error: { code: string; message: string } }>('DELETE', '/api/images?name=loom/minimal', admin);
  t.equal(refused.status, 409);
  t.equal(refused.body.error.code, 'image_in_use');
  t.match(refused.body.error.message, `snapshot ${sid}`);
  t.ok((await images()).some((i) => i.name === 'loom/minimal:latest'), 'nothing removed');

  t.equal((await srv.api('DELETE', `/api/snapshots/${sid}`, admin)).status < 300, true, 'snapshot deleted');
  await waitUntil(async () => ((await images()).find((i) => i.name === 'loom/minimal:latest')?.in_use === 0 ? true : null), 'unused', 60_000);
  const hex = minimal.digest.slice(7);
  const trees = () => readdirSync(join(srv.dataDir, 'local/images/rootfs')).filter((d) => d.startsWith(hex));
  t.ok(trees().length > 0, 'unpacked');
  t.equal((await srv.api('DELETE', '/api/images?name=loom/minimal', admin)).status, 204);
  t.ok(trees().length > 0, 'loom/default has the same digest: the tree stays');
  t.equal((await srv.api('DELETE', '/api/images?name=loom/default', admin)).status, 204);
  t.same(trees(), [], 'the last name took the tree with it');
  t.equal((await srv.api('DELETE', '/api/images?name=loom/default', admin)).status, 404);
  const bad = await srv.api<{ error: { code: string } }>('DELETE', '/api/images?name=../../etc', admin);
  t.equal(bad.status, 400);
  t.equal(bad.body.error.code, 'invalid_image_name');
});
