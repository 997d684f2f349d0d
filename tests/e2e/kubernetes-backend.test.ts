/**
 * The real loom-server on the kubernetes backend, against the K8S STAND-IN API server
 * (tests/support/k8s-standin: not a real cluster; it speaks client-node's wire protocol): the
 * same API, WebSocket and lifecycle behaviour as on the local backend.
 */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { K8sStandin, STANDIN_BANNER } from '../support/k8s-standin/index.js';
import { SERVER_BIN, freshDataDir, run, startServer, tempDir } from '../support/server.js';
import { AttachClient, waitUntil } from '../support/attach.js';

type Weaver = { id: string; status: string; reason?: string; expires_at: string };

t.comment(`these tests run loom-server against the ${STANDIN_BANNER}`);

async function kubeServer(t: { teardown(fn: () => Promise<void> | void): void; comment(...a: unknown[]): void }, standin: K8sStandin, env: Record<string, string> = {}) {
  const kubeconfig = join(tempDir('loom-kube-'), 'config');
  writeFileSync(kubeconfig, standin.kubeconfigYaml());
  const srv = await startServer({
    t,
    env: { LOOM_SERVER_WEAVER_BACKEND: 'kubernetes', KUBECONFIG: kubeconfig, LOOM_SERVER_WEAVER_DEFAULT_IMAGE: 'docker.io/library/busybox:1.36', ...env },
  });
  return srv;
}

t.test('weavers as pods: create, running, attach, logs, delete', async (t) => {
  const standin = await K8sStandin.start({ kubelet: 'auto', kubeletDelayMs: 50 });
  t.teardown(() => standin.close());
  const srv = await kubeServer(t, standin, { LOOM_SERVER_WEAVER_MAX_CONCURRENT: '2' });
  const tok = await srv.token('kube');
  const other = await srv.token('someone-else');

  const health = await srv.api<{ checks: Record<string, { ok: boolean; backend?: string }> }>('GET', '/health', null);
  t.equal(health.body.checks['weaver_backend']?.ok, true);

  const created = await srv.api<Weaver>('POST', '/api/weaver', tok, { env: { MODE: 'kube' }, repo: 'https://example.com/org/app.git', branch: 'dev' });
  t.equal(created.status, 202);
  t.equal(created.body.status, 'pending');
  const id = created.body.id;
  const pod = `weaver-${id}`;
  await waitUntil(async () => (await srv.api<Weaver>('GET', `/api/weaver/${id}`, tok)).body.status === 'running', 'running from the watch');
  const p = standin.pod(pod)!;
  t.ok(p, 'a pod named weaver-<id>');
  t.equal(p.metadata.labels?.['app.kubernetes.io/managed-by'], 'loom');
  t.equal((p.spec as { containers: { workingDir?: string }[] }).containers[0]?.workingDir, '/workspace/app');

  // Weaver snapshots and forks need CSI VolumeSnapshots on Kubernetes: a clear 409, nothing made.
  for (const action of ['snapshot', 'fork']) {
    const r = await srv.api<{ error: { code: string; message: string } }>('POST', `/api/weaver/${id}/${action}`, tok, {});
    t.equal(r.status, 409, `${action} on the kubernetes backend`);
    t.equal(r.body.error.code, 'WEAVER_BRANCHING_UNSUPPORTED');
    t.match(r.body.error.message, /VolumeSnapshot/);
  }
  t.equal((await srv.api<{ snapshots: unknown[] }>('GET', '/api/snapshots', tok)).body.snapshots.length, 0, 'no snapshot recorded');
  const fromSnap = await srv.api<{ error: { code: string } }>('POST', '/api/weaver', tok, { from_snapshot: '00000000-0000-4000-8000-000000000000' });
  t.equal(fromSnap.status, 409);
  t.equal(fromSnap.body.error.code, 'weaver_branching_unsupported');

  const a = await AttachClient.connect(srv.url, id, { token: tok });
  a.resize(100, 30);
  a.send('ping-through-pod\n');
  await a.waitFor(/ping-through-pod/);
  await waitUntil(async () => (standin.resizes.get(pod) ?? []).some((r) => r.Width === 100 && r.Height === 30), 'resize reached the pod');
  t.equal(await (async () => {
    try {
      await AttachClient.connect(srv.url, id, { token: other });
      return 101;
    } catch (e) {
      return (e as { status?: number }).status;
    }
  })(), 404, "another org's weaver is 404");
  await a.close();

  standin.appendLog(pod, 'line one\nline two\n');
  const logs = await fetch(`${srv.url}/api/weaver/${id}/logs?tail=10`, { headers: { authorization: `Bearer ${tok}` } }).then((r) => r.text());
  t.match(logs, /data: line two/);

  // The concurrency limit counts pods too.
  const second = await srv.api<Weaver>('POST', '/api/weaver', tok, {});
  t.equal(second.status, 202);
  const third = await srv.api<{ error: { code: string } }>('POST', '/api/weaver', tok, {});
  t.equal(third.status, 429);
  t.equal(third.body.error.code, 'weaver_limit');

  t.equal((await srv.api('DELETE', `/api/weaver/${id}`, tok)).status, 204);
  await waitUntil(async () => !standin.pod(pod), 'pod deleted');
  t.equal((await srv.api('GET', `/api/weaver/${id}`, tok)).status, 404);
  await srv.api('DELETE', `/api/weaver/${second.body.id}`, tok);
});

t.test('a pod that cannot pull its image fails with the reason and is deleted', async (t) => {
  const standin = await K8sStandin.start({ kubelet: 'auto', kubeletDelayMs: 50 });
  t.teardown(() => standin.close());
  const srv = await kubeServer(t, standin);
  const tok = await srv.token('kube');
  const r = await srv.api<Weaver>('POST', '/api/weaver', tok, { image: 'registry.example.com/does-not-exist:1' });
  const failed = await waitUntil(async () => {
    const g = await srv.api<Weaver>('GET', `/api/weaver/${r.body.id}`, tok);
    return g.body.status === 'failed' ? g.body : null;
  }, 'failed');
  t.match(failed.reason, /ErrImagePull/);
  await waitUntil(async () => !standin.pod(`weaver-${r.body.id}`), 'the failed pod is deleted');
});

t.test('a short lifetime deletes the pod at its deadline, not before', async (t) => {
  const standin = await K8sStandin.start({ kubelet: 'auto', kubeletDelayMs: 50 });
  t.teardown(() => standin.close());
  const srv = await kubeServer(t, standin);
  const tok = await srv.token('kube');
  const r = await srv.api<Weaver>('POST', '/api/weaver', tok, { lifetime_hours: 0.0005 }); // 1.8 s
  // The expiry event the server records: when it fired, and the deadline it enforced.
  const ev = await waitUntil(async () => {
    const line = srv.logs.find((l) => l.includes('weaver lifetime ended') && l.includes(r.body.id));
    return line ? (JSON.parse(line) as { expires_at: string; fired_at: string }) : null;
  }, 'the expiry event', 30_000);
  t.equal(ev.expires_at, r.body.expires_at, 'the deadline stored with the weaver');
  t.ok(Date.parse(ev.fired_at) >= Date.parse(ev.expires_at), `fired at ${ev.fired_at}, at or after the deadline ${ev.expires_at}`);
  await waitUntil(async () => (await srv.api('GET', `/api/weaver/${r.body.id}`, tok)).status === 404, 'expired', 20_000);
  t.notOk(standin.pod(`weaver-${r.body.id}`), 'pod gone');
  t.match(await fetch(`${srv.url}/metrics`).then((x) => x.text()), /^loom_weavers_expired_total 1$/m);
});

t.test('a missing namespace stops the server with one clear line', async (t) => {
  const standin = await K8sStandin.start({ namespaces: ['other'] });
  t.teardown(() => standin.close());
  const kubeconfig = join(tempDir('loom-kube-'), 'config');
  writeFileSync(kubeconfig, standin.kubeconfigYaml());
  const r = await run(process.execPath, [SERVER_BIN], {
    env: { ...process.env, LOOM_DATA_DIR: freshDataDir(), LOOM_HTTP_ADDR: '127.0.0.1:0', LOOM_SERVER_WEAVER_BACKEND: 'kubernetes', KUBECONFIG: kubeconfig },
  });
  t.equal(r.code, 1);
  t.match(r.stderr, /^loom-server: kubernetes namespace "loom-weavers" not found at http:\/\/127\.0\.0\.1:\d+: create it with kubectl create namespace loom-weavers\n$/);
});
