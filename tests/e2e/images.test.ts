/**
 * Images from Debian packages and their management (issue 17 items 1, 2, 4, 5), through the real
 * set-up step (`loom-server admin build-image`, what scripts/setup.sh runs), the real server, the
 * real CLI, mmdebstrap from the configured apt sources, umoci/skopeo and runc:
 * - after set-up the default image is the dev image: git, python3 and curl work, uid 1000, /workspace;
 * - `loom image build` with two packages, a weaver on it (git present, uid 1000, cwd /workspace);
 * - bad input and non-admins are refused and change nothing;
 * - `loom image ls` shows size and users; `rm` of an image in use is refused; prune frees space
 *   and the unpacked tree of the removed image goes;
 * - a pull from an unreachable registry fails with a clear error within the timeout.
 * Builds need the Debian archive (deb.debian.org or LOOM_IMAGE_BUILD_MIRROR).
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SERVER_BIN, freshDataDir, loomCli, run, startServer, tempDir, type TestServer } from '../support/server.js';
import { createRunning } from '../support/weavers.js';
import { waitUntil } from '../support/attach.js';

type Weaver = { id: string; status: string; image: string; reason?: string };
type Exec = { exit_code: number; stdout: string; stderr: string };
type ImageView = { name: string; digest: string; size: number; in_use: number; users?: string[] };

// Two real Debian builds (the dev image with gcc, then a two-package image) from the archive, then
// weavers on them: minutes on a shared 2-core machine, well past tap's default 300 s per file.
t.setTimeout(1_200_000);

const hasMmdebstrap = (() => {
  try {
    execFileSync('sh', ['-c', 'command -v mmdebstrap'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

if (process.getuid?.() !== 0 || !hasMmdebstrap) {
  const why = process.getuid?.() !== 0 ? 'needs root (mmdebstrap --mode=root, runc)' : 'mmdebstrap missing (scripts/apt-packages.txt)';
  if (process.env['CI'] === 'true') t.fail(why);
  else t.plan(0, why);
} else {
  const tag = randomBytes(3).toString('hex');

  const running = (srv: TestServer, tok: string, body: Record<string, unknown>) => createRunning<Weaver>(srv, tok, body, 120_000);
  async function exec(srv: TestServer, tok: string, id: string, command: string[]): Promise<Exec> {
    const r = await srv.api<Exec>('POST', `/api/weaver/${id}/exec`, tok, { command, timeout_secs: 60 });
    if (r.status !== 200) throw new Error(`exec: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }

  t.test('set-up builds the dev image once; it is the default; a two-package image built by the CLI runs; management', async (t) => {
    const dataDir = freshDataDir('loom-img-');
    const env = { ...process.env, LOOM_DATA_DIR: dataDir, LOOM_LOG_LEVEL: 'warn' };
    // 1. The set-up step (scripts/setup.sh runs exactly this).
    const setup = await run(process.execPath, [SERVER_BIN, 'admin', 'build-image'], { env, timeoutMs: 1_200_000 });
    t.equal(setup.code, 0, `set-up built the dev image: ${setup.stderr.slice(-500)}`);
    t.match(setup.stdout.trim(), /^sha256:[0-9a-f]{64}$/);
    t.match(setup.stderr, /built loom\/dev:bookworm in \d+ s/);
    const again = await run(process.execPath, [SERVER_BIN, 'admin', 'build-image'], { env, timeoutMs: 60_000 });
    t.equal(again.code, 0);
    t.match(again.stderr, /already in the store.*not rebuilt/, 'a second set-up skips the build');
    t.equal(again.stdout.trim(), setup.stdout.trim(), 'same image');

    const srv = await startServer({ t, dataDir });
    const admin = await srv.token(`admin-${tag}`, true);
    const alice = await srv.token(`alice-${tag}`);
    const loom = loomCli(srv, tempDir());
    await loom(['login', '--token', admin]);
    const aliceCli = loomCli(srv, tempDir());
    await aliceCli(['login', '--token', alice]);

    // 2. The default image is the dev image: a Debian shell with the tools.
    const dev = await running(srv, alice, {});
    t.equal(dev.image, 'loom/dev:bookworm', 'no image asked: the dev image');
    const tools = await exec(srv, alice, dev.id, ['bash', '-lc', 'git --version && python3 --version && curl --version | head -1 && make --version | head -1 && gcc --version | head -1 && id -u && pwd && echo "$LANG" && ls /etc/ssl/certs/ca-certificates.crt']);
    t.equal(tools.exit_code, 0, tools.stderr);
    t.match(tools.stdout, /^git version .*\nPython 3\.\d+.*\ncurl \d.*\nGNU Make .*\ngcc .*\n1000\n\/workspace\nC\.UTF-8\n\/etc\/ssl\/certs\/ca-certificates\.crt\n$/);
    const minimal = await running(srv, alice, { image: 'loom/minimal' });
    t.equal((await exec(srv, alice, minimal.id, ['sh', '-c', 'test -x /bin/busybox && id -u'])).stdout, '1000\n', 'loom/minimal is the busybox image');

    // 3. Bad input and non-admins change nothing.
    const before = (await srv.api<{ count: number }>('GET', '/api/images', alice)).body.count;
    for (const [args, msg] of [
      [['image', 'build', `acme/x-${tag}:1`, '--packages', 'git,--include=evil'], /invalid package name "--include=evil"/],
      [['image', 'build', `acme/x-${tag}:1`, '--packages', 'git', '--suite', 'bookworm;rm'], /invalid suite/],
      [['image', 'build', '../../etc', '--packages', 'git'], /invalid image name/],
    ] as const) {
      const r = await loom([...args]);
      t.not(r.code, 0, args.join(' '));
      t.match(r.stderr, msg);
      t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
    }
    const notAdmin = await aliceCli(['image', 'build', `acme/x-${tag}:1`, '--packages', 'git']);
    t.not(notAdmin.code, 0);
    t.match(notAdmin.stderr, /needs a server admin/);
    t.equal((await aliceCli(['image', 'rm', 'loom/minimal'])).code !== 0, true, 'a member cannot remove images');
    t.equal((await aliceCli(['image', 'prune'])).code !== 0, true, 'a member cannot prune');
    t.equal((await srv.api<{ count: number }>('GET', '/api/images', alice)).body.count, before, 'no image was made or removed');

    // 4. A small image with two packages, built through the CLI, and a weaver on it.
    const name = `acme/two-${tag}:1`;
    const built = await loom(['image', 'build', name, '--packages', 'git,less', '--json'], { timeoutMs: 1_200_000 });
    t.equal(built.code, 0, built.stderr);
    const img = JSON.parse(built.stdout) as ImageView;
    t.equal(img.name, name);
    t.ok(img.size > 10_000_000, `size ${img.size}`);
    t.equal(built.stderr, '', 'quiet when piped');
    const w = await running(srv, alice, { image: name });
    const inW = await exec(srv, alice, w.id, ['sh', '-lc', 'git --version; command -v less; id -u; id -un; pwd; test -e /usr/bin/python3 && echo has-python || echo no-python']);
    t.equal(inW.exit_code, 0, inW.stderr);
    t.match(inW.stdout, /^git version [\d.]+\n\/usr\/bin\/less\n1000\nloom\n\/workspace\nno-python\n$/, 'git and less, uid 1000 (loom), cwd /workspace, nothing else asked');

    // 5. ls shows size and users; rm of an image in use is refused.
    const ls = JSON.parse((await loom(['image', 'ls', '--json'])).stdout) as ImageView[];
    const mine = ls.find((i) => i.name === name);
    t.ok(mine && mine.size > 0 && mine.in_use >= 1, 'size and users listed');
    t.ok(mine?.users?.some((u) => u.includes(w.id)), `an admin sees which weaver: ${JSON.stringify(mine?.users)}`);
    const aliceLs = JSON.parse((await aliceCli(['image', 'ls', '--json'])).stdout) as ImageView[];
    t.equal(aliceLs.find((i) => i.name === name)?.users, undefined, 'a member sees counts, not other weavers');
    const table = await loom(['image', 'ls']);
    t.match(table.stdout, /NAME\s+DIGEST\s+SIZE\s+USERS\s+SOURCE/);
    const rm = await loom(['image', 'rm', name]);
    t.not(rm.code, 0);
    t.match(rm.stderr, new RegExp(`image ${name.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} is in use by weaver ${w.id}`));
    const pruneInUse = JSON.parse((await loom(['image', 'prune', '--json'])).stdout) as { removed: string[]; kept_in_use: { name: string }[] };
    t.notOk(pruneInUse.removed.includes(name), 'prune keeps an image in use');
    t.ok(pruneInUse.kept_in_use.some((k) => k.name === name));
    t.ok((await srv.api<{ images: ImageView[] }>('GET', '/api/images', admin)).body.images.some((i) => i.name === name), 'still there');

    // 6. Once the weaver is gone, prune removes it, frees space and its unpacked tree.
    t.equal((await srv.api('DELETE', `/api/weaver/${w.id}`, alice)).status, 204);
    await waitUntil(async () => ((await srv.api<ImageView[] | { images: ImageView[] }>('GET', '/api/images', admin)).body as { images: ImageView[] }).images.find((i) => i.name === name)?.in_use === 0 || null, 'image unused', 60_000);
    const hex = img.digest.slice(7);
    const unpacked = () => readdirSync(join(dataDir, 'local/images/rootfs')).filter((d) => d.startsWith(hex));
    t.ok(unpacked().length > 0, 'the image was unpacked for the weaver');
    const pruned = await loom(['image', 'prune', '--json']);
    t.equal(pruned.code, 0, pruned.stderr);
    const pr = JSON.parse(pruned.stdout) as { removed: string[]; freed_bytes: number };
    t.ok(pr.removed.includes(name), 'prune removed the unused image');
    t.notOk(pr.removed.some((n) => n.startsWith('loom/')), 'the default images stay');
    t.ok(pr.freed_bytes > img.size, `freed ${pr.freed_bytes} bytes (layer blob and unpacked tree)`);
    t.same(unpacked(), [], 'the unpacked tree went with it');
    t.notOk(existsSync(join(dataDir, 'local/images/oci/blobs/sha256', hex)), 'its manifest blob was collected');
    const gone = await loom(['image', 'rm', name]);
    t.not(gone.code, 0);
    t.match(gone.stderr, /no image .* in the store/);

    // 7. A registry that does not answer: a clear error within the pull timeout.
    const blackhole = createServer(() => undefined); // accepts TCP, never speaks
    t.teardown(() => blackhole.close());
    await new Promise<void>((r) => blackhole.listen(0, '127.0.0.1', r));
    const port = (blackhole.address() as { port: number }).port;
    for (const id of [dev.id, minimal.id]) t.equal((await srv.api('DELETE', `/api/weaver/${id}`, alice)).status, 204);
    await srv.stop();
    const srv2 = await startServer({ t, dataDir: freshDataDir('loom-img-pull-'), env: { LOOM_IMAGE_PULL_TIMEOUT_SECS: '3' } });
    const admin2 = await srv2.token(`admin-${tag}`, true);
    const loom2 = loomCli(srv2, tempDir());
    await loom2(['login', '--token', admin2]);
    const pull = await loom2(['image', 'pull', `127.0.0.1:${port}/nothing/here:1`], { timeoutMs: 60_000 });
    t.not(pull.code, 0);
    t.match(pull.stderr, /timed out after 3 s/, 'the timeout is named');
    const refused = await loom2(['image', 'pull', 'localhost:1/nothing:1'], { timeoutMs: 60_000 });
    t.not(refused.code, 0);
    t.match(refused.stderr, /connection refused|connect/i, `a clear reason: ${refused.stderr}`);
    t.equal(refused.stderr.trim().split('\n').length, 1, 'one line');
  });
}
