/**
 * The secrets API and CLI with bad input and the wrong people: every refusal is a clear error,
 * and nothing changes. The real server and the real `loom` CLI (weavers off: none are needed).
 */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, loomCli, tempDir } from '../support/server.js';

type Err = { error: { code: string; message: string } };
type List = { secrets: { id: string; name: string; current_version: number }[]; count: number };
const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

t.test('bad input and foreign targets are refused; nothing changes', async (t) => {
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_ENABLED: 'false' } });
  t.teardown(() => srv.stop());
  const alice = await srv.token('alice');
  const mallory = await srv.token('mallory');
  const orgOf = async (tok: string) => (await srv.api<{ orgs: { id: string }[] }>('GET', '/api/orgs', tok)).body.orgs[0]!.id;
  const org = await orgOf(alice);
  const malOrg = await orgOf(mallory);
  const ok = await srv.api<{ id: string }>('POST', '/api/secrets', alice, { name: 'GOOD', scope: 'org', org_id: org, value_b64: b64('v1') });
  t.equal(ok.status, 201);
  const snapshot = async () => JSON.stringify((await srv.api<List>('GET', '/api/secrets', alice)).body);
  const before = await snapshot();

  const cases: [string, Record<string, unknown>, number, string][] = [
    ['lower-case name', { name: 'lower', scope: 'org', org_id: org, value_b64: b64('x') }, 400, 'invalid_secret_name'],
    ['leading digit', { name: '1ABC', scope: 'org', org_id: org, value_b64: b64('x') }, 400, 'invalid_secret_name'],
    ['dash', { name: 'A-B', scope: 'org', org_id: org, value_b64: b64('x') }, 400, 'invalid_secret_name'],
    ['129 characters', { name: `A${'B'.repeat(128)}`, scope: 'org', org_id: org, value_b64: b64('x') }, 400, 'invalid_secret_name'],
    ['empty value', { name: 'EMPTY', scope: 'org', org_id: org, value_b64: '' }, 400, 'invalid_secret_value'],
    ['64 KiB + 1', { name: 'BIG', scope: 'org', org_id: org, value_b64: b64(Buffer.alloc(65537, 97)) }, 400, 'secret_too_large'],
    ['not base64', { name: 'X', scope: 'org', org_id: org, value_b64: 'a b' }, 400, 'invalid_request'],
    ['unknown scope', { name: 'X', scope: 'planet', org_id: org, value_b64: b64('x') }, 400, 'invalid_request'],
    ['unknown org', { name: 'X', scope: 'org', org_id: '00000000-0000-4000-8000-000000000000', value_b64: b64('x') }, 404, 'not_found'],
    ['another org', { name: 'X', scope: 'org', org_id: malOrg, value_b64: b64('x') }, 404, 'not_found'],
    ['another org (repo scope)', { name: 'X', scope: 'repo', org_id: malOrg, repo: 'https://github.com/a/b', value_b64: b64('x') }, 404, 'not_found'],
    ['unknown weaver', { name: 'X', scope: 'weaver', weaver_id: 'no-such-weaver', value_b64: b64('x') }, 404, 'not_found'],
    ['http repo', { name: 'X', scope: 'repo', org_id: org, repo: 'http://github.com/a/b', value_b64: b64('x') }, 400, 'invalid_repo'],
    ['repo with credentials', { name: 'X', scope: 'repo', org_id: org, repo: 'https://u:p@github.com/a/b', value_b64: b64('x') }, 400, 'invalid_repo'],
    ['org scope with a repo', { name: 'X', scope: 'org', org_id: org, repo: 'https://github.com/a/b', value_b64: b64('x') }, 400, 'bad_target'],
    ['repo scope without repo', { name: 'X', scope: 'repo', org_id: org, value_b64: b64('x') }, 400, 'target_required'],
    ['unknown field', { name: 'X', scope: 'org', org_id: org, value_b64: b64('x'), value: 'plain' }, 400, 'invalid_request'],
  ];
  for (const [what, body, status, code] of cases) {
    const r = await srv.api<Err>('POST', '/api/secrets', alice, body);
    t.equal(r.status, status, `${what}: ${status}`);
    t.equal(r.body.error?.code, code, `${what}: ${code} (${r.body.error?.message})`);
  }
  const dup = await srv.api<Err>('POST', '/api/secrets', alice, { name: 'GOOD', scope: 'org', org_id: org, value_b64: b64('x'), create_only: true });
  t.equal(dup.status, 409);
  t.equal((await srv.api('POST', `/api/secrets/${ok.body.id}/rotate`, mallory, { value_b64: b64('x') })).status, 404, 'another org cannot rotate');
  t.equal((await srv.api('GET', `/api/secrets/${ok.body.id}/versions`, mallory)).status, 404);
  t.equal((await srv.api('GET', `/api/secrets/log?org_id=${org}`, mallory)).status, 404);
  t.equal((await srv.api('POST', `/api/secrets/${ok.body.id}/rotate`, alice, { value_b64: '' })).status, 400);
  t.equal((await srv.api('GET', '/api/secrets', null)).status, 401);
  t.equal(await snapshot(), before, 'nothing changed');

  // No user route returns a value, in any form.
  const all = [await srv.api('GET', '/api/secrets', alice), await srv.api('GET', `/api/secrets/${ok.body.id}`, alice), await srv.api('GET', `/api/secrets/${ok.body.id}/versions`, alice), ok];
  for (const r of all) t.notOk(JSON.stringify(r.body).includes('v1') || JSON.stringify(r.body).includes(b64('v1')), 'no value in answers');

  // The CLI: one line, non-zero, nothing changed.
  const dir = tempDir();
  const loom = loomCli(srv, dir);
  await loom(['login', '--token', alice]);
  const cli: [string[], string | undefined, RegExp][] = [
    [['secret', 'set', 'API_KEY', 'sk-live-123', '--org', org], undefined, /never taken as an argument \(it would show in `ps`.*pipe it on stdin/],
    [['secret', 'set', 'API_KEY=sk-live-123', '--org', org], undefined, /not NAME=VALUE.*never taken as an argument/],
    [['secret', 'set', 'lower', '--org', org], 'x', /invalid secret name/],
    [['secret', 'set', 'API_KEY', '--org', org], '', /value is empty/],
    [['secret', 'set', 'API_KEY'], 'x', /give the scope/],
    [['secret', 'set', 'API_KEY', '--org', 'no-such-org'], 'x', /org "no-such-org" not found/],
    [['secret', 'set', 'API_KEY', '--org', org, '--from-file', join(dir, 'missing')], undefined, /cannot read .*missing: ENOENT/],
    [['secret', 'rotate', 'NOPE', '--org', org], 'x', /secret NOPE not found/],
    [['secret', 'set', 'API_KEY', '--repo', 'http://x/y', '--org', org], 'x', /--repo must be an https URL/],
  ];
  for (const [args, input, re] of cli) {
    const r = await loom(args, input === undefined ? {} : { input });
    t.not(r.code, 0, args.join(' '));
    t.match(r.stderr, re, args.join(' '));
    t.equal(r.stderr.trim().split('\n').length, 1, 'one line');
  }
  t.equal(await snapshot(), before, 'nothing changed by the CLI either');

  // --from-file keeps the exact bytes (a trailing newline included); stdin drops one.
  const f = join(dir, 'value');
  writeFileSync(f, 'line\n');
  let r = await loom(['secret', 'set', 'FROM_FILE', '--org', org, '--from-file', f, '--json']);
  t.equal(r.code, 0, r.stderr);
  const id = (JSON.parse(r.stdout) as { id: string }).id;
  const v = await srv.api<{ versions: { size: number }[] }>('GET', `/api/secrets/${id}/versions`, alice);
  t.equal(v.body.versions[0]!.size, 5);
  r = await loom(['secret', 'rotate', 'FROM_FILE', '--org', org, '--json'], { input: 'line\n' });
  t.equal(r.code, 0, r.stderr);
  const v2 = await srv.api<{ versions: { size: number; current: boolean }[] }>('GET', `/api/secrets/${id}/versions`, alice);
  t.same(v2.body.versions.map((x) => [x.size, x.current]), [[5, false], [4, true]]);
  r = await loom(['secret', 'rm', 'FROM_FILE', '--org', org]);
  t.equal(r.code, 0, r.stderr);
  t.equal((await srv.api('GET', `/api/secrets/${id}`, alice)).status, 404, 'removed');
});
