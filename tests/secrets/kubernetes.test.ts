/**
 * Secrets on the kubernetes backend: the pod spec (schema-validated with kubernetes-models) never
 * carries a value (no env, envFrom or secretKeyRef), and the real loom-server against the K8S
 * STAND-IN API server (tests/support/k8s-standin: not a real cluster) gives a pod its secrets only
 * for a projected token with audience loom-secrets whose TokenReview names that live pod.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Pod } from 'kubernetes-models/v1';
import { buildPod, SECRETS_AUDIENCE } from '../../src/provisioners/kubernetes/pod-spec.js';
import { K8sStandin, STANDIN_BANNER, extraPodChecks, type JsonPod } from '../support/k8s-standin/index.js';
import { run, startServer, tempDir } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { spec } from '../kubernetes/helpers.js';

t.comment(`the flow test runs loom-server against the ${STANDIN_BANNER}`);

const audit = { enabled: false, image: '', batchIntervalMs: 100, bufferMaxBytes: 1 << 20, metricsPort: 9090, healthPort: 9091, serverUrl: '', retentionDays: 30, maxEventsPerWeaver: 1_000_000 };

/** Every object in a JSON tree, for "no such key anywhere" checks. */
function walk(v: unknown, visit: (o: Record<string, unknown>) => void): void {
  if (Array.isArray(v)) v.forEach((x) => walk(x, visit));
  else if (v && typeof v === 'object') {
    visit(v as Record<string, unknown>);
    Object.values(v).forEach((x) => walk(x, visit));
  }
}

t.test('pod spec: an in-memory volume filled by an init container from a projected token', async (t) => {
  const pod = buildPod(spec({ env: { MODE: 'x' }, repo: 'https://example.com/a/b.git' }), { namespace: 'loom-weavers', imagePullSecrets: [], audit, secrets: { url: 'http://loom.loom-system.svc:18090', sizeLimit: '1Mi' } });
  const wire = JSON.parse(JSON.stringify(pod)) as JsonPod;
  t.doesNotThrow(() => new Pod(wire as never).validate(), 'valid against the Kubernetes schema');
  t.same(extraPodChecks(wire), []);
  walk(wire, (o) => {
    t.notOk('envFrom' in o, 'no envFrom');
    t.notOk('secretKeyRef' in o, 'no secretKeyRef');
    t.notOk('secret' in o && typeof o['secret'] === 'object', 'no secret volume');
  });
  const s = pod.spec!;
  t.equal(s.automountServiceAccountToken, false, 'the default service-account token is not mounted');
  const vol = s.volumes!.find((v) => v.name === 'loom-secrets')!;
  t.same(vol.emptyDir, { medium: 'Memory', sizeLimit: '1Mi' });
  const tok = s.volumes!.find((v) => v.name === 'loom-secrets-token')!;
  t.same(tok.projected?.sources, [{ serviceAccountToken: { audience: SECRETS_AUDIENCE, expirationSeconds: 600, path: 'token' } }]);
  const init = s.initContainers!.find((c) => c.name === 'loom-secrets')!;
  t.ok(init, 'the secrets init container');
  t.equal(s.initContainers![0]!.name, 'loom-secrets', 'it runs before the clone');
  t.notOk(init.env, 'no environment in the init container');
  t.equal(init.command![init.command!.length - 1], 'http://loom.loom-system.svc:18090', 'the server URL is an argument, the token is read from the projected file');
  const main = s.containers[0]!;
  t.same(main.volumeMounts!.find((m) => m.name === 'loom-secrets'), { name: 'loom-secrets', mountPath: '/run/secrets/loom', readOnly: true }, 'read-only in the weaver');
  t.notOk(main.volumeMounts!.some((m) => m.name === 'loom-secrets-token'), 'the weaver never sees the token');
  t.same(main.env!.map((e) => [e.name, e.value]), [['MODE', 'x'], ['LOOM_SECRETS_DIR', '/run/secrets/loom']], 'the environment holds the directory only');
  // Without LOOM_SECRETS_K8S_URL nothing is added.
  const plain = buildPod(spec(), { namespace: 'loom-weavers', imagePullSecrets: [], audit });
  t.notOk(JSON.stringify(plain).includes('loom-secrets'));
});

t.test('a pod gets its secrets for its own audience-bound token, and nothing otherwise', async (t) => {
  const standin = await K8sStandin.start({ kubelet: 'auto', kubeletDelayMs: 50 });
  t.teardown(() => standin.close());
  const kubeconfig = join(tempDir('loom-kube-'), 'config');
  writeFileSync(kubeconfig, standin.kubeconfigYaml());
  const srv = await startServer({
    env: { LOOM_SERVER_WEAVER_BACKEND: 'kubernetes', KUBECONFIG: kubeconfig, LOOM_SERVER_WEAVER_DEFAULT_IMAGE: 'docker.io/library/busybox:1.36', LOOM_SECRETS_K8S_URL: 'http://loom.loom-system.svc:18090' },
  });
  t.teardown(() => srv.stop());
  const alice = await srv.token('alice');
  const mallory = await srv.token('mallory');
  const org = (await srv.api<{ orgs: { id: string }[] }>('GET', '/api/orgs', alice)).body.orgs[0]!.id;
  const VALUE = `sk-${randomBytes(20).toString('hex')}`;
  t.equal((await srv.api('POST', '/api/secrets', alice, { name: 'OPENAI_API_KEY', scope: 'org', org_id: org, value_b64: Buffer.from(VALUE).toString('base64') })).status, 201);

  const mk = async (tok: string) => {
    const w = await srv.api<{ id: string }>('POST', '/api/weaver', tok, {});
    await waitUntil(async () => (await srv.api<{ status: string }>('GET', `/api/weaver/${w.body.id}`, tok)).body.status === 'running', 'running');
    return { id: w.body.id, pod: standin.pod(`weaver-${w.body.id}`)! };
  };
  const a = await mk(alice);
  const m = await mk(mallory);
  const fetchWith = (token: string | null, body?: unknown) =>
    fetch(`${srv.url}/internal/secrets/k8s/fetch`, { method: 'POST', headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : null });

  // The pod's own token: a tar of 0400 files with the value.
  const good = standin.issueServiceAccountToken({ podName: a.pod.metadata.name, podUid: a.pod.metadata.uid!, audience: SECRETS_AUDIENCE });
  const res = await fetchWith(good);
  t.equal(res.status, 200);
  t.equal(res.headers.get('content-type'), 'application/x-tar');
  const dir = tempDir('loom-k8s-secrets-');
  writeFileSync(join(dir, 'b.tar'), Buffer.from(await res.arrayBuffer()));
  mkdirSync(join(dir, 'out'));
  execFileSync('tar', ['-xf', join(dir, 'b.tar'), '-C', join(dir, 'out')]);
  t.same(readdirSync(join(dir, 'out')), ['OPENAI_API_KEY']);
  t.equal(readFileSync(join(dir, 'out', 'OPENAI_API_KEY'), 'utf8'), VALUE, 'the value, unpacked by tar');
  t.equal(statSync(join(dir, 'out', 'OPENAI_API_KEY')).mode & 0o777, 0o400, 'mode 0400');

  // Refusals: another audience, a pod that is not the token's, a replaced pod, no token, a body naming a pod.
  const cases: [string, string | null, unknown][] = [
    ['another audience', standin.issueServiceAccountToken({ podName: a.pod.metadata.name, podUid: a.pod.metadata.uid!, audience: 'https://kubernetes.default.svc' }), undefined],
    ['a pod that does not exist', standin.issueServiceAccountToken({ podName: 'weaver-nope', podUid: 'x', audience: SECRETS_AUDIENCE }), undefined],
    ['the right name, another UID (a replaced pod)', standin.issueServiceAccountToken({ podName: a.pod.metadata.name, podUid: 'standin-old-uid', audience: SECRETS_AUDIENCE }), undefined],
    ['a service account of another namespace', standin.issueServiceAccountToken({ podName: a.pod.metadata.name, podUid: a.pod.metadata.uid!, audience: SECRETS_AUDIENCE, namespace: 'default' }), undefined],
    ['a forged token', `standin-sa.${randomBytes(24).toString('base64url')}`, undefined],
    ['no token', null, undefined],
  ];
  for (const [what, token, body] of cases) {
    const r = await fetchWith(token, body);
    t.equal(r.status, 401, `${what}: 401`);
    t.notOk((await r.text()).includes(VALUE));
  }
  // Mallory's pod, with its own valid token, naming alice's pod in the body: gets its own (empty) set.
  const mt = standin.issueServiceAccountToken({ podName: m.pod.metadata.name, podUid: m.pod.metadata.uid!, audience: SECRETS_AUDIENCE });
  const mr = await fetch(`${srv.url}/internal/secrets/k8s/fetch`, { method: 'POST', headers: { authorization: `Bearer ${mt}`, 'content-type': 'application/json' }, body: JSON.stringify({ pod: a.pod.metadata.name, weaver_id: a.id }) });
  t.equal(mr.status, 200);
  const mbuf = Buffer.from(await mr.arrayBuffer());
  t.notOk(mbuf.includes(VALUE), 'the body does not choose the pod: mallory\'s pod gets nothing of alice\'s');
  t.equal(mbuf.length, 1024, 'an empty tar');

  t.ok(standin.tokenReviews.length >= 6, 'every token went through TokenReview');
  t.ok(standin.tokenReviews.every((r) => r.audiences.length === 1 && r.audiences[0] === SECRETS_AUDIENCE), 'always with audience loom-secrets');
  const podJson = JSON.stringify([standin.pod(`weaver-${a.id}`), standin.pod(`weaver-${m.id}`)]);
  t.notOk(podJson.includes(VALUE), 'the value is not in the pod spec the stand-in received');
  t.notOk(srv.logs.join('\n').includes(VALUE), 'nor in the server log');
  const log = await srv.api<{ entries: { weaver_id: string | null; name: string | null; outcome: string; purpose: string; reason: string | null }[] }>('GET', `/api/secrets/log?org_id=${org}`, alice);
  t.ok(log.body.entries.some((e) => e.weaver_id === a.id && e.name === 'OPENAI_API_KEY' && e.outcome === 'read' && e.purpose === 'k8s-init'), 'the read is in the access log');
  t.notOk(JSON.stringify(log.body).includes(VALUE));

  // A weaver on a repository with a repo-scoped GIT_TOKEN: the bundle has the clone token file.
  const repo = 'https://git.example.com/acme/private.git';
  t.equal((await srv.api('POST', '/api/secrets', alice, { name: 'GIT_TOKEN', scope: 'repo', org_id: org, repo, value_b64: Buffer.from('tok-xyz').toString('base64') })).status, 201);
  const rw = await srv.api<{ id: string }>('POST', '/api/weaver', alice, { repo });
  await waitUntil(async () => (await srv.api<{ status: string }>('GET', `/api/weaver/${rw.body.id}`, alice)).body.status === 'running', 'running');
  const rp = standin.pod(`weaver-${rw.body.id}`)!;
  const rr = await fetchWith(standin.issueServiceAccountToken({ podName: rp.metadata.name, podUid: rp.metadata.uid!, audience: SECRETS_AUDIENCE }));
  t.equal(rr.status, 200);
  writeFileSync(join(dir, 'r.tar'), Buffer.from(await rr.arrayBuffer()));
  mkdirSync(join(dir, 'rout'));
  execFileSync('tar', ['-xf', join(dir, 'r.tar'), '-C', join(dir, 'rout')]);
  t.equal(readFileSync(join(dir, 'rout', '.git-token'), 'utf8'), 'tok-xyz', 'the clone token for the clone container');
  t.notOk(JSON.stringify(standin.pod(rp.metadata.name)).includes('tok-xyz'), 'not in the pod spec');
  t.equal((await srv.api('DELETE', `/api/weaver/${rw.body.id}`, alice)).status, 204);

  // Deleted weaver: its pod's token no longer works.
  t.equal((await srv.api('DELETE', `/api/weaver/${a.id}`, alice)).status, 204);
  t.equal((await fetchWith(good)).status, 401, 'after delete, refused');
});

t.test('kubernetes private clone: the clone container reads the token from the in-memory volume through a credential helper', async (t) => {
  const pod = buildPod(spec({ repo: 'https://git.example.com/acme/app.git', gitSecret: 'DEPLOY_TOKEN' }), { namespace: 'loom-weavers', imagePullSecrets: [], audit, secrets: { url: 'http://loom:18090', sizeLimit: '1Mi' } });
  const wire = JSON.parse(JSON.stringify(pod)) as JsonPod;
  t.doesNotThrow(() => new Pod(wire as never).validate());
  const clone = pod.spec!.initContainers!.find((c) => c.name === 'git-clone')!;
  t.same(pod.spec!.initContainers!.map((c) => c.name), ['loom-secrets', 'git-clone'], 'secrets first, then the clone');
  t.same(clone.volumeMounts!.find((m) => m.name === 'loom-secrets'), { name: 'loom-secrets', mountPath: '/run/secrets/loom', readOnly: true });
  t.equal(pod.metadata!.annotations!['loom.dev/git-secret'], 'DEPLOY_TOKEN', 'the secret\'s name (never its value) rides on the pod');
  t.equal(clone.command![clone.command!.length - 2], 'https://git.example.com/acme/app.git', 'the URL as given, no credentials in it');

  // Run that exact argv against a private HTTPS repository, with the volume stood in for by a
  // tmpfs over /run in a private mount namespace, and the destination moved to a temp dir.
  const dir = tempDir('loom-k8s-clone-');
  const token = `ghp_${randomBytes(16).toString('hex')}`;
  const { startGitHttps } = await import('../support/git-https-auth.js');
  const git = await startGitHttps(dir, token, { app: { 'x.txt': 'cloned\n' } });
  t.teardown(() => git.close());
  const argv = buildPod(spec({ repo: git.url('app') }), { namespace: 'loom-weavers', imagePullSecrets: [], audit, secrets: { url: 'http://loom:18090', sizeLimit: '1Mi' } })
    .spec!.initContainers!.find((c) => c.name === 'git-clone')!.command!.slice(0, -1);
  writeFileSync(join(dir, 'tok'), token);
  const dest = join(dir, 'out');
  // Asynchronously: the HTTPS server answering git lives in this process.
  const r = await run('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs loom-test /run && mkdir -p /run/secrets/loom && cp "$0" /run/secrets/loom/.git-token && exec "$@"', join(dir, 'tok'), ...argv, dest], {
    env: { PATH: process.env.PATH!, GIT_SSL_CAINFO: git.caFile, GIT_TERMINAL_PROMPT: '0', HOME: dir, GIT_CONFIG_NOSYSTEM: '1' },
    timeoutMs: 120_000,
  });
  t.equal(r.code, 0, r.stderr);
  t.notOk(r.stderr.includes(token), 'git printed no token');
  t.equal(readFileSync(join(dest, 'x.txt'), 'utf8'), 'cloned\n', 'cloned with the token from the file');
  t.notOk(argv.some((a) => a.includes(token)), 'the token is not in argv');
  t.ok(git.authHeaders.includes(`Basic ${Buffer.from(`x-access-token:${token}`).toString('base64')}`));
});
