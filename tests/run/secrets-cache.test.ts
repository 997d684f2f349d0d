/** Secrets (env, KeePass, 1Password absent), redaction everywhere on disk, and the local cache. */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as kdbxNs from 'kdbxweb';
import { cleanup, loom, makeRepo, readEvents, readJson, receiptOf, workspaceOf } from './helpers.js';

const kdbxweb = ((kdbxNs as unknown as { default?: typeof kdbxNs }).default ?? kdbxNs) as typeof kdbxNs;
const tmp: string[] = [];
t.teardown(() => cleanup(tmp));
const track = (r: { stdout: string }) => {
  const m = /^isolated workspace: (.+)$/m.exec(r.stdout);
  if (m) tmp.push(m[1]!);
};

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, d.name);
    if (d.isDirectory()) out.push(...filesUnder(p));
    else if (d.isFile()) out.push(p);
  }
  return out;
}

t.test('secrets resolve, reach the job, and are redacted in every log, summary and receipt', async (t) => {
  // A KeePass database made by the same library the runner reads it with (KDBX 4, Argon2).
  const kdir = mkdtempSync(join(tmpdir(), 'loom-run-kdbx-'));
  tmp.push(kdir);
  const db = kdbxweb.Kdbx.create(new kdbxweb.Credentials(kdbxweb.ProtectedValue.fromString('db pass')), 'test');
  const group = db.createGroup(db.getDefaultGroup(), 'ci');
  const entry = db.createEntry(group);
  entry.fields.set('Title', 'deploy');
  entry.fields.set('Password', kdbxweb.ProtectedValue.fromString('kp-Secret-9981'));
  const argon2 = (await import('argon2')).default;
  kdbxweb.CryptoEngine.setArgon2Impl(async (password, salt, memory, iterations, length, parallelism, type, version) => {
    const raw = await argon2.hash(Buffer.from(password), { salt: Buffer.from(salt), raw: true, memoryCost: memory, timeCost: iterations, hashLength: length, parallelism, type: type as 0 | 1 | 2, version });
    return raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength) as ArrayBuffer;
  });
  writeFileSync(join(kdir, 'vault.kdbx'), Buffer.from(await db.save()));

  const ENV_VALUE = 'env secret with spaces';
  const repo = makeRepo({
    '.loom/workflow.yml': [
      'version: "v1"',
      'stages: [s]',
      'leak:',
      '  stage: s',
      '  secrets:',
      '    API_TOKEN: {ref: "env://HOST_API_TOKEN", file: false}',
      '    KP_PASS: {ref: "keepass://team#deploy:Password"}',
      '    OPTIONAL: {ref: "env://NOT_SET_ANYWHERE", required: false}',
      '  script:',
      // one byte per write(2): printf is a builtin, each call writes once to the pipe
      '    - v="$API_TOKEN"; while [ -n "$v" ]; do rest="${v#?}"; printf "%s" "${v%"$rest"}"; v="$rest"; done; echo',
      '    - stat -c %a "$KP_PASS"; cat "$KP_PASS"; echo; cat "$KP_PASS" >&2',
      '    - echo "optional=${OPTIONAL:-unset}"',
      '    - echo "$API_TOKEN" > token-copy.txt',
      '    - echo "failing with $API_TOKEN" >&2; exit 3',
      '',
    ].join('\n'),
  }, tmp);
  const env = { HOST_API_TOKEN: ENV_VALUE, LOOM_KEEPASS_TEAM_DB: join(kdir, 'vault.kdbx'), LOOM_KEEPASS_TEAM_PASSWORD: 'db pass' };
  const r = await loom(['run', '--local', '--stream', '-v'], repo, env);
  track(r);
  t.equal(r.code, 1, r.stderr);
  const receipt = receiptOf(r);
  const step = (n: string, s: string) => readEvents(join(receipt.logs_dir, `jobs/leak/user/execution/script/${n}/events.jsonl`)).filter((e) => e.stream === s).map((e) => e.message);
  t.same(step('01', 'stdout'), ['[REDACTED:SECRET_API_TOKEN]']);
  t.same(step('02', 'stdout'), ['600', '[REDACTED:SECRET_KP_PASS]']);
  t.same(step('02', 'stderr'), ['[REDACTED:SECRET_KP_PASS]']);
  t.same(step('03', 'stdout'), ['optional=unset']);
  t.same(step('05', 'stderr'), ['failing with [REDACTED:SECRET_API_TOKEN]']);
  t.match(r.stdout, /\[leak\] \[REDACTED:SECRET_API_TOKEN\]/);
  // The job really had the values: a file it wrote in the workspace holds it (the workspace is the job's).
  t.equal(readFileSync(join(receipt.snapshot_path, 'token-copy.txt'), 'utf8'), `${ENV_VALUE}\n`);
  // No value in any log, summary, manifest, phase report or receipt, nor on the terminal.
  const runtime = join(receipt.snapshot_path, '.loom/.runtime');
  for (const f of filesUnder(runtime)) {
    const text = readFileSync(f, 'utf8');
    t.notOk(text.includes(ENV_VALUE) || text.includes('kp-Secret-9981'), `no secret in ${f.slice(runtime.length)}`);
  }
  t.notOk((r.stdout + r.stderr).includes(ENV_VALUE) || (r.stdout + r.stderr).includes('kp-Secret-9981'));
  // The 0600 secret files are gone after the job.
  t.same(readdirSync(tmpdir()).filter((d) => d.startsWith(`loom-run-secrets-${receipt.logs_dir.split('/').pop()}`)), []);
});

t.test('secret error codes', async (t) => {
  const wf = (ref: string, extra = '') => ['version: "v1"', 'stages: [s]', 'j:', '  stage: s', extra, '  secrets:', `    S: {ref: "${ref}"}`, '  script: ["echo ran"]', ''].join('\n');
  const cases: [string, string, Record<string, string>, string][] = [
    ['missing env', wf('env://LOOM_TEST_SURELY_UNSET'), {}, 'SECRETS_REF_NOT_FOUND'],
    ['empty env', wf('env://LOOM_TEST_EMPTY'), { LOOM_TEST_EMPTY: '' }, 'SECRETS_REQUIRED_MISSING'],
    ['1password without op', wf('op://vault/item/field'), { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, 'SECRETS_PROVIDER_UNAVAILABLE'],
    ['unconfigured keepass alias', wf('keepass://nowhere#e:Password'), {}, 'SECRETS_PROVIDER_UNAVAILABLE'],
    ['debug trace', wf('env://HOME', '  variables: {CI_DEBUG_TRACE: "true"}'), {}, 'SECRETS_UNSAFE_DEBUG_TRACE'],
  ];
  if (existsSync('/usr/bin/op') || existsSync('/usr/local/bin/op')) cases.splice(2, 1);
  for (const [name, text, env, code] of cases) {
    const repo = makeRepo({ '.loom/workflow.yml': text }, tmp);
    const r = await loom(['run', '--local'], repo, env);
    track(r);
    t.equal(r.code, 1, name);
    const receipt = receiptOf(r);
    t.match(String(receipt.error), code, `${name}: receipt error`);
    t.match(readJson(join(receipt.logs_dir, 'jobs/j/summary.json')), { status: 'failure', error: new RegExp(code) }, name);
    t.notOk(existsSync(join(receipt.logs_dir, 'jobs/j/user/execution/script/01')), `${name}: no step ran`);
  }
});

t.test('cache: a miss saves, the next run hits; fallback keys; policy pull does not save', async (t) => {
  const cacheHome = mkdtempSync(join(tmpdir(), 'loom-run-cachehome-'));
  tmp.push(cacheHome);
  const repo = makeRepo({
    'lock.txt': 'deps v1\n',
    '.loom/workflow.yml': [
      'version: "v1"',
      'stages: [s]',
      'deps:',
      '  stage: s',
      '  cache:',
      '    key: {prefix: deps, files: [lock.txt]}',
      '    fallback_keys: [deps-fallback-$job_name]',
      '    paths: [vendor/]',
      '  script:',
      '    - if [ -f vendor/lib.txt ]; then echo "HIT $(cat vendor/lib.txt)"; else echo MISS; mkdir -p vendor; echo "built at $LOOM_RUN_ID" > vendor/lib.txt; fi',
      '',
    ].join('\n'),
  }, tmp);
  const env = { XDG_CACHE_HOME: cacheHome };
  const out = (r: Awaited<ReturnType<typeof loom>>) => readEvents(join(receiptOf(r).logs_dir, 'jobs/deps/user/execution/script/01/events.jsonl')).filter((e) => e.stream === 'stdout').map((e) => String(e.message));
  const first = await loom(['run', '--local'], repo, env);
  track(first);
  t.equal(first.code, 0, first.stderr);
  t.same(out(first), ['MISS']);
  const store = join(cacheHome, 'loom/run-cache');
  const archives = readdirSync(store);
  t.equal(archives.length, 1);
  t.match(archives[0], /^deps-[0-9a-f]{64}\.tar\.zst$/);
  t.equal(execFileSync('zstd', ['-t', join(store, archives[0]!)], { stdio: 'pipe' }).length >= 0, true);
  const firstRun = receiptOf(first).logs_dir.split('/').pop();
  t.ok(readEvents(join(receiptOf(first).logs_dir, 'jobs/deps/system/cache_save/events.jsonl')).some((e) => /saved under key deps-/.test(String(e.message))));

  const second = await loom(['run', '--local'], repo, env);
  track(second);
  t.equal(second.code, 0, second.stderr);
  t.same(out(second), [`HIT built at ${firstRun}`]);
  t.ok(readEvents(join(receiptOf(second).logs_dir, 'jobs/deps/system/cache_restore/events.jsonl')).some((e) => /restored from key deps-/.test(String(e.message))));

  // A changed lock file changes the key: a miss, unless a fallback key exists.
  writeFileSync(join(repo, 'lock.txt'), 'deps v2\n');
  execFileSync('cp', [join(store, archives[0]!), join(store, 'deps-fallback-deps.tar.zst')]);
  const third = await loom(['run', '--local'], repo, env);
  track(third);
  t.same(out(third), [`HIT built at ${firstRun}`]);
  t.ok(readEvents(join(receiptOf(third).logs_dir, 'jobs/deps/system/cache_restore/events.jsonl')).some((e) => /\(fallback\)/.test(String(e.message))));
  t.equal(readdirSync(store).length, 3, 'the new key was saved');
  t.ok(statSync(join(store, archives[0]!)).isFile());
});
