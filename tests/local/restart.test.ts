import t from 'tap';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { localDataDir, newLocal, weaverSpec, waitStatus, TermReader, processesMentioning, mountsMentioning } from '../support/local-helpers.js';

const dataDir = localDataDir(t);

t.test('containers outlive the provisioner; a new one adopts them and removes orphans', async (t) => {
  const a = newLocal(dataDir);
  const kept = weaverSpec();
  const orphan = weaverSpec();
  const exited = weaverSpec({ command: ['/bin/sh', '-c', 'exit 5'] });
  await a.create(kept);
  await a.create(orphan);
  await a.create(exited);
  await waitStatus(a, kept.id, ['running']);
  await waitStatus(a, orphan.id, ['running']);
  await waitStatus(a, exited.id, ['failed']);
  const s = new TermReader(await a.attach(kept.id));
  s.send('export MARK=before-restart; echo marked-$((40+2))\n');
  await s.expect(/marked-42/);
  s.s.close();
  await a.close(); // drop A without deleting anything

  const b = newLocal(dataDir);
  t.teardown(() => b.close());
  const events: { id: string; status: string; reason?: string }[] = [];
  b.watch((w) => events.push(w));
  const report = await b.reconcile([kept.id, exited.id, 'gone-0000']);
  t.same(report.adopted.sort(), [kept.id, exited.id].sort(), 'adopted');
  t.same(report.orphansRemoved, [orphan.id], 'orphan removed');
  t.same(report.missing, ['gone-0000'], 'missing');
  t.ok(events.some((e) => e.id === exited.id && e.status === 'failed' && e.reason === 'exited with code 5'), 'exit seen while down is reported');
  t.same(mountsMentioning(orphan.id), [], 'orphan unmounted');
  t.same(processesMentioning(orphan.id).filter((x) => x.cmd.includes('conmon')), [], 'orphan conmon gone');
  t.notOk(existsSync(join(dataDir, 'local', 'weavers', orphan.id)), 'orphan dir gone');
  t.equal(await b.get(orphan.id), null);

  t.equal((await b.get(kept.id))?.status, 'running');
  const r = new TermReader(await b.attach(kept.id));
  r.send('echo "mark=$MARK"\n');
  await r.expect(/mark=before-restart/);

  // exit detection still works for an adopted container: kill its process from the host
  const st = await b.containerRuntime.state(kept.id);
  const ended = waitStatus(b, kept.id, ['failed', 'succeeded']);
  process.kill(st!.pid, 'SIGKILL');
  const fin = await ended;
  t.equal(fin.status, 'failed');
  t.equal(fin.reason, 'exited with code 137');
  t.same(await r.waitClosed(), { exitCode: 137 });
  await b.delete(kept.id);
  await b.delete(exited.id);
  t.same((await b.list()).map((w) => w.id), []);
});
