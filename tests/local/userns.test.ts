/**
 * Weavers run in a user namespace (issue 9 item 2): the real loom-server on the local backend,
 * real runc containers. Inside, ids 0..65535 map to LOOM_SERVER_WEAVER_USERNS_BASE.. on the host;
 * looked at from the host, the container's init and the files it writes belong to that range.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { startServer, tempDir } from '../support/server.js';
import { buildOciSpec } from '../../src/provisioners/local/spec.js';
import { hostId, shiftOwnership } from '../../src/provisioners/local/idmap.js';
import { LoomClient } from '../../src/client/index.js';
import { waitUntil } from '../support/attach.js';
import { cleanupContainers, makeFixture, mutate, rootfsOf } from '../branching/helpers.js';

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

  // The namespace's root may search the data dir (to reach its layers); it must not read the database.
  for (const f of ['loom.db', 'loom.db-wal', 'loom.db-shm']) {
    const path = join(srv.dataDir, f);
    if (!existsSync(path)) continue;
    t.equal(statSync(path).mode & 0o777, 0o600, `${f} is owner-only`);
    const r = spawnSync('setpriv', ['--reuid', String(BASE), '--regid', String(BASE), '--clear-groups', 'head', '-c', '1', path], { encoding: 'utf8' });
    t.not(r.status, 0, `the namespace's root (host uid ${BASE}) cannot read ${f}`);
    t.match(r.stderr, /Permission denied/, `refused for permission, not absence: ${r.stderr.trim()}`);
  }
});

t.test('the OCI spec, hostId and the ownership shift', async (t) => {
  const input = { rootfs: '/r', args: ['sh'], env: {}, cwd: '/', uid: 1000, gid: 1000, terminal: false, hostname: 'h', cgroupsPath: '/loom/x' };
  const plain = buildOciSpec(input);
  t.notOk(plain.linux.namespaces.some((n) => n.type === 'user'), 'no base: no user namespace');
  t.equal(plain.linux.uidMappings, undefined);
  const mapped = buildOciSpec({ ...input, usernsBase: BASE });
  t.ok(mapped.linux.namespaces.some((n) => n.type === 'user'), 'a base adds the user namespace');
  t.same(mapped.linux.uidMappings, [{ containerID: 0, hostID: BASE, size: 65536 }]);
  t.same(mapped.linux.gidMappings, [{ containerID: 0, hostID: BASE, size: 65536 }]);

  t.equal(hostId({ base: BASE }, 1000), BASE + 1000);
  t.equal(hostId({ base: 0 }, 1000), 1000, 'no namespace: ids are host ids');
  t.throws(() => hostId({ base: BASE }, 65536), RangeError, 'an id outside the namespace is refused');
  t.throws(() => hostId({ base: BASE }, -1), RangeError);

  const dir = tempDir('loom-userns-shift-');
  await fsp.mkdir(join(dir, 'bin'));
  await fsp.writeFile(join(dir, 'bin', 'su'), 'x');
  await fsp.chmod(join(dir, 'bin', 'su'), 0o4755);
  await fsp.writeFile(join(dir, 'owned'), 'x');
  await fsp.chown(join(dir, 'owned'), 1000, 50);
  await fsp.writeFile(join(dir, 'huge-id'), 'x');
  await fsp.chown(join(dir, 'huge-id'), 70000, 70000);
  await fsp.symlink('/etc/shadow', join(dir, 'link'));
  await shiftOwnership(dir, BASE);
  const st = (p: string) => fsp.lstat(join(dir, p));
  const su = await st('bin/su');
  t.same([su.uid, su.gid, su.mode & 0o7777], [BASE, BASE, 0o4755], 'root-owned setuid file: shifted, setuid kept');
  const owned = await st('owned');
  t.same([owned.uid, owned.gid], [BASE + 1000, BASE + 50]);
  const huge = await st('huge-id');
  t.same([huge.uid, huge.gid], [BASE + 65534, BASE + 65534], 'an id outside the range becomes nobody inside');
  const link = await st('link');
  t.same([link.uid, link.isSymbolicLink()], [BASE, true], 'the link itself, never its target');
  t.equal((await fsp.stat('/etc/shadow')).uid, 0, 'the target was not touched');
  t.equal((await st('.')).uid, BASE);
});

t.test('a branching container runs in the same user namespace: root inside is base on the host', async (t) => {
  const fx = makeFixture();
  t.teardown(() => fx.cleanup());
  const srv = await startServer({ t, env: { LOOM_SERVER_WEAVER_ENABLED: 'false', LOOM_BRANCHING_IMPORT_ROOTS: fx.dir, LOOM_SERVER_WEAVER_USERNS_BASE: String(BASE) } });
  const token = await srv.token('alice', true);
  t.teardown(() => cleanupContainers(srv, [token]));
  const op = await mutate(srv, token, 'POST', '/api/containers', {
    name: 'userns', rootfs_path: fx.rootfs, start_immediately: true,
    command: ['/bin/sh', '-c', 'cat /proc/self/uid_map > /map.tmp && mv /map.tmp /map; sleep 60'],
  });
  t.equal(op.status, 'succeeded', JSON.stringify(op));
  const id = op.container_id!;
  const rootfs = rootfsOf(srv.dataDir, id);
  const map = await waitUntil(async () => (existsSync(join(rootfs, 'map')) ? readFileSync(join(rootfs, 'map'), 'utf8') : null), 'the container wrote /map', 60_000);
  t.same(map.trim().split(/\s+/).map(Number), [0, BASE, 65536], 'uid 0..65535 inside → base.. on the host');
  const made = statSync(join(rootfs, 'map'));
  t.same([made.uid, made.gid], [BASE, BASE], 'a file root wrote inside is owned by base on the host');
  t.equal(statSync(join(rootfs, 'hello.txt')).uid, BASE, 'the registered tree was shifted into the range');
  const state = JSON.parse(readFileSync(join(srv.dataDir, 'local', 'runc', id, 'state.json'), 'utf8')) as { init_process_pid: number };
  const uids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(readFileSync(`/proc/${state.init_process_pid}/status`, 'utf8'))!.slice(1).map(Number);
  t.same(uids, [BASE, BASE, BASE, BASE], "the container's init (root inside) is host uid base, not 0");
});
