/**
 * Where a branching container's root filesystem may come from (issue 9 item 1), through the real
 * server: a host directory is a server-admin right under the operator's import roots (system trees
 * and symlinks out refused, one message whether a path is missing or forbidden); everyone else
 * registers from an image of the local store or an uploaded archive, unpacked safely and capped.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { startServer, loomCli, tempDir, type TestServer } from '../support/server.js';
import { buildTar, type TarEntry } from '../support/tar.js';
import { cleanupContainers, makeFixture, mutate, rootfsOf, runtimeState } from './helpers.js';

type Err = { error: { code: string; message: string } };
interface Container { id: string; status: string }

const fx = makeFixture();
// Inside the import root: the fixture, a symlink to /etc and one to /, a plain file.
const importRoot = fx.dir;
symlinkSync('/etc', join(importRoot, 'to-etc'));
symlinkSync('/', join(importRoot, 'to-root'));
const outsider = tempDir('loom-outside-');
writeFileSync(join(outsider, 'secret'), 'host secret\n');
symlinkSync(outsider, join(importRoot, 'to-outside'));

let srv: TestServer;
let admin: string;
let member: string;

t.before(async () => {
  srv = await startServer({ env: { LOOM_BRANCHING_IMPORT_ROOTS: `${importRoot},/nonexistent-root`, LOOM_BRANCHING_ARCHIVE_MAX_BYTES: String(4 * 1024 * 1024) } });
  admin = await srv.token('root-admin', true);
  member = await srv.token('member');
});
t.teardown(async () => {
  if (srv) {
    await cleanupContainers(srv, [admin, member]);
    await srv.stop();
  }
  fx.cleanup();
});

const containerDirs = () => (existsSync(join(srv.dataDir, 'local', 'containers')) ? readdirSync(join(srv.dataDir, 'local', 'containers')) : []);
const count = async (tok: string) => (await srv.api<{ count: number }>('GET', '/api/containers', tok)).body.count;
const cmd = ['/bin/sh', '-c', 'sleep 60'];

t.test('a member cannot register a host path, not even one under an import root', async (t) => {
  for (const p of [fx.rootfs, '/etc', '/nonexistent']) {
    const r = await srv.api<Err>('POST', '/api/containers', member, { name: 'x', rootfs_path: p, command: cmd });
    t.equal(r.status, 403, p);
    t.equal(r.body.error.code, 'ADMIN_REQUIRED');
    t.notMatch(r.body.error.message, p === '/' ? /^$/ : p, 'the message does not echo the path');
  }
  t.equal(await count(member), 0);
});

t.test('an admin: system trees, symlinks out, and paths outside the roots are one indistinguishable refusal', async (t) => {
  const paths = [
    '/etc', '/dev', '/proc/sys', '/sys/kernel', '/', '/usr', '/nonexistent/rootfs', outsider,
    join(importRoot, 'to-etc'), join(importRoot, 'to-root'), join(importRoot, 'to-outside'), join(importRoot, 'missing'),
    join(importRoot, 'rootfs', 'hello.txt'), `${fx.rootfs}/../rootfs`, 'relative/rootfs', join(srv.dataDir, 'local'),
  ];
  const messages = new Set<string>();
  for (const p of paths) {
    const r = await srv.api<Err>('POST', '/api/containers', admin, { name: 'x', rootfs_path: p, command: cmd });
    t.equal(r.status, 400, p);
    t.equal(r.body.error.code, 'INVALID_ROOTFS_PATH', p);
    messages.add(r.body.error.message.replace(JSON.stringify(p), '<path>'));
  }
  t.same([...messages], ['rootfs_path <path> is not a directory under an import root (LOOM_BRANCHING_IMPORT_ROOTS)'], 'missing and forbidden read the same');
  t.equal(await count(admin), 0, 'nothing was registered');
  t.same(containerDirs(), [], 'nothing was written');
});

t.test('an admin registers a directory under an import root', async (t) => {
  const op = await mutate(srv, admin, 'POST', '/api/containers', { name: 'ok', rootfs_path: fx.rootfs, command: cmd, start_immediately: true });
  t.equal(op.status, 'succeeded', JSON.stringify(op));
  t.equal(readFileSync(join(rootfsOf(srv.dataDir, op.container_id!), 'hello.txt'), 'utf8'), 'hello\n');
  t.equal(runtimeState(srv.dataDir, op.container_id!), 'running');
});

t.test('without import roots no host path can be registered, even by an admin', async (t) => {
  const other = await startServer({ env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  t.teardown(() => other.stop());
  const tok = await other.token('boss', true);
  const r = await other.api<Err>('POST', '/api/containers', tok, { name: 'x', rootfs_path: fx.rootfs, command: cmd });
  t.equal(r.status, 400);
  t.equal(r.body.error.code, 'IMPORT_DISABLED');
});

t.test('a member registers from an image of the local store', async (t) => {
  const op = await mutate(srv, member, 'POST', '/api/containers', { name: 'img', image: 'loom/default:latest', command: cmd, start_immediately: true });
  t.equal(op.status, 'succeeded', JSON.stringify(op));
  t.equal(runtimeState(srv.dataDir, op.container_id!), 'running');
  t.ok(existsSync(join(rootfsOf(srv.dataDir, op.container_id!), 'bin', 'sh')));
  const missing = await srv.api<Err>('POST', '/api/containers', member, { name: 'x', image: 'no-such/image:1', command: cmd });
  t.equal(missing.status, 400);
  t.equal(missing.body.error.code, 'IMAGE_NOT_FOUND');
  const both = await srv.api<Err>('POST', '/api/containers', member, { name: 'x', image: 'loom/default:latest', rootfs_path: fx.rootfs, command: cmd });
  t.equal(both.body.error.code, 'INVALID_SOURCE');
  const neither = await srv.api<Err>('POST', '/api/containers', member, { name: 'x', command: cmd });
  t.equal(neither.body.error.code, 'INVALID_SOURCE');
});

async function upload(tok: string, body: Buffer, q: Record<string, string> = {}): Promise<{ status: number; body: Err & { operation_id: string } }> {
  const qs = new URLSearchParams({ name: 'arch', command: JSON.stringify(cmd), ...q });
  const res = await fetch(`${srv.url}/api/containers/archive?${qs}`, { method: 'POST', headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/x-tar' }, body });
  return { status: res.status, body: (await res.json()) as Err & { operation_id: string } };
}

t.test('a member registers from an uploaded archive; setuid bits are dropped', async (t) => {
  const busybox = readFileSync('/bin/busybox');
  const tar = buildTar([
    { name: 'bin/', type: '5' },
    { name: 'bin/busybox', mode: 0o4755, data: busybox },
    { name: 'bin/sh', type: '2', linkname: 'busybox' },
    { name: 'bin/sleep', type: '2', linkname: '/bin/busybox' },
    { name: 'etc/', type: '5', mode: 0o2755 },
    { name: 'etc/motd', data: 'from the archive\n' },
    { name: 'etc/motd-link', type: '1', linkname: 'etc/motd' },
  ]);
  const gz = gzipSync(tar);
  const r = await upload(member, gz, { start_immediately: 'true' });
  t.equal(r.status, 202, JSON.stringify(r.body));
  const final = (await srv.api<{ status: string; container_id: string }>('GET', `/api/operations/${r.body.operation_id}?wait=30`, member)).body;
  t.equal(final.status, 'succeeded', JSON.stringify(final));
  const root = rootfsOf(srv.dataDir, final.container_id);
  t.equal(readFileSync(join(root, 'etc', 'motd'), 'utf8'), 'from the archive\n');
  t.equal(statSync(join(root, 'bin', 'busybox')).mode & 0o7777, 0o755, 'setuid dropped');
  t.equal(statSync(join(root, 'etc')).mode & 0o7777, 0o755, 'setgid dropped');
  t.equal(runtimeState(srv.dataDir, final.container_id), 'running');
});

t.test('unsafe or oversized archives are refused and leave nothing behind', async (t) => {
  const before = await count(member);
  const dirs = containerDirs().length;
  const cases: [string, TarEntry[] | Buffer, number, string][] = [
    ['absolute path', [{ name: '/tmp/loom-evil-abs', data: 'x' }], 400, 'INVALID_ARCHIVE'],
    ['dot-dot path', [{ name: 'a/../../loom-evil-dotdot', data: 'x' }], 400, 'INVALID_ARCHIVE'],
    ['char device', [{ name: 'dev/mem', type: '3' }], 400, 'INVALID_ARCHIVE'],
    ['block device', [{ name: 'dev/sda', type: '4' }], 400, 'INVALID_ARCHIVE'],
    ['fifo', [{ name: 'p', type: '6' }], 400, 'INVALID_ARCHIVE'],
    ['hard link out', [{ name: 'shadow', type: '1', linkname: '/etc/shadow' }], 400, 'INVALID_ARCHIVE'],
    ['hard link up', [{ name: 'x', type: '1', linkname: '../../etc/shadow' }], 400, 'INVALID_ARCHIVE'],
    ['write through a symlink', [{ name: 'out', type: '2', linkname: outsider }, { name: 'out/secret', data: 'overwritten' }], 400, 'INVALID_ARCHIVE'],
    ['too large as sent', [{ name: 'big', data: randomBytes(5 * 1024 * 1024) }], 413, 'ARCHIVE_TOO_LARGE'],
    ['too large unpacked (gzip)', gzipSync(buildTar([{ name: 'zeros', data: Buffer.alloc(16 * 1024 * 1024) }])), 413, 'ARCHIVE_TOO_LARGE'],
    ['not a tar', Buffer.from('this is not an archive at all, just text '.repeat(40)), 400, 'INVALID_ARCHIVE'],
    ['empty', buildTar([]), 400, 'INVALID_ARCHIVE'],
  ];
  for (const [what, entries, status, code] of cases) {
    const body = Buffer.isBuffer(entries) ? entries : buildTar(entries);
    const r = await upload(member, body);
    t.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
    t.equal(r.body.error?.code, code, what);
  }
  t.equal(readFileSync(join(outsider, 'secret'), 'utf8'), 'host secret\n', 'nothing written through the symlink');
  t.notOk(existsSync('/tmp/loom-evil-abs'));
  t.equal(await count(member), before, 'no container was registered');
  t.equal(containerDirs().length, dirs, 'no files were left');
  const badCmd = await srv.api<Err>('POST', `/api/containers/archive?name=x&command=${encodeURIComponent('not json')}`, member, 'x', { 'content-type': 'application/x-tar' });
  t.equal(badCmd.status, 400);
});

t.test('the CLI: container create --image and --archive for a member; --rootfs refused with the reason', async (t) => {
  const loom = loomCli(srv, tempDir());
  t.equal((await loom(['login', '--token', member])).code, 0);
  const archive = join(fx.dir, 'cli.tar');
  execFileSync('tar', ['-C', fx.rootfs, '-cf', archive, '.']);
  const a = await loom(['--json', 'container', 'create', '--name', 'cli-arch', '--archive', archive, '--wait', '--', '/bin/true']);
  t.equal(a.code, 0, a.stderr);
  t.equal(JSON.parse(a.stdout).status, 'succeeded');
  const r = await loom(['container', 'create', '--name', 'cli-root', '--rootfs', fx.rootfs, '--', '/bin/true']);
  t.not(r.code, 0);
  t.match(r.stderr, /needs a server admin/);
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  const none = await loom(['container', 'create', '--name', 'x', '--', '/bin/true']);
  t.not(none.code, 0);
  t.match(none.stderr, /exactly one of --image, --archive and --rootfs/);
});
