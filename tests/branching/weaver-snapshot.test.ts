/**
 * Weavers of the local backend branch like containers: snapshot a running weaver (its root
 * filesystem and /workspace), clone the snapshot into a container and fork it, through the real
 * server with real runc containers.
 */
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer } from '../support/server.js';
import { AttachClient, waitUntil } from '../support/attach.js';
import { cleanupContainers, mutate, rootfsOf } from './helpers.js';

t.test('snapshot, clone and fork a running local weaver', async (t) => {
  const srv = await startServer({ t });
  const tok = await srv.token('brancher');
  const other = await srv.token('outsider');
  t.teardown(async () => {
    await cleanupContainers(srv, [tok]);
    for (const w of (await srv.api<{ weavers: { id: string }[] }>('GET', '/api/weavers', tok).catch(() => null))?.body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok).catch(() => undefined);
  });

  const created = await srv.api<{ id: string }>('POST', '/api/weaver', tok, {});
  const id = created.body.id;
  await waitUntil(async () => (await srv.api<{ status: string }>('GET', `/api/weaver/${id}`, tok)).body.status === 'running', 'weaver running');
  const a = await AttachClient.connect(srv.url, id, { token: tok });
  await a.waitFor(/\$ /);
  a.send('echo state-one > /workspace/note.txt; echo root-file > /tmp/in-root.txt; echo written-$((1+1))\n');
  await a.waitFor(/written-2/);

  t.equal((await srv.api('POST', `/api/containers/${id}/snapshot`, other, { consistency_mode: 'crash-consistent' })).status, 404, "another org's weaver is 404");

  const snap = await mutate(srv, tok, 'POST', `/api/containers/${id}/snapshot`, { consistency_mode: 'app-consistent' });
  t.equal(snap.status, 'succeeded', JSON.stringify(snap));
  t.ok(snap.snapshot_id);
  t.ok(snap.capability_downgrades.some((d) => d.startsWith('memory_state')), 'memory state reported as a downgrade');

  // Changes after the snapshot stay out of it.
  a.send('echo state-two > /workspace/note.txt; echo after-$((2+2))\n');
  await a.waitFor(/after-4/);
  await a.close();
  t.equal((await srv.api<{ status: string }>('GET', `/api/weaver/${id}`, tok)).body.status, 'running', 'the weaver runs on after an app-consistent snapshot');

  const clone = await mutate(srv, tok, 'POST', `/api/snapshots/${snap.snapshot_id}/clone`, { resume_policy: 'manual', name: 'from-weaver' });
  t.equal(clone.status, 'succeeded', JSON.stringify(clone));
  const root = rootfsOf(srv.dataDir, clone.result_container_id!);
  t.equal(readFileSync(join(root, 'workspace', 'note.txt'), 'utf8'), 'state-one\n', '/workspace as it was at the snapshot');
  t.equal(readFileSync(join(root, 'tmp', 'in-root.txt'), 'utf8'), 'root-file\n', 'the root filesystem is in the snapshot');
  t.ok(existsSync(join(root, 'bin', 'busybox')), 'the image files are in the snapshot');

  const fork = await mutate(srv, tok, 'POST', `/api/containers/${id}/fork`, { resume_policy: 'immediate', command: ['/bin/sh', '-c', 'cat /workspace/note.txt; sleep 60'] });
  t.equal(fork.status, 'succeeded', JSON.stringify(fork));
  t.equal(readFileSync(join(rootfsOf(srv.dataDir, fork.result_container_id!), 'workspace', 'note.txt'), 'utf8'), 'state-two\n', 'a fork takes the state of now');
});
