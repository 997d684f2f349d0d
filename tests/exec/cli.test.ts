/**
 * `loom exec` and `loom cp` (and the weaver commands now on LoomClient): the real CLI against a
 * real server with a real local weaver.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, readlinkSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, loomCli, tempDir } from '../support/server.js';
import { LoomClient } from '../../src/client/index.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

t.test('loom exec and loom cp', async (t) => {
  const srv = await startServer();
  const tok = await srv.token('alice');
  const api = new LoomClient({ serverUrl: srv.url, token: tok });
  t.teardown(async () => {
    for (const w of await api.listWeavers().catch(() => [])) await api.deleteWeaver(w.id).catch(() => undefined);
    await srv.stop();
  });
  const loom = loomCli(srv, tempDir());
  t.equal((await loom(['login', '--token', tok])).code, 0);
  const created = await loom(['new', '--detach']);
  t.equal(created.code, 0, created.stderr);
  const id = created.stdout.trim();
  const prefix = id.slice(0, 8);

  await t.test('exit code, stdout and stderr apart, env and workdir, argv as given', async (t) => {
    const r = await loom(['exec', prefix, '--', 'sh', '-c', 'echo out-$X; pwd; echo err >&2; exit 3']);
    t.equal(r.code, 3, 'exits with the command\'s code');
    t.equal(r.stdout, 'out-\n/workspace\n');
    t.equal(r.stderr, 'err\n');
    const e = await loom(['exec', '-e', 'X=1 2', '-w', '/tmp', prefix, '--', 'sh', '-c', 'echo "$X"; pwd']);
    t.same([e.code, e.stdout], [0, '1 2\n/tmp\n']);
    const q = await loom(['exec', prefix, '--', 'echo', '$(whoami)', '&&', 'ls']);
    t.equal(q.stdout, '$(whoami) && ls\n', 'no shell in between');
    const nf = await loom(['exec', prefix, '--', '/nope']);
    t.equal(nf.code, 127, 'a missing command exits 127');
    t.match(nf.stderr, /^loom: .*no such file/im);
  });

  await t.test('-i forwards stdin; without -i the command reads nothing', async (t) => {
    const input = randomBytes(256 * 1024).toString('base64');
    const r = await loom(['exec', '-i', prefix, '--', 'cat'], { input });
    t.equal(r.code, 0);
    t.equal(r.stdout, input, 'stdin round-trips through cat');
    const n = await loom(['exec', prefix, '--', 'cat'], { input: 'not forwarded' });
    t.same([n.code, n.stdout], [0, ''], 'no -i: /dev/null');
  });

  await t.test('bad usage is one line and a non-zero exit', async (t) => {
    for (const args of [['exec', '-e', 'NOEQ', prefix, '--', 'ls'], ['exec', '-w', 'rel', prefix, '--', 'ls'], ['exec', 'no-such-weaver', '--', 'ls'], ['cp', 'a', 'b'], ['cp', `${prefix}:/x`, `${prefix}:/y`], ['cp', `${prefix}:/workspace/none`, tempDir()]]) {
      const r = await loom(args);
      t.not(r.code, 0, `refused: loom ${args.join(' ')}`);
      t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr.trim()}`);
    }
  });

  await t.test('cp a file both ways, byte for byte, with its mode', async (t) => {
    const dir = tempDir('loom-cp-');
    const data = randomBytes(3 * 1024 * 1024 + 7);
    writeFileSync(join(dir, 'up.bin'), data);
    chmodSync(join(dir, 'up.bin'), 0o751);
    const up = await loom(['cp', join(dir, 'up.bin'), `${prefix}:/workspace/up.bin`]);
    t.equal(up.code, 0, up.stderr);
    t.equal(up.stderr, '', 'no progress when stderr is not a terminal');
    const st = await api.stat(id, '/workspace/up.bin');
    t.same([st.size, st.mode], [data.length, '751']);
    // Into an existing directory: keeps the name.
    t.equal((await loom(['cp', join(dir, 'up.bin'), `${prefix}:/tmp`])).code, 0);
    t.equal((await api.stat(id, '/tmp/up.bin')).size, data.length);
    const down = await loom(['cp', `${prefix}:/workspace/up.bin`, join(dir, 'down.bin')]);
    t.equal(down.code, 0, down.stderr);
    t.equal(sha(readFileSync(join(dir, 'down.bin'))), sha(data));
    t.equal(statSync(join(dir, 'down.bin')).mode & 0o777, 0o751);
  });

  await t.test('cp a directory tree both ways (modes, symlinks, nesting)', async (t) => {
    const src = tempDir('loom-cp-tree-');
    mkdirSync(join(src, 'proj/src/deep'), { recursive: true });
    writeFileSync(join(src, 'proj/src/deep/a.txt'), 'deep\n');
    writeFileSync(join(src, 'proj/run'), '#!/bin/sh\n');
    chmodSync(join(src, 'proj/run'), 0o700);
    symlinkSync('src/deep/a.txt', join(src, 'proj/link'));
    t.equal((await loom(['cp', join(src, 'proj'), `${prefix}:/workspace/proj`])).code, 0);
    const seen = await api.exec(id, ['sh', '-c', 'cat /workspace/proj/src/deep/a.txt; stat -c %a /workspace/proj/run; readlink /workspace/proj/link']);
    t.equal(seen.stdout, 'deep\n700\nsrc/deep/a.txt\n');
    const back = tempDir('loom-cp-back-');
    t.equal((await loom(['cp', `${prefix}:/workspace/proj`, join(back, 'copy')])).code, 0, 'to a new directory');
    t.equal(readFileSync(join(back, 'copy/src/deep/a.txt'), 'utf8'), 'deep\n');
    t.equal(statSync(join(back, 'copy/run')).mode & 0o777, 0o700);
    t.equal(readlinkSync(join(back, 'copy/link')), 'src/deep/a.txt');
    t.equal((await loom(['cp', `${prefix}:/workspace/proj`, back])).code, 0, 'into an existing directory');
    t.ok(existsSync(join(back, 'proj/src/deep/a.txt')), 'lands as <dir>/proj');
  });

  await t.test('weaver commands run on the client library', async (t) => {
    const ps = await loom(['weaver', 'ps', '--json']);
    t.equal(ps.code, 0);
    t.ok((JSON.parse(ps.stdout) as { id: string }[]).some((w) => w.id === id));
    const rm = await loom(['weaver', 'rm', prefix]);
    t.equal(rm.code, 0, rm.stderr);
    t.equal((await loom(['exec', id, '--', 'true'])).code, 1, 'a deleted weaver: exec fails');
  });
});
