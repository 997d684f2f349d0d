/** `loom check`: every problem of a bad workflow at once, each with file:line:column. */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cleanup, loom, makeRepo } from './helpers.js';
import { StreamRedactor, Redactor } from '../../src/run/redact.js';

const tmp: string[] = [];
t.teardown(() => cleanup(tmp));

const BAD = [
  'version: "v1"', //                                  1
  'stages: [build, build, Bad]', //                    2
  'variables:', //                                     3
  '  lower_case: "x"', //                              4
  '  NUM: 5', //                                       5
  'colour: blue', //                                   6
  'Job_Caps:', //                                      7
  '  stage: build', //                                 8
  'default:', //                                       9
  '  secrets: {}', //                                  10
  'workflow:', //                                      11
  '  rules:', //                                       12
  '    - if: $A == ', //                               13
  'job-a:', //                                         14
  '  stage: nowhere', //                               15
  '  scritp: [x]', //                                  16
  '  script: "not a list"', //                         17
  '  cache:', //                                       18
  '    key: k', //                                     19
  '    paths: [../outside]', //                        20
  '    policy: sometimes', //                          21
  '    colour: red', //                                22
  '  secrets:', //                                     23
  '    TOKEN: {ref: "vault://x"}', //                  24
  '  extends: .missing', //                            25
  'job-b:', //                                         26
  '  stage: build', //                                 27
  '  variables: {DUP: "1"}', //                        28
  '  secrets: {DUP: {ref: "env://X"}}', //             29
  '  script: ["echo a\\nb"]', //                       30
  '  artifacts: {paths: [/etc/passwd]}', //            31
  '  include: x', //                                   32
  '',
].join('\n');

t.test('all problems, each located', async (t) => {
  const repo = makeRepo({ '.loom/workflow.yml': BAD }, tmp);
  const r = await loom(['check'], repo);
  t.equal(r.code, 1);
  const expected: [number, number, RegExp][] = [
    [2, 17, /stage "build" listed twice/],
    [2, 24, /bad stage name "Bad"/],
    [4, 3, /bad variable name "lower_case"/],
    [5, 8, /variable NUM .*must be a string/],
    [6, 9, /job colour must be a mapping/],
    [7, 1, /bad job name "Job_Caps"/],
    [10, 3, /default.secrets is not allowed/],
    [13, 11, /rule if: unexpected end of expression/],
    [14, 1, /job job-a has no script/],
    [14, 1, /job job-a: stage "nowhere" is not listed in stages/],
    [16, 3, /unknown key "scritp" in job job-a/],
    [17, 11, /job-a.script must be a list of strings/],
    [20, 12, /"..\/outside" must be a relative path/],
    [21, 13, /policy must be pull, push or pull-push/],
    [22, 5, /unknown key "colour" in job job-a.cache/],
    [24, 18, /SECRETS_REF_INVALID/],
    [25, 12, /extends unknown ".missing"/],
    [29, 12, /"DUP" is both a variable and a secret/],
    [30, 12, /spans several lines/],
    [31, 22, /must be a relative path inside the workspace/],
    [32, 3, /unknown key "include" in job job-b/],
  ];
  const lines = r.stderr.trim().split('\n');
  for (const [line, col, re] of expected) {
    t.ok(lines.some((l) => l.startsWith(`.loom/workflow.yml:${line}:${col}: `) && re.test(l)), `${line}:${col} ${re.source}`);
  }
  t.equal(lines.length, expected.length, `exactly the expected problems:\n${r.stderr}`);

  const json = await loom(['check', '--json'], repo);
  t.equal(json.code, 1);
  const doc = JSON.parse(json.stdout) as { valid: boolean; problems: { line: number; column: number; file: string }[] };
  t.equal(doc.valid, false);
  t.equal(doc.problems.length, expected.length);
});

t.test('root problems, YAML syntax, include problems', async (t) => {
  const repo = makeRepo({ '.loom/workflow.yml': 'stages: []\n', 'ci/inc.yml': 'version: "v1"\nj:\n  stage: a\n  script: [true]\n  bogus: 1\n' }, tmp);
  let r = await loom(['check'], repo);
  t.equal(r.code, 1);
  t.match(r.stderr, /\.loom\/workflow\.yml:1:1: missing required key "version"/);
  t.match(r.stderr, /\.loom\/workflow\.yml:1:9: stages must not be empty/);

  writeFileSync(join(repo, '.loom/workflow.yml'), 'version: "v1"\nstages: [a\n');
  r = await loom(['check'], repo);
  t.equal(r.code, 1);
  t.match(r.stderr, /^\.loom\/workflow\.yml:\d+:\d+: YAML: /m);

  writeFileSync(join(repo, '.loom/workflow.yml'), 'version: "v1"\nstages: [a]\ninclude:\n  - local: ci/inc.yml\n  - local: ../../etc/passwd\n  - local: nope.yml\n');
  r = await loom(['check'], repo);
  t.equal(r.code, 1);
  t.match(r.stderr, /\.loom\/workflow\.yml:4:12: included file ci\/inc.yml must not set version or stages/);
  t.match(r.stderr, /\.loom\/workflow\.yml:5:12: include.local "..\/..\/etc\/passwd" must be a relative path inside the repository/);
  t.match(r.stderr, /\.loom\/workflow\.yml:6:12: include.local "nope.yml": no such file/);
  t.match(r.stderr, /ci\/inc\.yml:5:3: unknown key "bogus" in job j/);

  writeFileSync(join(repo, '.loom/workflow.yml'), 'version: "v1"\nstages: [a]\nj:\n  stage: a\n  extends: .t\n  script: [true]\n.t:\n  extends: j\n');
  r = await loom(['check'], repo);
  t.equal(r.code, 1);
  t.match(r.stderr, /extends cycle/);

  writeFileSync(join(repo, '.loom/workflow.yml'), 'version: "v1"\nstages: [a]\n.t:\n  stage: a\nj:\n  extends: .t\n  script: ["true"]\n');
  r = await loom(['check'], repo);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /valid \(1 job in 1 stage\)/);
});

t.test('the streaming redactor catches a value split anywhere across writes', async (t) => {
  const r = new Redactor();
  r.add('TOKEN', 's3cr3t value');
  r.add('SHORT', 'ab');
  const text = 'x s3cr3t value y ab s3cr3t valu z s3cr3t value';
  for (const size of [1, 2, 3, 5, 7, 100]) {
    const f = new StreamRedactor(r);
    let out = '';
    for (let i = 0; i < text.length; i += size) out += f.write(Buffer.from(text.slice(i, i + size)));
    out += f.end();
    t.equal(out, 'x [REDACTED:SECRET_TOKEN] y [REDACTED:SECRET_SHORT] s3cr3t valu z [REDACTED:SECRET_TOKEN]', `chunks of ${size}`);
  }
});
