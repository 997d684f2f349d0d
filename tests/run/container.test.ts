/** Container jobs (`image:`) through Loom's own runtime and image store: both workspace mount modes. */
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, readdirSync as require_readdir } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { which } from '../../src/provisioners/local/runtime.js';
import { cleanup, loom, makeRepo, readEvents, receiptOf } from './helpers.js';

const missing = process.getuid?.() !== 0 ? 'needs root (runc)' : !which('runc') && !which('crun') ? 'no runc or crun' : !which('umoci') ? 'no umoci' : '';
if (missing) {
  if (process.env['CI'] === 'true') t.fail(`container provider prerequisites missing in CI: ${missing}`);
  else t.test('container provider', { skip: missing }, () => undefined);
} else {
  const tmp: string[] = [];
  t.teardown(() => cleanup(tmp));
  // The test's own image store (the default image is built into it offline).
  const dataDir = mkdtempSync(join(tmpdir(), 'loom-run-data-'));
  tmp.push(dataDir);

  const workflow = [
    'version: "v1"',
    'stages: [s]',
    'variables:',
    '  FROM_WORKFLOW: "wf"',
    'box:',
    '  stage: s',
    '  image: loom/default:latest',
    '  variables:',
    '    FROM_JOB: "job"',
    '  script:',
    '    - echo "$PWD $LOOM_PROVIDER $LOOM_PROJECT_DIR $FROM_WORKFLOW $FROM_JOB host=${HOST_ONLY:-absent}"',
    '    - cat tracked.txt',
    '    - echo written-in-container > from-container.txt',
    '    - test -f from-container.txt',
    '',
  ].join('\n');

  for (const mode of ['bind_mount', 'ephemeral_volume'] as const) {
    t.test(`image: runs in a runc container, ${mode}`, async (t) => {
      const repo = makeRepo({ '.loom/workflow.yml': workflow, 'tracked.txt': 'tracked content\n' }, tmp);
      const r = await loom(['run', '--local', '--docker-workspace-mount', mode], repo, { LOOM_DATA_DIR: dataDir, HOST_ONLY: 'leaky' });
      const ws = /^isolated workspace: (.+)$/m.exec(r.stdout)?.[1];
      if (ws) tmp.push(ws);
      t.equal(r.code, 0, r.stderr);
      const logs = receiptOf(r).logs_dir;
      const out = (n: string) => readEvents(join(logs, `jobs/box/user/execution/script/${n}/events.jsonl`)).filter((e) => e.stream === 'stdout').map((e) => e.message);
      t.same(out('01'), ['/workspace docker /workspace wf job host=absent'], 'only workflow and job variables reach the container');
      t.same(out('02'), ['tracked content']);
      const synced = existsSync(join(ws!, 'from-container.txt'));
      if (mode === 'bind_mount') t.equal(readFileSync(join(ws!, 'from-container.txt'), 'utf8'), 'written-in-container\n', 'bind_mount is live');
      else t.notOk(synced, 'ephemeral_volume is not synced back');
      t.ok(readEvents(join(logs, 'jobs/box/system/provider/events.jsonl')).some((e) => new RegExp(mode === 'bind_mount' ? 'bind-mounted' : 'ephemeral volume').test(String(e.message))));
      t.same(readdirScratch(receiptOf(r).logs_dir.split('/').pop()!), [], 'the ephemeral volume and bundles are removed');
    });
  }

  t.test('a bad mount mode and an unknown image', async (t) => {
    const repo = makeRepo({ '.loom/workflow.yml': workflow.replace('loom/default:latest', 'nosuch/image:1') }, tmp);
    const bad = await loom(['run', '--local', '--docker-workspace-mount', 'nfs'], repo, { LOOM_DATA_DIR: dataDir });
    t.equal(bad.code, 2);
    t.match(bad.stderr, /must be bind_mount or ephemeral_volume/);
    const r = await loom(['run', '--local'], repo, { LOOM_DATA_DIR: dataDir });
    const ws = /^isolated workspace: (.+)$/m.exec(r.stdout)?.[1];
    if (ws) tmp.push(ws);
    t.equal(r.code, 1);
    t.match(String(receiptOf(r).error), /image nosuch\/image:1 is not in the local image store/);
  });
}

function readdirScratch(runId: string): string[] {
  return require_readdir(tmpdir()).filter((d) => d.startsWith(`loom-run-ctr-${runId}-`));
}

