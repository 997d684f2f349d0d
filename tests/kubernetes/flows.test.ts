/**
 * Flow tests of the kubernetes backend against the K8S STAND-IN API server
 * (tests/support/k8s-standin), which speaks the API server's wire protocol; it is not a cluster.
 */
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { KubernetesProvisioner, type KubernetesProvisionerOptions } from '../../src/provisioners/kubernetes/index.js';
import { LoomError } from '../../src/common/errors.js';
import type { BackendWeaver, WeaverSpec } from '../../src/weaver/provisioner.js';
import { K8sStandin, STANDIN_BANNER, type StandinOptions } from '../support/k8s-standin/index.js';
import { k8sConfig, silentLog, spec, until } from './helpers.js';

t.comment(`these flows run against the ${STANDIN_BANNER}`);

interface Env {
  standin: K8sStandin;
  prov: KubernetesProvisioner;
  events: BackendWeaver[];
}

async function setup(t: Test, so: StandinOptions = {}, po: Partial<KubernetesProvisionerOptions> = {}): Promise<Env> {
  const standin = await K8sStandin.start({ kubelet: 'auto', ...so });
  const prov = new KubernetesProvisioner({ config: k8sConfig(), log: silentLog(), kubeConfig: standin.kubeConfig(), watchRetryMs: 20, ...po });
  t.teardown(async () => {
    await prov.close();
    await standin.close();
  });
  const events: BackendWeaver[] = [];
  prov.watch((w) => events.push(w));
  await prov.start();
  return { standin, prov, events };
}


const pod = (s: WeaverSpec) => `weaver-${s.id}`;
const statusesOf = (events: BackendWeaver[], id: string) => events.filter((e) => e.id === id).map((e) => e.status);

async function expectLoomError(t: Test, p: Promise<unknown>, code: string, message?: RegExp): Promise<LoomError> {
  try {
    await p;
  } catch (e) {
    t.ok(e instanceof LoomError, 'a LoomError');
    const le = e as LoomError;
    t.equal(le.code, code);
    if (message) t.match(le.message, message);
    return le;
  }
  t.fail(`expected LoomError ${code}`);
  throw new Error('unreachable');
}

t.test('start(): missing namespace is one clear error', async (t) => {
  const standin = await K8sStandin.start({ namespaces: [] });
  t.teardown(() => standin.close());
  const prov = new KubernetesProvisioner({ config: k8sConfig(), log: silentLog(), kubeConfig: standin.kubeConfig() });
  t.teardown(() => prov.close());
  const e = await expectLoomError(t, prov.start(), 'kubernetes_namespace_missing');
  t.equal(e.message, `kubernetes namespace "loom-weavers" not found at ${standin.url}: create it with kubectl create namespace loom-weavers`);
});

t.test('start(): unreachable API is one clear error', async (t) => {
  const srv = http.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  const standin = await K8sStandin.start();
  t.teardown(() => standin.close());
  const kc = standin.kubeConfig();
  kc.clusters[0] = { ...kc.clusters[0], server: `http://127.0.0.1:${port}` };
  const prov = new KubernetesProvisioner({ config: k8sConfig(), log: silentLog(), kubeConfig: kc });
  t.teardown(() => prov.close());
  await expectLoomError(t, prov.start(), 'kubernetes_unreachable', new RegExp(`^kubernetes API http://127\\.0\\.0\\.1:${port} unreachable: ECONNREFUSED$`));
});

t.test('start(): wrong credentials', async (t) => {
  const standin = await K8sStandin.start({ token: 'right' });
  t.teardown(() => standin.close());
  const kc = standin.kubeConfig();
  kc.users[0] = { ...kc.users[0], token: 'wrong' };
  const prov = new KubernetesProvisioner({ config: k8sConfig(), log: silentLog(), kubeConfig: kc });
  t.teardown(() => prov.close());
  await expectLoomError(t, prov.start(), 'kubernetes_unauthorized', /refused the credentials \(401\)/);
});

t.test('start(): an unreadable kubeconfig is one clear error', async (t) => {
  const prov = new KubernetesProvisioner({ config: k8sConfig({ kubeconfig: '/nonexistent/loom/kubeconfig.yaml' }), log: silentLog() });
  t.teardown(() => prov.close());
  await expectLoomError(t, prov.start(), 'kubernetes_config', /^cannot load kubeconfig \/nonexistent\/loom\/kubeconfig\.yaml: ENOENT/);
});

t.test('kubeconfig is read from the configured path', async (t) => {
  const standin = await K8sStandin.start();
  const dir = mkdtempSync(join(tmpdir(), 'loom-k8s-'));
  t.teardown(async () => {
    await standin.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const path = join(dir, 'kubeconfig.yaml');
  writeFileSync(path, standin.kubeconfigYaml());
  const prov = new KubernetesProvisioner({ config: k8sConfig({ kubeconfig: path }), log: silentLog() });
  t.teardown(() => prov.close());
  await prov.start();
  t.equal(prov.server, standin.url);
  t.match(await prov.health(), { ok: true, backend: 'kubernetes', detail: /namespace "loom-weavers" at http:\/\/127\.0\.0\.1:\d+; pod watch connected/ });
});

t.test('create → pending → running from the watch (no polling)', async (t) => {
  const { standin, prov, events } = await setup(t);
  const s = spec({ repo: 'https://github.com/acme/widgets', branch: 'main', env: { A: '1' } });
  await prov.create(s);
  const stored = standin.pod(pod(s));
  t.ok(stored, 'the stand-in accepted (validated) the pod');
  t.equal(stored?.metadata.labels?.['app.kubernetes.io/managed-by'], 'loom');
  t.equal(stored?.spec.activeDeadlineSeconds, 4 * 3600, 'lifetime guard on the pod');
  await until(() => statusesOf(events, s.id).includes('running'), 'running');
  t.same(statusesOf(events, s.id), ['pending', 'running']);
  const running = events.find((e) => e.id === s.id && e.status === 'running');
  t.ok(running?.startedAt instanceof Date, 'startedAt on running');
  t.match(await prov.get(s.id), { id: s.id, status: 'running' });
  t.match(await prov.list(), [{ id: s.id, status: 'running' }]);
  t.equal(await prov.get('00000000-0000-4000-8000-000000000000'), null);
  t.equal(standin.podListCalls(), 1, 'one list at start; everything else came from the watch');
  t.equal(standin.watchCount(), 1);
});

t.test('failures with reasons', async (t) => {
  const { standin, prov, events } = await setup(t);
  const pull = spec({ image: 'ghcr.io/acme/does-not-exist:1' });
  const clone = spec({ repo: 'https://github.com/acme/does-not-exist' });
  const exit = spec();
  const oom = spec();
  await Promise.all([prov.create(pull), prov.create(clone), prov.create(exit), prov.create(oom)]);
  await until(() => events.some((e) => e.id === pull.id && e.status === 'failed'), 'image pull failure');
  t.match(events.find((e) => e.id === pull.id && e.status === 'failed')?.reason, /^ErrImagePull: .*does-not-exist/);
  await until(() => events.some((e) => e.id === clone.id && e.status === 'failed'), 'clone failure');
  t.equal(events.find((e) => e.id === clone.id && e.status === 'failed')?.reason, "git clone failed: fatal: repository 'https://github.com/acme/does-not-exist/' not found");
  await until(() => events.some((e) => e.id === exit.id && e.status === 'running') && events.some((e) => e.id === oom.id && e.status === 'running'), 'running');
  standin.setTerminated(pod(exit), 3);
  standin.setTerminated(pod(oom), 137, 'OOMKilled');
  await until(() => events.some((e) => e.id === exit.id && e.status === 'failed') && events.some((e) => e.id === oom.id && e.status === 'failed'), 'exits');
  t.match(events.find((e) => e.id === exit.id && e.status === 'failed'), { reason: 'exited with code 3', exitCode: 3 });
  t.match(events.find((e) => e.id === oom.id && e.status === 'failed'), { reason: /^OOMKilled/, exitCode: 137 });
  // the lifecycle layer deletes failed weavers; delete is idempotent
  await prov.delete(pull.id);
  await prov.delete(pull.id);
  t.notOk(standin.pod(pod(pull)));
});

t.test('create: conflict, half-created pod cleanup, quota, invalid pod', async (t) => {
  const { standin, prov } = await setup(t, { kubelet: 'manual' });
  const s = spec();
  await prov.create(s);
  await expectLoomError(t, prov.create(s), 'weaver_exists');
  t.ok(standin.pod(pod(s)), 'a conflict does not delete the existing pod');

  const half = spec();
  standin.failNextCreateAfterStore = true;
  await expectLoomError(t, prov.create(half), 'kubernetes_error', /500/);
  t.notOk(standin.pod(pod(half)), 'the half-created pod was deleted');

  standin.podQuota = 1;
  const q = spec();
  const e = await expectLoomError(t, prov.create(q), 'quota_exceeded', /exceeded quota: weaver-quota/);
  t.equal(e.status, 429);
  standin.podQuota = undefined;

  const bad = spec({ resources: { cpu: 'lots', memory: '1Gi' } });
  await expectLoomError(t, prov.create(bad), 'invalid_weaver', /is invalid/);
  t.notOk(standin.pod(pod(bad)));
});

t.test('attach: stdin/stdout, resize on channel 4, exit status on channel 3, detach', async (t) => {
  const { standin, prov, events } = await setup(t);
  const pending = spec();
  const s = spec({ command: ['sh'] });
  await prov.create(s);
  await until(() => statusesOf(events, s.id).includes('running'), 'running');

  const term = await prov.attach(s.id, { cols: 80, rows: 24 });
  t.equal(standin.attachProtocols[0], 'v4.channel.k8s.io', 'v4 channel protocol negotiated');
  const out: Buffer[] = [];
  term.onData((c) => out.push(c));
  let closed: { exitCode?: number; error?: string } | undefined;
  term.onClose((i) => (closed = i));
  await until(() => (standin.resizes.get(pod(s)) ?? []).length === 1, 'initial size');
  t.same(standin.resizes.get(pod(s)), [{ Width: 80, Height: 24 }]);
  term.write(Buffer.from('echo hi\n'));
  await until(() => Buffer.concat(out).toString() === 'echo hi\n', 'echo');
  standin.sendOutput(pod(s), 'hi\r\n');
  await until(() => Buffer.concat(out).toString().endsWith('hi\r\n'), 'output');
  term.resize(120, 40);
  await until(() => (standin.resizes.get(pod(s)) ?? []).length === 2, 'resize');
  t.same(standin.resizes.get(pod(s))?.[1], { Width: 120, Height: 40 });
  t.equal(Buffer.concat(standin.stdin.get(pod(s)) ?? []).toString(), 'echo hi\n');
  standin.endAttach(pod(s), 3);
  await until(() => closed !== undefined, 'close');
  t.same(closed, { exitCode: 3 });

  // a second attach, detached by the client: the pod keeps running
  const again = await prov.attach(s.id);
  await until(() => standin.attachCount(pod(s)) === 1, 'attached');
  let detached = false;
  again.onClose(() => (detached = true));
  again.close();
  await until(() => standin.attachCount(pod(s)) === 0 && detached, 'detached');
  t.ok(standin.pod(pod(s)), 'pod still there after detach');
  const ok = await prov.attach(s.id);
  let code: number | undefined;
  ok.onClose((i) => (code = i.exitCode));
  await until(() => standin.attachCount(pod(s)) === 1, 'attached');
  standin.endAttach(pod(s), 0);
  await until(() => code === 0, 'exit 0');

  // not running yet: refused with the status
  await prov.create({ ...pending, image: 'ghcr.io/acme/does-not-exist:2' });
  await until(() => events.some((e) => e.id === pending.id && e.status === 'failed'), 'failed');
  await expectLoomError(t, prov.attach(pending.id), 'weaver_not_running', /is failed \(ErrImagePull/);
  await expectLoomError(t, prov.attach('00000000-0000-4000-8000-000000000000'), 'not_found');
});

t.test('attach falls back to channel.k8s.io and reads its error channel', async (t) => {
  const { parseStatusChannel } = await import('../../src/provisioners/kubernetes/attach.js');
  t.same(parseStatusChannel('channel.k8s.io', Buffer.from('')), { exitCode: 0 });
  t.same(parseStatusChannel('channel.k8s.io', Buffer.from('boom')), { error: 'boom' });
  t.same(parseStatusChannel('v4.channel.k8s.io', Buffer.from('{"status":"Failure","reason":"InternalError","message":"x"}')), { error: 'x' });
});

t.test('logs: tail, follow, abort, not-started', async (t) => {
  const { standin, prov, events } = await setup(t);
  const s = spec();
  await prov.create(s);
  await until(() => statusesOf(events, s.id).includes('running'), 'running');
  standin.appendLog(pod(s), 'one\ntwo\nthree\n');
  const chunks: string[] = [];
  for await (const c of prov.logs(s.id, { tail: 2, follow: false })) chunks.push(c.toString());
  t.equal(chunks.join(''), 'two\nthree\n');
  const all: string[] = [];
  for await (const c of prov.logs(s.id, { follow: false })) all.push(c.toString());
  t.equal(all.join(''), 'one\ntwo\nthree\n');

  const ac = new AbortController();
  const got: string[] = [];
  const reader = (async () => {
    for await (const c of prov.logs(s.id, { tail: 1, follow: true, signal: ac.signal })) {
      got.push(c.toString());
      if (got.join('').includes('four\n')) ac.abort();
    }
  })();
  await until(() => got.join('') === 'three\n', 'tail of follow');
  standin.appendLog(pod(s), 'four\n');
  await reader;
  t.equal(got.join(''), 'three\nfour\n', 'follow streamed new lines, abort ended it');

  // follow ends when the container ends
  const done: string[] = [];
  const r2 = (async () => {
    for await (const c of prov.logs(s.id, { tail: 0, follow: true })) done.push(c.toString());
  })();
  await until(() => standin.requests.filter((r) => r.path.endsWith('/log')).length === 4, 'follow request');
  standin.appendLog(pod(s), 'bye\n');
  standin.setTerminated(pod(s), 0);
  await r2;
  t.equal(done.join(''), 'bye\n');

  const p = spec();
  await prov.create({ ...p, image: 'ghcr.io/acme/does-not-exist:3' });
  await until(() => events.some((e) => e.id === p.id && e.status === 'failed'), 'failed');
  await expectLoomError(t, (async () => {
    for await (const c of prov.logs(p.id, { follow: false })) void c;
  })(), 'weaver_not_running', /waiting to start: ErrImagePull/);
  await expectLoomError(t, (async () => {
    for await (const c of prov.logs('00000000-0000-4000-8000-000000000000', { follow: false })) void c;
  })(), 'not_found');
});

t.test('lifetime: deadline on the pod, DeadlineExceeded reported; delete on demand', async (t) => {
  const { standin, prov, events } = await setup(t, { deleteDelayMs: 30 });
  const s = spec({ lifetimeHours: 0.5 });
  await prov.create(s);
  t.equal(standin.pod(pod(s))?.spec.activeDeadlineSeconds, 1800);
  await until(() => statusesOf(events, s.id).includes('running'), 'running');
  standin.setPodFailed(pod(s), 'DeadlineExceeded', 'Pod was active on the node longer than the specified deadline');
  await until(() => statusesOf(events, s.id).includes('failed'), 'deadline');
  t.match(events.filter((e) => e.id === s.id).pop(), { status: 'failed', reason: 'lifetime expired (DeadlineExceeded)' });

  const d = spec();
  await prov.create(d);
  await until(() => statusesOf(events, d.id).includes('running'), 'running');
  await prov.delete(d.id);
  await until(() => statusesOf(events, d.id).includes('terminating'), 'terminating');
  await until(() => !standin.pod(pod(d)), 'removed');
  // The pod watch is one ordered stream: once a pod created after the deletion is seen running,
  // the DELETED event of d (which a pod deleted outside Loom turns into 'failed') was handled.
  const marker = spec();
  await prov.create(marker);
  await until(() => statusesOf(events, marker.id).includes('running'), 'a later pod running');
  t.same(statusesOf(events, d.id), ['pending', 'running', 'terminating'], 'our own delete is not reported as a failure');
  await prov.delete(marker.id);
  t.equal(await prov.get(d.id), null);
  await prov.delete(d.id);
  await prov.delete('00000000-0000-4000-8000-000000000000');
  t.pass('delete of a gone or unknown weaver is fine');
});

t.test('a pod deleted outside Loom is reported failed', async (t) => {
  const { standin, prov, events } = await setup(t);
  const s = spec();
  await prov.create(s);
  await until(() => statusesOf(events, s.id).includes('running'), 'running');
  standin.deletePod(pod(s));
  await until(() => statusesOf(events, s.id).includes('failed'), 'failed');
  t.match(events.filter((e) => e.id === s.id).pop(), { status: 'failed', reason: /deleted outside Loom/ });
});

t.test('reconcile: adopt known, delete orphans, report missing', async (t) => {
  const { standin, prov } = await setup(t, { kubelet: 'manual' });
  const known = spec();
  const orphan = spec();
  const missing = spec();
  const { buildPod } = await import('../../src/provisioners/kubernetes/pod-spec.js');
  const opts = { namespace: 'loom-weavers', imagePullSecrets: [], audit: k8sConfig().audit };
  standin.seedPod(JSON.parse(JSON.stringify(buildPod(known, opts))));
  standin.seedPod(JSON.parse(JSON.stringify(buildPod(orphan, opts))));
  standin.seedPod({ metadata: { name: 'not-ours', labels: { app: 'other' } }, spec: { containers: [{ name: 'c', image: 'x' }] } });
  const report = await prov.reconcile([known.id, missing.id]);
  t.same(report, { adopted: [known.id], orphansRemoved: [orphan.id], missing: [missing.id] });
  t.ok(standin.pod(pod(known)));
  t.notOk(standin.pod(pod(orphan)));
  t.ok(standin.pod('not-ours'), 'pods not managed by loom are left alone');
});

t.test('the watch resumes after the server ends it, and relists after 410 Gone', async (t) => {
  const { standin, prov, events } = await setup(t, { kubelet: 'manual' });
  const a = spec();
  await prov.create(a);
  await until(() => statusesOf(events, a.id).includes('pending'), 'pending');
  standin.dropWatches();
  standin.setRunning(pod(a));
  await until(() => statusesOf(events, a.id).includes('running'), 'running after resume');
  const lists = standin.podListCalls();
  t.equal(lists, 1, 'resumed from the last resourceVersion without relisting');

  await until(() => standin.watchCount() === 1, 'watching');
  standin.compact();
  standin.dropWatches();
  standin.setTerminated(pod(a), 0);
  await until(() => statusesOf(events, a.id).includes('succeeded'), 'succeeded after 410 relist');
  t.ok(standin.gone410 >= 1, 'the resumed watch got 410 Gone');
  t.ok(standin.podListCalls() > lists, 'relisted after 410 Gone');
  t.match(await prov.health(), { ok: true });
});
