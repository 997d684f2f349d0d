/**
 * The files API end to end on real local weavers: byte-exact round trips (binary, 100 MB, a
 * directory tree with modes and symlinks), path escapes, ownership, size caps, access.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { startServer, tempDir } from '../support/server.js';
import { LoomClient, BadRequestError, ForbiddenError, NotFoundError, PayloadTooLargeError } from '../../src/client/index.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const CAP = 128 * 1024 * 1024;

async function bytes(s: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s as AsyncIterable<Buffer>) parts.push(c);
  return Buffer.concat(parts);
}

t.test('files in a running local weaver', async (t) => {
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_FILES_MAX_BYTES: String(CAP) } });
  const alice = new LoomClient({ serverUrl: srv.url, token: await srv.token('alice') });
  const bob = new LoomClient({ serverUrl: srv.url, token: await srv.token('bob') });
  const mallory = new LoomClient({ serverUrl: srv.url, token: await srv.token('mallory') });
  t.teardown(async () => {
    for (const w of await alice.listWeavers().catch(() => [])) await alice.deleteWeaver(w.id).catch(() => undefined);
    await srv.stop();
  });
  const team = await alice.post<{ id: string }>('/api/orgs', { name: `files-${randomBytes(3).toString('hex')}` });
  await alice.post(`/api/orgs/${team.id}/members`, { username: 'bob' });
  const id = (await alice.waitUntilRunning((await alice.createWeaver({ org_id: team.id })).id)).id;

  await t.test('a binary file round-trips byte for byte, owned by the weaver user, with its mode', async (t) => {
    const data = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(1024 * 1024)]);
    const put = await alice.writeFile(id, '/workspace/bin.dat', data, { mode: '750' });
    t.equal(put.bytes, data.length);
    t.equal(sha(await alice.readFile(id, '/workspace/bin.dat')), sha(data));
    const st = await alice.stat(id, '/workspace/bin.dat');
    t.same([st.type, st.size, st.mode, st.uid, st.gid], ['file', data.length, '750', 1000, 1000]);
    const seen = await alice.exec(id, ['sha256sum', '/workspace/bin.dat']);
    t.equal(seen.stdout.split(' ')[0], sha(data), 'the weaver sees the same bytes');
    await alice.writeFile(id, '/workspace/bin.dat', 'replaced');
    t.equal((await alice.readFile(id, '/workspace/bin.dat')).toString(), 'replaced', 'overwrite replaces');
    t.equal((await alice.writeFile(id, '/workspace/empty', Buffer.alloc(0))).bytes, 0);
    t.equal((await alice.readFile(id, '/workspace/empty')).length, 0, 'an empty file');
  });

  await t.test('100 MB up and down, streamed, byte-exact', async (t) => {
    const chunk = randomBytes(1024 * 1024);
    const n = 100;
    const h = createHash('sha256');
    for (let i = 0; i < n; i++) h.update(chunk);
    const want = h.digest('hex');
    const body = Readable.from((function* () {
      for (let i = 0; i < n; i++) yield chunk;
    })());
    t.equal((await alice.writeFile(id, '/workspace/big', body)).bytes, n * chunk.length);
    const d = await alice.download(id, '/workspace/big');
    t.equal(d.size, n * chunk.length, 'the size header');
    const h2 = createHash('sha256');
    let got = 0;
    for await (const c of d.body) {
      h2.update(c as Buffer);
      got += (c as Buffer).length;
    }
    t.equal(got, n * chunk.length);
    t.equal(h2.digest('hex'), want);

    // A download abandoned after its first bytes ends the tool reading the file in the weaver.
    const readers = async () =>
      (await alice.exec(id, ['sh', '-c', 'for p in /proc/[0-9]*; do tr "\\0" " " < $p/cmdline 2>/dev/null; echo; done'])).stdout
        .split('\n')
        .filter((l) => l.includes('cat /workspace/big'));
    const partial = await alice.download(id, '/workspace/big');
    for await (const c of partial.body) {
      t.ok((c as Buffer).length > 0, 'the download started');
      t.ok((await readers()).length > 0, 'the tool is still reading (the client is not)');
      break; // leaving the loop destroys the response
    }
    let left = await readers();
    for (let i = 0; i < 200 && left.length > 0; i++) left = await readers();
    t.same(left, [], 'no reader left in the weaver');
    await alice.exec(id, ['rm', '/workspace/big']);
  });

  await t.test('a directory tree with modes and symlinks round-trips through tar', async (t) => {
    const src = tempDir('loom-files-src-');
    mkdirSync(join(src, 'a/b'), { recursive: true });
    writeFileSync(join(src, 'a/run.sh'), '#!/bin/sh\necho hi\n');
    chmodSync(join(src, 'a/run.sh'), 0o755);
    writeFileSync(join(src, 'a/b/secret'), randomBytes(4096));
    chmodSync(join(src, 'a/b/secret'), 0o600);
    writeFileSync(join(src, 'plain.txt'), 'plain\n');
    symlinkSync('a/run.sh', join(src, 'rel-link'));
    symlinkSync('/etc/hostname', join(src, 'abs-link'));
    const tar = execFileSync('tar', ['-c', '-f', '-', '-C', src, '.']);
    await alice.uploadTar(id, '/workspace/tree', tar);
    const ls = await alice.exec(id, ['sh', '-c', 'cd /workspace/tree && stat -c "%n %a %U" a/run.sh a/b/secret plain.txt && readlink rel-link && readlink abs-link']);
    t.equal(ls.stdout, 'a/run.sh 755 loom\na/b/secret 600 loom\nplain.txt 644 loom\na/run.sh\n/etc/hostname\n', 'modes, owner and links inside the weaver');

    const d = await alice.download(id, '/workspace/tree');
    t.equal(d.type, 'directory');
    const dst = tempDir('loom-files-dst-');
    execFileSync('tar', ['-x', '-f', '-', '-C', dst], { input: await bytes(d.body) });
    for (const f of ['a/run.sh', 'a/b/secret', 'plain.txt']) {
      t.equal(sha(readFileSync(join(dst, f))), sha(readFileSync(join(src, f))), `${f} content`);
      t.equal(lstatSync(join(dst, f)).mode & 0o777, lstatSync(join(src, f)).mode & 0o777, `${f} mode`);
    }
    t.equal(readlinkSync(join(dst, 'rel-link')), 'a/run.sh');
    t.equal(readlinkSync(join(dst, 'abs-link')), '/etc/hostname', 'a symlink stays a symlink (not followed on the host)');
  });

  await t.test('path escapes stay inside the weaver or are refused', async (t) => {
    const hostShadow = readFileSync('/etc/shadow');
    for (const p of ['relative/x', '/workspace/../etc/passwd', '/../../etc/shadow', '']) {
      await t.rejects(alice.stat(id, p), BadRequestError, `refused: ${JSON.stringify(p)}`);
    }
    await alice.exec(id, ['sh', '-c', 'cd /workspace && ln -s /etc/shadow shadow-link && ln -s /proc/self/root/etc/shadow proc-link && ln -s /proc/1/root/etc/shadow init-link && ln -s ../../../../../../etc/shadow dots-link && ln -s /etc escape-dir']);
    for (const p of ['/workspace/shadow-link', '/workspace/proc-link', '/workspace/init-link', '/workspace/dots-link', '/proc/self/root/etc/shadow', '/proc/1/root/etc/shadow']) {
      try {
        const got = await alice.readFile(id, p);
        t.not(sha(got), sha(hostShadow), `${p} is not the host's /etc/shadow`);
      } catch (e) {
        t.ok(e instanceof NotFoundError || e instanceof ForbiddenError, `${p}: ${(e as Error).message}`);
      }
    }
    // Writing through a symlink that names a host path lands in the weaver, never on the host.
    const marker = `/etc/loom-escape-${randomBytes(4).toString('hex')}`;
    await alice.exec(id, ['ln', '-s', marker, '/workspace/out-link']);
    await alice.writeFile(id, '/workspace/out-link', 'x').catch(() => undefined);
    t.notOk(existsSync(marker), 'nothing written on the host');
    await t.rejects(alice.writeFile(id, '/workspace/escape-dir/passwd', 'pwned'), ForbiddenError, "the weaver user cannot write the weaver's /etc either");
    t.equal((await alice.exec(id, ['grep', '-c', 'pwned', '/etc/passwd'])).stdout.trim(), '0');
  });

  await t.test('clear errors: 404, 400, 403, 413, and a refused upload leaves nothing', async (t) => {
    await t.rejects(alice.readFile(id, '/workspace/nope'), NotFoundError);
    await t.rejects(alice.stat(id, '/workspace/nope'), NotFoundError);
    await t.rejects(alice.writeFile(id, '/workspace/no/such/dir/f', 'x'), NotFoundError, 'a missing parent is 404');
    await t.rejects(alice.writeFile(id, '/workspace', 'x'), BadRequestError, 'a directory is not a file');
    await t.rejects(alice.writeFile(id, '/etc/hostname', 'x'), ForbiddenError, "root's files are not the weaver user's");
    await t.rejects(alice.request('PUT', `/api/weaver/${id}/files?path=/workspace/x&mode=999`, { rawBody: Buffer.from('x') }), BadRequestError);
    await t.rejects(alice.request('PUT', `/api/weaver/${id}/files?path=/workspace/x&archive=zip`, { rawBody: Buffer.from('x') }), BadRequestError);
    const before = (await alice.exec(id, ['ls', '-a', '/workspace'])).stdout;
    await t.rejects(alice.writeFile(id, '/workspace/huge', Buffer.alloc(CAP + 1)), PayloadTooLargeError, 'over the cap by Content-Length');
    const streamed = Readable.from((function* () {
      for (let i = 0; i <= CAP / (1024 * 1024); i++) yield Buffer.alloc(1024 * 1024, 1);
    })());
    await t.rejects(alice.writeFile(id, '/workspace/huge', streamed), PayloadTooLargeError, 'over the cap while streaming (no length)');
    t.equal((await alice.exec(id, ['ls', '-a', '/workspace'])).stdout, before, 'no file and no temporary file left behind');
  });

  await t.test('access: plain member 403, another org 404', async (t) => {
    await t.rejects(bob.readFile(id, '/workspace/bin.dat'), ForbiddenError);
    await t.rejects(bob.writeFile(id, '/workspace/bob', 'x'), ForbiddenError);
    await t.rejects(bob.stat(id, '/workspace'), ForbiddenError);
    await t.rejects(mallory.readFile(id, '/workspace/bin.dat'), NotFoundError);
    await t.rejects(mallory.writeFile(id, '/workspace/m', 'x'), NotFoundError);
    await t.rejects(mallory.stat(id, '/workspace'), NotFoundError);
    await t.rejects(alice.stat(id, '/workspace/bob'), NotFoundError, 'the refused write changed nothing');
  });
});
