// The packaging needs from package-lock.json only what it has: name (or the install path),
// version and integrity of every fetched entry; never `resolved` (the repository keeps registry
// URLs out of the lockfile). nix/npm-lock.nix is evaluated over the real lockfile, and
// nix/fetch-npm-tarball.sh (the fixed-output builder) is run against a stand-in registry.
import t from 'tap';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { CANNOT_RUN_HERE, REPO, nixEval, nixEvalError, nixJson, requireNix } from './nix.js';

t.comment(requireNix());
t.comment(CANNOT_RUN_HERE);

interface LockEntry { name?: string; version?: string; integrity?: string; resolved?: string; link?: boolean; inBundle?: boolean }
const lockText = readFileSync(join(REPO, 'package-lock.json'), 'utf8');
const lock = JSON.parse(lockText) as { packages: Record<string, LockEntry> };
const entriesOf = (packageLock: unknown) =>
  nixEval<Array<{ key: string; name: string; version: string; integrity: string; tarballPath: string; storeName: string }>>(
    `(import (REPO + "/nix/npm-lock.nix") { packageLock = ${packageLock}; }).entries`,
  );

t.test('the lockfile names no registry', async (t) => {
  t.equal((lockText.match(/"resolved"/g) ?? []).length, 0, 'grep -c \'"resolved"\' package-lock.json is 0');
  t.match(readFileSync(join(REPO, '.npmrc'), 'utf8'), /^omit-lockfile-registry-resolved=true$/m);
  for (const f of ['nix/npm-lock.nix', 'nix/npm-deps.nix', 'nix/fetch-npm-tarball.sh', 'nix/loom.nix', 'flake.nix']) {
    t.notMatch(readFileSync(join(REPO, f), 'utf8'), /https?:\/\/[a-z0-9-]+\.[a-z]/i, `${f}: no host`);
  }
});

t.test('every lockfile entry yields name, version, integrity and its tarball path', async (t) => {
  const fetched = Object.entries(lock.packages).filter(([k, p]) => k !== '' && !p.link && !p.inBundle);
  t.ok(fetched.length > 100, `${fetched.length} entries`);
  const entries = entriesOf(`(builtins.fromJSON (builtins.readFile (REPO + "/package-lock.json")))`);
  t.equal(entries.length, fetched.length);
  const byKey = new Map(entries.map((e) => [e.key, e]));
  for (const [key, p] of fetched) {
    const e = byKey.get(key)!;
    const name = p.name ?? key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length);
    const base = name.includes('/') ? name.split('/')[1] : name;
    t.same(
      { name: e.name, version: e.version, integrity: e.integrity, tarballPath: e.tarballPath },
      { name, version: p.version, integrity: p.integrity, tarballPath: `${name}/-/${base}-${p.version}.tgz` },
      key,
    );
    t.match(e.storeName, /^[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*\.tgz$/, `${key}: a valid store name`);
  }
});

t.test('an entry without a field packaging needs fails evaluation naming it', async (t) => {
  const base = { name: 'x', lockfileVersion: 3, packages: { '': { name: 'x' }, 'node_modules/a': { version: '1.0.0', integrity: 'sha512-AAAA' } } };
  t.equal(entriesOf(nixJson(base)).length, 1);
  const noIntegrity = structuredClone(base) as any;
  delete noIntegrity.packages['node_modules/a'].integrity;
  t.match(nixEvalError(`(import (REPO + "/nix/npm-lock.nix") { packageLock = ${nixJson(noIntegrity)}; }).entries`), /node_modules\/a has no `integrity`, which packaging needs/);
  const noVersion = structuredClone(base) as any;
  delete noVersion.packages['node_modules/a'].version;
  t.match(nixEvalError(`(import (REPO + "/nix/npm-lock.nix") { packageLock = ${nixJson(noVersion)}; }).entries`), /node_modules\/a has no `version`/);
  const git = structuredClone(base) as any;
  git.packages['node_modules/a'].version = 'git+ssh://example/x.git#abc';
  t.match(nixEvalError(`(import (REPO + "/nix/npm-lock.nix") { packageLock = ${nixJson(git)}; }).entries`), /is not a registry version/);
  const weird = structuredClone(base) as any;
  weird.packages['node_modules/a'].integrity = 'md5-xyz';
  t.match(nixEvalError(`(import (REPO + "/nix/npm-lock.nix") { packageLock = ${nixJson(weird)}; }).entries`), /is not a single SRI hash/);
  t.match(nixEvalError(`(import (REPO + "/nix/npm-lock.nix") { packageLock = { }; }).entries`), /has no `packages`/);
});

t.test('fetch-npm-tarball.sh fetches <registry>/<tarballPath> from the given registry or npm\'s configuration', async (t) => {
  // A stand-in registry: serves one tarball at the npm layout, 404 otherwise.
  const body = Buffer.from(`stand-in tarball ${Math.random()}`);
  const integrity = `sha512-${createHash('sha512').update(body).digest('base64')}`;
  const seen: string[] = [];
  const srv = createServer((req, res) => {
    seen.push(req.url ?? '');
    if (req.url === '/@loom-test/pkg/-/pkg-1.0.0.tgz') res.end(body);
    else { res.statusCode = 404; res.end('not found'); }
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => srv.close());
  const registry = `http://127.0.0.1:${(srv.address() as AddressInfo).port}/`;
  const dir = mkdtempSync(join(tmpdir(), 'loom-fetch-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));

  // Asynchronous: the stand-in registry answers from this process's event loop.
  const script = (env: Record<string, string>) =>
    new Promise<{ status: number | null; stderr: string }>((resolve, reject) => {
      const c = spawn('bash', [join(REPO, 'nix/fetch-npm-tarball.sh')], { cwd: dir, env: { PATH: process.env.PATH!, TMPDIR: dir, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      c.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      c.on('error', reject);
      c.on('close', (status) => resolve({ status, stderr }));
    });
  const run = async (env: Record<string, string>) => {
    const out = join(dir, `out-${Math.random()}`);
    const r = await script({ out, tarballPath: '@loom-test/pkg/-/pkg-1.0.0.tgz', ...env });
    let hash = '';
    try { hash = `sha512-${createHash('sha512').update(readFileSync(out)).digest('base64')}`; } catch { /* no file */ }
    return { ...r, hash };
  };

  const given = await run({ registry });
  t.equal(given.status, 0, given.stderr);
  t.equal(given.hash, integrity, 'the bytes the lockfile integrity names');
  const fromNpm = await run({ registry: '', npm_config_registry: registry.replace(/\/$/, '') });
  t.equal(fromNpm.status, 0, fromNpm.stderr);
  t.equal(fromNpm.hash, integrity, "registry from the builder's npm configuration (npm config get registry)");
  t.same(seen, ['/@loom-test/pkg/-/pkg-1.0.0.tgz', '/@loom-test/pkg/-/pkg-1.0.0.tgz']);

  const missing = await script({ out: join(dir, 'missing'), tarballPath: 'nope/-/nope-1.0.0.tgz', registry });
  t.not(missing.status, 0, 'a 404 fails the fetch');
  const bad = await script({ out: join(dir, 'bad'), tarballPath: 'x', registry: 'file:///etc' });
  t.not(bad.status, 0);
  t.match(bad.stderr, /is not an http\(s\) URL/);
});
