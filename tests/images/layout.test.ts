// The image writer of `loom image build` is deterministic: the same tree gives the same digest
// whatever the files' atimes/ctimes, later mtimes (clamped to SOURCE_DATE_EPOCH) or the tar's pid;
// a changed file gives another digest. And the request checks refuse option-like input.
import t from 'tap';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, utimesSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeLayout, validateBuild, isAptSourceLine } from '../../src/images/build.js';

const dir = mkdtempSync(join(tmpdir(), 'loom-layout-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const cfg = { cmd: ['/bin/sh', '-l'], env: ['LANG=C.UTF-8'], workingDir: '/workspace', user: '1000:1000', history: 'test' };
const digestOf = (layout: string) => (JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] }).manifests[0]!.digest;

t.test('same tree, same digest; changed content, another', async (t) => {
  const root = join(dir, 'rootfs');
  mkdirSync(join(root, 'etc'), { recursive: true });
  mkdirSync(join(root, 'workspace'));
  writeFileSync(join(root, 'etc/hello'), 'hi\n');
  chmodSync(join(root, 'etc/hello'), 0o644);
  await writeLayout(root, join(dir, 'a'), 1704067200, cfg);
  // Touch everything: new atimes, ctimes and mtimes later than the epoch.
  const now = new Date();
  for (const p of ['', 'etc', 'etc/hello', 'workspace']) utimesSync(join(root, p), now, now);
  await writeLayout(root, join(dir, 'b'), 1704067200, cfg);
  t.equal(digestOf(join(dir, 'b')), digestOf(join(dir, 'a')), 'rebuilt later: same digest');
  writeFileSync(join(root, 'etc/hello'), 'hello\n');
  await writeLayout(root, join(dir, 'c'), 1704067200, cfg);
  t.not(digestOf(join(dir, 'c')), digestOf(join(dir, 'a')), 'content changed: another digest');
});

t.test('request checks', async (t) => {
  const ok = { name: 'x:1', suite: 'bookworm', packages: ['git', 'g++', 'libc6-dev', 'python3.11'] };
  t.doesNotThrow(() => validateBuild(ok));
  for (const bad of [
    { ...ok, suite: '--variant=extract' },
    { ...ok, suite: 'bookworm main' },
    { ...ok, packages: ['--include=x'] },
    { ...ok, packages: ['git,curl'] },
    { ...ok, packages: ['Git'] },
    { ...ok, packages: ['git;rm'] },
    { ...ok, packages: Array.from({ length: 201 }, (_, i) => `p${i}`) },
    { ...ok, sourceDateEpoch: -1 },
  ]) {
    t.throws(() => validateBuild(bad), { status: 400 } as unknown as Error, JSON.stringify(bad).slice(0, 80));
  }
  t.ok(isAptSourceLine('deb http://deb.debian.org/debian-security bookworm-security main'));
  t.ok(isAptSourceLine('deb [signed-by=/usr/share/keyrings/x.gpg] https://apt.example.com/debian bookworm main contrib'));
  t.notOk(isAptSourceLine('--aptopt=x'));
  t.notOk(isAptSourceLine('deb bookworm main'));
});
