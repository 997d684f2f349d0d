/**
 * Weavers run in a user namespace (issue 9 item 2): the real loom-server on the local backend,
 * real runc containers. Inside, ids 0..65535 map to LOOM_SERVER_WEAVER_USERNS_BASE.. on the host;
 * looked at from the host, the container's init and the files it writes belong to that range.
 */
import t from 'tap';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startServer } from '../support/server.js';
import { LoomClient } from '../../src/client/index.js';

const BASE = 231072; // not the default, so the variable is seen to take effect

/** The host pid of the weaver's init, from runc's state. */
function initPid(dataDir: string, id: string): number {
  const state = JSON.parse(readFileSync(join(dataDir, 'local', 'runc', id, 'state.json'), 'utf8')) as { init_process_pid: number };
  return state.init_process_pid;
}

t.test('a weaver runs in a user namespace mapped to the configured host range', async (t) => {
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_USERNS_BASE: String(BASE) } });
  const loom = new LoomClient({ serverUrl: srv.url, token: await srv.token('alice') });
  t.teardown(async () => {
    for (const w of await loom.listWeavers().catch(() => [])) await loom.deleteWeaver(w.id).catch(() => undefined);
    await srv.stop();
  });
  const w = await loom.waitUntilRunning((await loom.createWeaver({})).id);

  const map = await loom.exec(w.id, ['cat', '/proc/self/uid_map', '/proc/self/gid_map']);
  t.equal(map.exit_code, 0, map.stderr);
  t.same(map.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).map(Number)), [[0, BASE, 65536], [0, BASE, 65536]], 'uid and gid maps: 0..65535 → base..');

  const who = await loom.exec(w.id, ['id', '-u']);
  t.equal(who.stdout.trim(), '1000', 'the weaver user is still uid 1000 inside');

  // The container's init (the weaver's program, uid 1000 inside) seen from the host.
  const pid = initPid(srv.dataDir, w.id);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const uids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status)!.slice(1).map(Number);
  t.same(uids, [BASE + 1000, BASE + 1000, BASE + 1000, BASE + 1000], 'on the host the weaver user is base+1000, not 1000');
  t.not(readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim(), readFileSync('/proc/self/uid_map', 'utf8').trim(), 'not the host user namespace');

  // A file the weaver writes is owned by base+1000 on the host, and the image's files by base+0.
  const made = await loom.exec(w.id, ['sh', '-c', 'echo hi > /workspace/made-inside && stat -c "%u %g" /workspace/made-inside /bin/sh /etc/hostname /workspace']);
  t.equal(made.exit_code, 0, made.stderr);
  t.same(made.stdout.trim().split('\n'), ['1000 1000', '0 0', '0 0', '1000 1000'], 'inside: the file is the user\'s, the image\'s and loom\'s files are root\'s');
  const onHost = statSync(`/proc/${pid}/root/workspace/made-inside`);
  t.same([onHost.uid, onHost.gid], [BASE + 1000, BASE + 1000], 'on the host the file belongs to base+1000');
  const shOnHost = statSync(`/proc/${pid}/root/bin/busybox`, { throwIfNoEntry: false }) ?? statSync(`/proc/${pid}/root/bin/sh`);
  t.equal(shOnHost.uid, BASE, "the image's files belong to the namespace's root (base) on the host, not to root");
});
