/** `loom run --local` on the host provider: the isolated workspace, a multi-stage pipeline, logs and receipts. */
import t from 'tap';
import { mkdtempSync, existsSync, lstatSync, readFileSync, readlinkSync, readdirSync, symlinkSync, unlinkSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { cleanup, loom, makeRepo, readEvents, readJson, receiptOf, sh, workspaceOf, writeFiles } from './helpers.js';

const tmp: string[] = [];
t.teardown(() => cleanup(tmp));
const track = (r: { stdout: string }) => {
  const m = /^isolated workspace: (.+)$/m.exec(r.stdout);
  if (m) tmp.push(m[1]!);
};

t.test('the workspace holds HEAD plus the working tree state, minus ignored files', async (t) => {
  const repo = makeRepo({
    '.gitignore': '.env.local\nbuild/\n',
    'modified.txt': 'old\n',
    'staged.txt': 'old\n',
    'rename-me.txt': 'moving\n',
    'delete-me.txt': 'bye\n',
    'unchanged.txt': 'same\n',
    'becomes-fifo': 'regular at HEAD\n',
    'run.sh': '#!/bin/sh\necho run\n',
    '.loom/workflow.yml': [
      'version: "v1"',
      'stages: [check]',
      'needs-env:',
      '  stage: check',
      '  script:',
      '    - test -f .env.local',
      '    - cat .env.local',
      '',
    ].join('\n'),
  }, tmp);
  sh(repo, 'chmod +x run.sh && git add run.sh && git commit -qm exec');
  writeFileSync(join(repo, 'modified.txt'), 'new working tree\n');
  writeFileSync(join(repo, 'staged.txt'), 'staged\n');
  sh(repo, 'git add staged.txt');
  sh(repo, 'git mv rename-me.txt renamed.txt');
  unlinkSync(join(repo, 'delete-me.txt'));
  writeFiles(repo, { 'new/untracked.txt': 'untracked\n', '.env.local': 'SECRET_CONFIG=1\n', 'build/out.o': 'obj\n' });
  symlinkSync('unchanged.txt', join(repo, 'link-to-unchanged'));
  symlinkSync('/nonexistent/target', join(repo, 'dangling-link'));
  // git never lists an untracked special file; a tracked file replaced by one is reported and skipped.
  sh(repo, 'mkfifo a-fifo && rm becomes-fifo && mkfifo becomes-fifo');

  // The job passes in the checkout (the ignored file is there)…
  t.equal(sh(repo, 'test -f .env.local && cat .env.local'), 'SECRET_CONFIG=1\n');
  // …and fails in the isolated workspace, which does not have it.
  const r = await loom(['run', '--local'], repo);
  track(r);
  t.equal(r.code, 1, r.stderr);
  const ws = workspaceOf(r);
  t.ok(ws.startsWith(join(process.env['TMPDIR'] ?? '/tmp', 'loom-run-local-')), ws);
  t.match(r.stderr, /skipped becomes-fifo: special files/);

  t.equal(sh(ws, 'git rev-parse HEAD'), sh(repo, 'git rev-parse HEAD'));
  t.equal(sh(ws, 'git symbolic-ref -q HEAD || echo detached'), 'detached\n');
  // Objects are borrowed, not copied.
  t.equal(readFileSync(join(ws, '.git/objects/info/alternates'), 'utf8').trim(), join(repo, '.git/objects'));
  t.equal(readdirSync(join(ws, '.git/objects')).filter((d) => /^[0-9a-f]{2}$/.test(d)).length, 0);

  t.equal(readFileSync(join(ws, 'modified.txt'), 'utf8'), 'new working tree\n');
  t.equal(readFileSync(join(ws, 'staged.txt'), 'utf8'), 'staged\n');
  t.equal(readFileSync(join(ws, 'renamed.txt'), 'utf8'), 'moving\n');
  t.notOk(existsSync(join(ws, 'rename-me.txt')), 'rename source gone');
  t.notOk(existsSync(join(ws, 'delete-me.txt')), 'deleted file gone');
  t.equal(readFileSync(join(ws, 'new/untracked.txt'), 'utf8'), 'untracked\n');
  t.equal(readFileSync(join(ws, 'unchanged.txt'), 'utf8'), 'same\n');
  t.equal(lstatSync(join(ws, 'run.sh')).mode & 0o111, 0o111, 'exec bit kept');
  t.notOk(existsSync(join(ws, '.env.local')), 'ignored file excluded');
  t.notOk(existsSync(join(ws, 'build')), 'ignored directory excluded');
  t.notOk(existsSync(join(ws, 'a-fifo')), 'untracked fifo absent');
  t.equal(readFileSync(join(ws, 'becomes-fifo'), 'utf8'), 'regular at HEAD\n', 'a skipped special file leaves the HEAD version');
  t.ok(lstatSync(join(ws, 'link-to-unchanged')).isSymbolicLink());
  t.equal(readlinkSync(join(ws, 'link-to-unchanged')), 'unchanged.txt');
  t.equal(readlinkSync(join(ws, 'dangling-link')), '/nonexistent/target');
  // The checkout is untouched.
  t.equal(sh(repo, 'git status --porcelain --untracked-files=all | sort'), sh(repo, 'git status --porcelain --untracked-files=all | sort'));
  t.ok(existsSync(join(repo, '.env.local')));
  t.notOk(existsSync(join(repo, '.loom/.runtime')), 'nothing written into the checkout');

  const receipt = receiptOf(r);
  t.equal(receipt.snapshot_path, ws);
  const failing = readJson<{ failing_step: string; failing_step_events_path: string }>(join(receipt.logs_dir, 'jobs/needs-env/manifest.json'));
  t.equal(failing.failing_step, '01');
});

t.test('a link in HEAD that became a directory cannot lead a copy out of the workspace', async (t) => {
  const outside = mkdtempSync(join(tmpdir(), 'loom-run-outside-'));
  tmp.push(outside);
  const repo = makeRepo({ '.loom/workflow.yml': 'version: "v1"\nstages: [a]\nj:\n  stage: a\n  script: ["true"]\n' }, tmp);
  symlinkSync(outside, join(repo, 'evil'));
  writeFileSync(join(outside, 'victim.txt'), 'keep me\n');
  sh(repo, 'git add evil && git commit -qm link && rm evil && mkdir evil && echo planted > evil/victim.txt');
  const r = await loom(['run', '--local'], repo);
  track(r);
  t.equal(r.code, 0, r.stderr);
  const ws = workspaceOf(r);
  t.equal(readFileSync(join(outside, 'victim.txt'), 'utf8'), 'keep me\n', 'nothing written through the link');
  t.ok(lstatSync(join(ws, 'evil')).isDirectory());
  t.equal(readFileSync(join(ws, 'evil/victim.txt'), 'utf8'), 'planted\n');
});

t.test('a multi-stage pipeline with a failing job: receipt, manifests, failing pointers, events', async (t) => {
  const repo = makeRepo({
    '.loom/workflow.yml': [
      'version: "v1"',
      'stages: [build, test, deploy]',
      'variables:',
      '  WHO: "workflow"',
      '  LEVEL: "workflow"',
      'default:',
      '  variables:',
      '    FROM_DEFAULT: "yes"',
      'include:',
      '  - local: ci/extra.yml',
      '.base:',
      '  variables:',
      '    LEVEL: "template"',
      'compile:',
      '  stage: build',
      '  extends: .base',
      '  artifacts:',
      '    paths: [out/result.txt]',
      '  script:',
      '    - mkdir -p out && echo "$WHO $LEVEL $FROM_DEFAULT $LOOM_JOB_NAME $CI_JOB_STAGE $LOOM_PROVIDER" > out/result.txt',
      '    - cat out/result.txt',
      'unit:',
      '  stage: test',
      '  script:',
      '    - echo first step ok',
      '    - echo about to fail >&2; exit 7',
      '    - echo never runs',
      'ship:',
      '  stage: deploy',
      '  script:',
      '    - echo shipping',
      '',
    ].join('\n'),
    'ci/extra.yml': ['lint:', '  stage: test', '  variables:', '    LEVEL: "job"', '  script:', '    - echo "lint $LEVEL"', ''].join('\n'),
  }, tmp);
  const r = await loom(['run', '--local'], repo);
  track(r);
  t.equal(r.code, 1, 'a failed job fails the run');
  const receipt = receiptOf(r);
  t.match(receipt, {
    schema_version: 'v1', kind: 'loom-run-local', status: 'failure', exit_code: 1, repo_root: repo,
    command: ['loom', 'run', '--local'], snapshot_head_sha: sh(repo, 'git rev-parse HEAD').trim(),
  });
  t.equal(receipt.workflow_path, join(receipt.snapshot_path, '.loom/workflow.yml'));
  t.match(String(receipt.error), /job unit failed/);
  const runId = receipt.logs_dir.split('/').pop()!;
  t.match(r.stdout.trim().split('\n').pop(), new RegExp(`receipts/loom-run-local-${runId}\\.json$`));
  t.ok(Date.parse(String(receipt.finished_at)) >= Date.parse(String(receipt.started_at)));
  for (const k of ['events_jsonl_path', 'phase_report_path', 'logs_dir']) t.ok(existsSync(String(receipt[k])), k);

  const logs = receipt.logs_dir;
  t.match(readJson(join(logs, 'summary.json')), { kind: 'loom-run-local-logs', run_id: runId, status: 'failure' });
  t.match(readJson(join(logs, 'pipeline/summary.json')), { schema_version: 'v1', run_id: runId, status: 'failure', exit_code: 1, jobs: { compile: 'success', unit: 'failure', lint: 'success', ship: 'skipped' } });
  const pm = readJson<{ failing_job_id: string; failing_job_manifest_path: string; jobs: { job_id: string; status: string }[] }>(join(logs, 'pipeline/manifest.json'));
  t.equal(pm.failing_job_id, 'unit');
  t.equal(pm.failing_job_manifest_path, join(logs, 'jobs/unit/manifest.json'));
  t.same(pm.jobs.map((j) => `${j.job_id}:${j.status}`), ['compile:success', 'lint:success', 'unit:failure', 'ship:skipped']);

  const jm = readJson<{ failing_step: string; failing_step_events_path: string; failing_step_summary_path: string; steps: { status: string }[] }>(pm.failing_job_manifest_path);
  t.equal(jm.failing_step, '02');
  t.same(jm.steps.map((s) => s.status), ['success', 'failure', 'skipped']);
  t.match(readJson(jm.failing_step_summary_path), { step: '02', exit_code: 7, status: 'failure' });
  const stepEvents = readEvents(jm.failing_step_events_path);
  t.ok(stepEvents.some((e) => e.stream === 'stderr' && e.message === 'about to fail'), 'the failing output is one hop from the manifest');
  for (const e of stepEvents) {
    t.ok(!Number.isNaN(Date.parse(String(e.ts))), 'timestamped');
    t.match(e, { run_id: runId, job_id: 'unit', step: '02', phase_code: 'job.execution', phase_family: 'job' });
  }
  t.notOk(existsSync(join(logs, 'jobs/unit/user/execution/script/03')), 'no step after the failure');
  t.notOk(existsSync(join(logs, 'jobs/ship')), 'a later stage does not run');

  // Variables: predefined < workflow < default < template (extends) < job; include merged.
  t.equal(readFileSync(join(receipt.snapshot_path, 'out/result.txt'), 'utf8'), 'workflow template yes compile build host\n');
  t.equal(readFileSync(join(logs, 'jobs/compile/artifacts/out/result.txt'), 'utf8'), 'workflow template yes compile build host\n');
  t.ok(readEvents(join(logs, 'jobs/lint/user/execution/script/01/events.jsonl')).some((e) => e.message === 'lint job'));

  const phases = readJson<{ phases: { phase_code: string; job_id?: string; status: string }[] }>(join(logs, 'phase-report.json')).phases;
  const codes = new Set(phases.map((p) => p.phase_code));
  for (const c of ['run.bootstrap', 'pipeline.execute', 'job.provider_prepare', 'job.cache_restore', 'job.artifact_restore', 'job.execution', 'job.cache_save', 'job.cleanup']) t.ok(codes.has(c), c);
  t.ok(phases.some((p) => p.phase_code === 'job.execution' && p.job_id === 'unit' && p.status === 'failure'));
  t.ok(existsSync(join(logs, 'jobs/compile/system/provider/events.jsonl')));
  t.ok(existsSync(join(logs, 'jobs/compile/system/cleanup/events.jsonl')));
  for (const e of readEvents(join(logs, 'events.jsonl'))) t.ok(e.ts && e.stream && e.phase_code && e.phase_family, 'run events carry ts, stream and phase');

  // --job runs only the named job; -q prints only status and receipt.
  const only = await loom(['run', '--local', '--job', 'compile', '-q'], repo);
  track({ stdout: `isolated workspace: ${receiptOf(only).snapshot_path}` });
  t.equal(only.code, 0, only.stderr);
  t.same(only.stdout.trim().split('\n').map((l) => l.split(':')[0]), ['status', 'receipt']);
  t.same(Object.keys(readJson<{ jobs: Record<string, string> }>(join(receiptOf(only).logs_dir, 'pipeline/summary.json')).jobs), ['compile']);
  const bad = await loom(['run', '--local', '--job', 'nope'], repo);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /no such job: nope/);
});

t.test('workflow.rules can skip the pipeline; an invalid workflow removes the workspace', async (t) => {
  const repo = makeRepo({
    '.loom/workflow.yml': ['version: "v1"', 'stages: [a]', 'variables:', '  MODE: "docs"', 'workflow:', '  rules:', '    - if: $MODE == "full" || $FORCE =~ /^y/', 'j:', '  stage: a', '  script: [touch ran]', ''].join('\n'),
  }, tmp);
  const skip = await loom(['run', '--local'], repo);
  track(skip);
  t.equal(skip.code, 0, skip.stderr);
  t.match(skip.stderr, /skipped by workflow.rules/);
  t.notOk(existsSync(join(workspaceOf(skip), 'ran')));
  const forced = await loom(['run', '--local'], repo, { FORCE: 'yes' });
  track(forced);
  t.equal(forced.code, 0, forced.stderr);
  t.ok(existsSync(join(workspaceOf(forced), 'ran')));

  writeFileSync(join(repo, '.loom/workflow.yml'), 'version: "v2"\nstages: [a]\n');
  const invalid = await loom(['run', '--local'], repo);
  t.equal(invalid.code, 3);
  t.match(invalid.stderr, /\.loom\/workflow\.yml:1:10: version must be "v1"/);
  t.notOk(existsSync(workspaceOf(invalid)), 'preparation failed: workspace removed');
  renameSync(join(repo, '.loom/workflow.yml'), join(repo, '.loom/other.yml'));
  const missing = await loom(['run', '--local'], repo);
  t.equal(missing.code, 3);
  t.match(missing.stderr, /cannot read: ENOENT/);
});
