/** Container jobs (`image:`) through Loom's own runtime and image store: both workspace mount modes. */
import t from 'tap';
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync as require_readdir, writeFileSync } from 'node:fs';
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
    '    - cat /proc/self/uid_map /proc/self/gid_map; id -u',
    '    - mkdir -p made/deeper && echo x > made/deeper/f && cp /bin/busybox made/suid && chmod 4755 made/suid && chown 1234:1234 made/deeper/f',
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
      // uid and gid 0 inside are host 100000 (the default base), not host root.
      t.same(out('05').map((l) => String(l).trim().split(/\s+/).join(' ')), ['0 100000 65536', '0 100000 65536', '0'], 'the job runs in a user namespace');
      t.equal(out('06').length, 0);
      const synced = existsSync(join(ws!, 'from-container.txt'));
      if (mode === 'bind_mount') {
        t.equal(readFileSync(join(ws!, 'from-container.txt'), 'utf8'), 'written-in-container\n', 'bind_mount is live');
        // Everything the job wrote, whatever its owner inside, is handed back to the invoking user; no set-id bit survives.
        const me = { uid: process.getuid!(), gid: process.getgid!() };
        for (const p of ['from-container.txt', 'made', 'made/deeper', 'made/deeper/f', 'made/suid', 'tracked.txt', '.']) {
          const st = lstatSync(join(ws!, p));
          t.same({ uid: st.uid, gid: st.gid }, me, `${p} is owned by the invoking user after the job`);
        }
        t.equal(lstatSync(join(ws!, 'made/suid')).mode & 0o6000, 0, 'a setuid file made inside is not setuid on the host');
        t.ok(readEvents(join(logs, 'jobs/box/system/cleanup/events.jsonl')).some((e) => /workspace handed back/.test(String(e.message))));
      } else t.notOk(synced, 'ephemeral_volume is not synced back');
      t.ok(readEvents(join(logs, 'jobs/box/system/provider/events.jsonl')).some((e) => new RegExp(mode === 'bind_mount' ? 'bind-mounted' : 'ephemeral volume').test(String(e.message))));
      t.same(readdirScratch(receiptOf(r).logs_dir.split('/').pop()!), [], 'the ephemeral volume and bundles are removed');
    });
  }

  t.test('LOOM_RUN_USERNS_BASE moves the range; a bad value is refused clearly', async (t) => {
    const wf = ['version: "v1"', 'stages: [s]', 'box:', '  stage: s', '  image: loom/default:latest', '  script:', '    - cat /proc/self/uid_map', '    - touch mine', ''].join('\n');
    const repo = makeRepo({ '.loom/workflow.yml': wf }, tmp);
    const r = await loom(['run', '--local', '--docker-workspace-mount', 'ephemeral_volume'], repo, { LOOM_DATA_DIR: dataDir, LOOM_RUN_USERNS_BASE: '300000' });
    const ws = /^isolated workspace: (.+)$/m.exec(r.stdout)?.[1];
    if (ws) tmp.push(ws);
    t.equal(r.code, 0, r.stderr);
    const logs = receiptOf(r).logs_dir;
    const out = readEvents(join(logs, 'jobs/box/user/execution/script/01/events.jsonl')).filter((e) => e.stream === 'stdout').map((e) => String(e.message).trim().split(/\s+/).join(' '));
    t.same(out, ['0 300000 65536']);
    for (const bad of ['0', '1000', 'abc', '4294967295']) {
      const b = await loom(['run', '--local'], repo, { LOOM_DATA_DIR: dataDir, LOOM_RUN_USERNS_BASE: bad });
      const bws = /^isolated workspace: (.+)$/m.exec(b.stdout)?.[1];
      if (bws) tmp.push(bws);
      t.equal(b.code, 1, `LOOM_RUN_USERNS_BASE=${bad} fails the job`);
      t.match(String(receiptOf(b).error), /LOOM_RUN_USERNS_BASE must be/, `LOOM_RUN_USERNS_BASE=${bad}: the error says why`);
    }
  });

  t.test('a secret file (0600) is readable by the job\'s root in the user namespace, and redacted', async (t) => {
    const wf = ['version: "v1"', 'stages: [s]', 'box:', '  stage: s', '  image: loom/default:latest', '  secrets:', '    TOKEN:', '      ref: env://RUN_USERNS_TOKEN', '  script:', '    - stat -c "%u %a" "$TOKEN"; cat "$TOKEN"', ''].join('\n');
    const repo = makeRepo({ '.loom/workflow.yml': wf }, tmp);
    const r = await loom(['run', '--local', '--docker-workspace-mount', 'bind_mount'], repo, { LOOM_DATA_DIR: dataDir, RUN_USERNS_TOKEN: 'sekrit-value-42' });
    const ws = /^isolated workspace: (.+)$/m.exec(r.stdout)?.[1];
    if (ws) tmp.push(ws);
    t.equal(r.code, 0, r.stderr);
    const out = readEvents(join(receiptOf(r).logs_dir, 'jobs/box/user/execution/script/01/events.jsonl')).filter((e) => e.stream === 'stdout').map((e) => String(e.message));
    t.same(out, ['0 600', '[REDACTED:SECRET_TOKEN]'], 'owned by uid 0 inside, mode 0600, readable');
  });

  t.test('uid 0 inside is not host root: root-only host files stay unreadable and the run\'s logs unwritable', async (t) => {
    const { createContainerProvider } = await import('../../src/run/container-provider.js');
    const prev = process.env['LOOM_DATA_DIR'];
    process.env['LOOM_DATA_DIR'] = dataDir;
    t.teardown(() => (prev === undefined ? delete process.env['LOOM_DATA_DIR'] : (process.env['LOOM_DATA_DIR'] = prev)));
    const ws = mkdtempSync(join(tmpdir(), 'loom-run-userns-ws-'));
    tmp.push(ws);
    // .loom/.runtime (the run's logs and receipts) stays host-root owned while the job runs.
    mkdirSync(join(ws, '.loom', '.runtime'), { recursive: true });
    writeFileSync(join(ws, '.loom', '.runtime', 'root-only.txt'), 'TOP-SECRET\n', { mode: 0o600 });
    writeFileSync(join(ws, '.loom', '.runtime', 'public.txt'), 'public\n', { mode: 0o644 });
    writeFileSync(join(ws, 'plain.txt'), 'plain\n');
    chmodSync(join(ws, '.loom', '.runtime', 'root-only.txt'), 0o600);
    const p = createContainerProvider({ workspace: ws, image: 'loom/default:latest', mount: 'bind_mount', jobId: 'probe', runId: `t${process.pid}` });
    const logs: string[] = [];
    t.teardown(() => p.cleanup((m) => logs.push(m)));
    await p.prepare((m) => logs.push(m));
    const step = async (line: string) => {
      let text = '';
      const code = await p.runStep(line, {}, (_s, c) => (text += c.toString()));
      return { code, text };
    };
    const pub = await step('cat /workspace/.loom/.runtime/public.txt');
    t.same(pub, { code: 0, text: 'public\n' }, 'the directory is reachable');
    const secret = await step('cat /workspace/.loom/.runtime/root-only.txt');
    t.not(secret.code, 0, 'a 0600 host-root file cannot be read by uid 0 inside');
    t.notMatch(secret.text, /TOP-SECRET/);
    t.match(secret.text, /Permission denied/);
    const write = await step('echo tampered >> /workspace/.loom/.runtime/public.txt');
    t.not(write.code, 0, 'the run\'s logs cannot be written from the job');
    t.equal(readFileSync(join(ws, '.loom', '.runtime', 'public.txt'), 'utf8'), 'public\n');
    const made = await step('echo hi > /workspace/new.txt && chown 1000:1000 /workspace/new.txt');
    t.equal(made.code, 0, made.text);
    t.same({ uid: lstatSync(join(ws, 'new.txt')).uid, gid: lstatSync(join(ws, 'new.txt')).gid }, { uid: 101000, gid: 101000 }, 'while the job runs, uid 1000 inside is host 101000');
    t.equal(lstatSync(join(ws, 'plain.txt')).uid, 100000, 'while the job runs, the workspace belongs to the namespace\'s root');
    await p.cleanup((m) => logs.push(m));
    for (const f of ['new.txt', 'plain.txt']) t.equal(lstatSync(join(ws, f)).uid, process.getuid!(), `${f} is handed back`);
    t.equal(lstatSync(join(ws, '.loom', '.runtime', 'root-only.txt')).uid, 0);
  });

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

