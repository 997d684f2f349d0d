/**
 * Opt-in: the same flows against a real cluster (k3s). Skipped unless LOOM_TEST_KUBECONFIG is set.
 *
 *   curl -sfL https://get.k3s.io | sh -          # or services.loom-k3s on NixOS
 *   kubectl create namespace loom-test           # a namespace of its own: the test deletes pods in it
 *   export LOOM_TEST_KUBECONFIG=/etc/rancher/k3s/k3s.yaml
 *   # optional: LOOM_TEST_K8S_NAMESPACE (default loom-test),
 *   #           LOOM_TEST_K8S_IMAGE (default docker.io/library/busybox:1.36, run with command sh),
 *   #           LOOM_TEST_K8S_GIT_IMAGE (e.g. docker.io/alpine/git:2.45.2) to also test the repo clone
 *   npx tap tests/kubernetes/real-cluster.test.ts
 */
import t from 'tap';
import { CoreV1Api } from '@kubernetes/client-node';
import { KubernetesProvisioner, loadKubeConfig } from '../../src/provisioners/kubernetes/index.js';
import type { BackendWeaver } from '../../src/weaver/provisioner.js';
import { k8sConfig, silentLog, spec, until } from './helpers.js';

const kubeconfig = process.env.LOOM_TEST_KUBECONFIG;
const ns = process.env.LOOM_TEST_K8S_NAMESPACE || 'loom-test';
const image = process.env.LOOM_TEST_K8S_IMAGE || 'docker.io/library/busybox:1.36';
const gitImage = process.env.LOOM_TEST_K8S_GIT_IMAGE;

const SKIP = kubeconfig
  ? false
  : 'opt-in by design (also in CI): the real-cluster test runs only when LOOM_TEST_KUBECONFIG is set (install k3s, `kubectl create namespace loom-test`, ' +
    'export LOOM_TEST_KUBECONFIG=/etc/rancher/k3s/k3s.yaml; image LOOM_TEST_K8S_IMAGE defaults to docker.io/library/busybox:1.36 run with command sh)';

const WAIT = 180_000;

t.test('real cluster flows', { skip: SKIP, timeout: 600_000 }, async (t) => {
  const prov = new KubernetesProvisioner({
    config: k8sConfig({ k8sNamespace: ns, kubeconfig: kubeconfig ?? '' }),
    log: silentLog(),
    ...(gitImage ? { gitImage } : {}),
  });
  const created: string[] = [];
  const events: BackendWeaver[] = [];
  prov.watch((w) => events.push(w));
  t.teardown(async () => {
    for (const id of created) await prov.delete(id).catch(() => undefined);
    await prov.close();
  });
  await prov.start();
  const last = (id: string) => events.filter((e) => e.id === id).pop();

  // running, attach, resize, logs
  const s = spec({ image, command: ['sh'], resources: { cpu: '100m', memory: '64Mi' }, lifetimeHours: 0.25 });
  await prov.create(s);
  created.push(s.id);
  await until(() => last(s.id)?.status === 'running', 'running', WAIT);
  const term = await prov.attach(s.id, { cols: 100, rows: 30 });
  let out = '';
  term.onData((c) => (out += c.toString()));
  term.write(Buffer.from('echo loom-$((6*7)); stty size\n'));
  await until(() => out.includes('loom-42') && /30 100/.test(out), 'echo and tty size', 30_000);
  term.resize(120, 40);
  // The resize travels separately from the input: ask the tty (one question per answer) until
  // it reports the new size.
  const answers = () => (out.match(/^\d+ \d+\r?$/gm) ?? []).length;
  let asked = answers();
  await until(() => {
    if (/40 120/.test(out)) return true;
    if (answers() >= asked) {
      asked++;
      term.write(Buffer.from('stty size\n'));
    }
    return false;
  }, 'resized', 30_000);
  term.close();
  t.pass('attach echoed and resize reached the tty');
  let logText = '';
  for await (const c of prov.logs(s.id, { tail: 100, follow: false })) logText += c.toString();
  t.match(logText, /loom-42/, 'logs carry the terminal output');
  t.match(await prov.get(s.id), { status: 'running' }, 'still running after detach');
  const api = loadKubeConfig({ kubeconfig: kubeconfig ?? '' }).makeApiClient(CoreV1Api);
  const pod = await api.readNamespacedPod({ name: `weaver-${s.id}`, namespace: ns });
  t.equal(pod.spec?.activeDeadlineSeconds, 900, 'lifetime guard on the pod');

  // failures with reasons
  const bad = spec({ image: 'docker.io/library/loom-does-not-exist:0', command: ['sh'], resources: { cpu: '100m', memory: '64Mi' } });
  const exit = spec({ image, command: ['sh', '-c', 'exit 3'], resources: { cpu: '100m', memory: '64Mi' } });
  await prov.create(bad);
  created.push(bad.id);
  await prov.create(exit);
  created.push(exit.id);
  await until(() => last(bad.id)?.status === 'failed', 'image pull failure', WAIT);
  t.match(last(bad.id)?.reason, /^(ErrImagePull|ImagePullBackOff)/);
  await until(() => last(exit.id)?.status === 'failed', 'exit 3', WAIT);
  t.match(last(exit.id), { reason: 'exited with code 3', exitCode: 3 });

  if (gitImage) {
    const ok = spec({ image, command: ['sh', '-c', 'pwd; ls; sleep 3600'], repo: 'https://github.com/octocat/Hello-World', resources: { cpu: '100m', memory: '128Mi' } });
    const nope = spec({ image, command: ['sh'], repo: 'https://github.com/octocat/loom-does-not-exist-repo', resources: { cpu: '100m', memory: '128Mi' } });
    await prov.create(ok);
    created.push(ok.id);
    await prov.create(nope);
    created.push(nope.id);
    await until(() => last(ok.id)?.status === 'running', 'cloned and running', WAIT);
    await until(() => last(nope.id)?.status === 'failed', 'clone failure', WAIT);
    t.match(last(nope.id)?.reason, /^git clone failed: /);
  }

  // reconcile: a pod with no record is removed; only our own ids are in play
  const orphan = spec({ image, command: ['sh'], resources: { cpu: '100m', memory: '64Mi' } });
  await prov.create(orphan);
  created.push(orphan.id);
  const others = (await prov.list()).map((w) => w.id).filter((id) => id !== orphan.id);
  const report = await prov.reconcile([...others, '00000000-0000-4000-8000-000000000000']);
  t.same(report.orphansRemoved, [orphan.id]);
  t.same(report.missing, ['00000000-0000-4000-8000-000000000000']);

  // delete
  await prov.delete(s.id);
  await until(async () => (await prov.get(s.id)) === null, 'pod gone', WAIT);
  await prov.delete(s.id);
  t.pass('deleted, and delete again is fine');
});
