import t from 'tap';
import { Pod } from 'kubernetes-models/v1';
import type { V1Pod } from '@kubernetes/client-node';
import { TUNNEL_SIDECAR_SCRIPT, buildPod, cloneCommand, repoDirName, type PodSpecOptions } from '../../src/provisioners/kubernetes/pod-spec.js';
import { isValidLabelValue, isValidPodName, toLabelValue } from '../../src/provisioners/kubernetes/labels.js';
import { extraPodChecks, type JsonPod } from '../support/k8s-standin/index.js';
import { spec } from './helpers.js';

const audit = { enabled: true, image: 'ghcr.io/loom/audit-sidecar:1.0', batchIntervalMs: 250, bufferMaxBytes: 64 * 1024 * 1024, metricsPort: 9090, healthPort: 9091, serverUrl: 'http://loom.loom-system.svc:18090', retentionDays: 30, maxEventsPerWeaver: 1000000 };
const noAudit = { ...audit, enabled: false };

/** The pod as it goes over the wire, validated like the API server would (schema + a few rules). */
function validate(pod: V1Pod): void {
  const wire = JSON.parse(JSON.stringify(pod)) as JsonPod;
  new Pod(wire as unknown as ConstructorParameters<typeof Pod>[0]).validate();
  const extra = extraPodChecks(wire);
  if (extra.length) throw new Error(extra.join('; '));
}

t.test('negative control: the schema validator rejects broken pods', async (t) => {
  const good = buildPod(spec(), { namespace: 'loom-weavers', imagePullSecrets: [], audit: noAudit });
  t.doesNotThrow(() => validate(good));
  const badType = JSON.parse(JSON.stringify(good)) as { spec: { containers: { image: unknown; tty: unknown }[] } };
  badType.spec.containers[0].image = 42;
  t.throws(() => new Pod(badType as never).validate(), /image must be string/, 'a number image is rejected');
  const badQty = JSON.parse(JSON.stringify(good)) as { spec: { containers: { resources: { limits: { cpu: string } } }[] } };
  badQty.spec.containers[0].resources.limits.cpu = 'lots';
  t.throws(() => new Pod(badQty as never).validate(), /quantity/, 'a bad quantity is rejected');
  const badRestart = JSON.parse(JSON.stringify(good)) as { spec: { restartPolicy: unknown } };
  badRestart.spec.restartPolicy = ['Never'];
  t.throws(() => new Pod(badRestart as never).validate(), 'an array restartPolicy is rejected');
  const badLabel = JSON.parse(JSON.stringify(good)) as JsonPod;
  badLabel.metadata.labels = { 'loom.dev/owner': 'user@example.com/x' };
  t.throws(() => validate(badLabel as V1Pod), /label/, 'a bad label value is rejected');
});

const variants: { name: string; s: Parameters<typeof spec>[0]; o: Partial<PodSpecOptions> }[] = [
  { name: 'minimal', s: {}, o: {} },
  { name: 'repo', s: { repo: 'https://github.com/acme/widgets.git' }, o: {} },
  { name: 'repo+branch', s: { repo: 'https://github.com/acme/widgets', branch: 'feature/new-api' }, o: {} },
  { name: 'env', s: { env: { NODE_ENV: 'production', DEBUG: 'true', EMPTY: '' } }, o: {} },
  { name: 'resources', s: { resources: { cpu: '500m', memory: '512Mi' } }, o: {} },
  { name: 'command', s: { command: ['sh', '-c', 'sleep infinity'] }, o: {} },
  { name: 'pull secrets', s: {}, o: { imagePullSecrets: ['ghcr-secret', 'other'] } },
  { name: 'audit', s: {}, o: { audit } },
  { name: 'tunnel', s: {}, o: { tunnel: { image: 'ghcr.io/loom/wireguard:1.0' } } },
  { name: 'tunnel+audit+secrets+repo', s: { repo: 'https://github.com/acme/widgets' }, o: { audit, tunnel: { image: 'ghcr.io/loom/wireguard:1.0' }, secrets: { url: 'http://loom:18090', sizeLimit: '1Mi' } } },
  { name: 'git image', s: { repo: 'https://example.com/r.git' }, o: { gitImage: 'docker.io/alpine/git:2.45.2' } },
  {
    name: 'everything',
    s: { repo: 'https://github.com/acme/widgets', branch: 'main', env: { A: '1' }, resources: { cpu: '2', memory: '4Gi' }, command: ['bash'], tags: { team: 'core', 'a b': 'c"d' }, lifetimeHours: 0.5 },
    o: { imagePullSecrets: ['ghcr-secret'], audit },
  },
  { name: 'odd ids', s: { orgId: 'org with spaces & symbols!', ownerUserId: 'x'.repeat(80) + '@example.com' }, o: {} },
];

for (const v of variants) {
  t.test(`pod variant "${v.name}" is a valid Kubernetes Pod`, async (t) => {
    const pod = buildPod(spec(v.s), { namespace: 'loom-weavers', imagePullSecrets: [], audit: noAudit, ...v.o });
    t.doesNotThrow(() => validate(pod));
  });
}

t.test('main container fields', async (t) => {
  const s = spec({ env: { B: '2', A: '1' }, resources: { cpu: '500m', memory: '512Mi' }, command: ['sh'] });
  const pod = buildPod(s, { namespace: 'loom-weavers', imagePullSecrets: ['ghcr-secret'], audit: noAudit });
  t.equal(pod.metadata?.name, `weaver-${s.id}`);
  t.equal(pod.metadata?.namespace, 'loom-weavers');
  t.same(pod.metadata?.labels, {
    'app.kubernetes.io/managed-by': 'loom',
    'loom.dev/weaver-id': s.id,
    'loom.dev/org-id': s.orgId,
    'loom.dev/owner': s.ownerUserId,
  });
  t.equal(pod.metadata?.annotations?.['loom.dev/lifetime-hours'], '4');
  t.equal(pod.metadata?.annotations?.['loom.dev/expires-at'], '2026-01-01T04:00:00.000Z');
  t.equal(pod.metadata?.annotations?.['loom.dev/tags'], '{}');
  const ps = pod.spec!;
  t.equal(ps.restartPolicy, 'Never');
  t.equal(ps.activeDeadlineSeconds, 4 * 3600);
  t.same(ps.imagePullSecrets, [{ name: 'ghcr-secret' }]);
  t.equal(ps.securityContext?.fsGroup, 1000);
  t.same(ps.volumes, [{ name: 'workspace', emptyDir: {} }]);
  t.equal(ps.initContainers, undefined, 'no init containers without repo or audit');
  t.equal(ps.containers.length, 1);
  const c = ps.containers[0];
  t.equal(c.name, 'weaver');
  t.equal(c.image, s.image);
  t.same(c.command, ['sh']);
  t.equal(c.tty, true);
  t.equal(c.stdin, true);
  t.equal(c.stdinOnce, false);
  t.equal(c.workingDir, '/workspace');
  t.same(c.env, [{ name: 'A', value: '1' }, { name: 'B', value: '2' }]);
  t.same(c.resources, { requests: { cpu: '500m', memory: '512Mi' }, limits: { cpu: '500m', memory: '512Mi' } });
  t.same(c.securityContext, {
    runAsNonRoot: true,
    runAsUser: 1000,
    runAsGroup: 1000,
    allowPrivilegeEscalation: false,
    capabilities: { drop: ['ALL'] },
    seccompProfile: { type: 'RuntimeDefault' },
  });
  t.same(c.volumeMounts, [{ name: 'workspace', mountPath: '/workspace' }]);
});

t.test('no command keeps the image entrypoint; no pull secrets, no field', async (t) => {
  const pod = buildPod(spec(), { namespace: 'ns', imagePullSecrets: [], audit: noAudit });
  t.notOk('command' in pod.spec!.containers[0]);
  t.notOk('args' in pod.spec!.containers[0]);
  t.notOk('imagePullSecrets' in pod.spec!);
  t.notOk('env' in pod.spec!.containers[0]);
});

t.test('repo and branch: clone init container and working directory', async (t) => {
  const s = spec({ repo: 'https://github.com/acme/widgets.git', branch: 'feature/x' });
  const pod = buildPod(s, { namespace: 'ns', imagePullSecrets: [], audit: noAudit });
  const init = pod.spec!.initContainers!;
  t.equal(init.length, 1);
  t.equal(init[0].name, 'git-clone');
  t.equal(init[0].image, s.image, 'the weaver image clones by default');
  t.same(init[0].command, ['git', 'clone', '--depth', '1', '--branch', 'feature/x', '--', 'https://github.com/acme/widgets.git', '/workspace/widgets']);
  t.equal(init[0].args, undefined);
  t.same(init[0].volumeMounts, [{ name: 'workspace', mountPath: '/workspace' }]);
  t.equal(init[0].securityContext?.runAsUser, 1000);
  t.equal(init[0].terminationMessagePolicy, 'FallbackToLogsOnError');
  t.equal(pod.spec!.containers[0].workingDir, '/workspace/widgets');

  const nob = buildPod(spec({ repo: 'https://github.com/acme/widgets' }), { namespace: 'ns', imagePullSecrets: [], audit: noAudit, gitImage: 'alpine/git:2' });
  t.same(nob.spec!.initContainers![0].command, ['git', 'clone', '--depth', '1', '--', 'https://github.com/acme/widgets', '/workspace/widgets']);
  t.equal(nob.spec!.initContainers![0].image, 'alpine/git:2');
  t.same(cloneCommand('https://x/y/-rf', 'b'), ['git', 'clone', '--depth', '1', '--branch', 'b', '--', 'https://x/y/-rf', '/workspace/-rf'], '-- keeps a URL from being an option');
});

t.test('repoDirName', async (t) => {
  t.equal(repoDirName('https://github.com/acme/widgets.git'), 'widgets');
  t.equal(repoDirName('https://github.com/acme/widgets/'), 'widgets');
  t.equal(repoDirName('https://example.com/'), 'repo');
  t.equal(repoDirName('https://example.com/a/..'), 'repo');
  t.equal(repoDirName('https://example.com/a/we ird%20name'), 'we-ird-name');
});

t.test('activeDeadlineSeconds follows the lifetime', async (t) => {
  t.equal(buildPod(spec({ lifetimeHours: 48 }), { namespace: 'ns', imagePullSecrets: [], audit: noAudit }).spec!.activeDeadlineSeconds, 172800);
  t.equal(buildPod(spec({ lifetimeHours: 0.0001 }), { namespace: 'ns', imagePullSecrets: [], audit: noAudit }).spec!.activeDeadlineSeconds, 1);
});

t.test('audit sidecar is a native sidecar with the configured settings', async (t) => {
  const s = spec({ repo: 'https://github.com/acme/widgets' });
  const pod = buildPod(s, { namespace: 'ns', imagePullSecrets: [], audit });
  const init = pod.spec!.initContainers!;
  t.same(init.map((c) => c.name), ['audit-sidecar', 'git-clone'], 'the sidecar starts first so it sees the clone too');
  const sc = init[0];
  t.equal(sc.image, audit.image);
  t.equal(sc.restartPolicy, 'Always');
  t.same(sc.ports, [
    { name: 'metrics', containerPort: 9090, protocol: 'TCP' },
    { name: 'health', containerPort: 9091, protocol: 'TCP' },
  ]);
  const env = Object.fromEntries((sc.env ?? []).filter((e) => e.value !== undefined).map((e) => [e.name, e.value]));
  t.equal(env.LOOM_AUDIT_BATCH_INTERVAL_MS, '250');
  t.equal(env.LOOM_AUDIT_BUFFER_MAX_BYTES, String(64 * 1024 * 1024));
  t.equal(env.LOOM_WEAVER_ID, s.id);
  t.same(sc.livenessProbe?.httpGet, { path: '/health', port: 'health' });
  t.same(sc.readinessProbe?.httpGet, { path: '/health', port: 'health' });
  t.same(sc.securityContext?.capabilities, { drop: ['ALL'], add: ['BPF', 'PERFMON', 'SYS_RESOURCE'] });
  t.notOk(sc.securityContext?.capabilities?.add?.includes('SYS_ADMIN'));
  t.equal(sc.securityContext?.allowPrivilegeEscalation, false);
  t.equal(sc.resources?.limits?.memory, `${64 + 128}Mi`);
  t.equal(pod.spec!.containers.length, 1, 'the sidecar is not a regular container');
  t.same(sc.command, ['loom-audit-sidecar'], 'runs the audit sidecar bin');
  t.equal(env.LOOM_AUDIT_WEAVER_ID, s.id);
  t.equal(env.LOOM_AUDIT_ORG_ID, s.orgId);
  // the credential: a file from the weaver's own Secret, mounted read-only into the sidecar alone
  t.notOk((sc.env ?? []).some((e) => e.name === 'LOOM_AUDIT_TOKEN'), 'no token in the env');
  t.equal(env.LOOM_AUDIT_TOKEN_FILE, '/var/run/loom-audit/token');
  t.same((sc.volumeMounts ?? []).find((m) => m.name === 'audit-token'), { name: 'audit-token', mountPath: '/var/run/loom-audit', readOnly: true });
  const tokenVol = (pod.spec!.volumes ?? []).find((v) => v.name === 'audit-token');
  t.same(tokenVol?.secret, { secretName: `loom-audit-${s.id}`, defaultMode: 0o400, items: [{ key: 'token', path: 'token' }] }, 'the weaver\'s Secret, owner-read only');
  t.notOk([...pod.spec!.containers, ...init.slice(1)].some((c) => (c.volumeMounts ?? []).some((m) => m.name === 'audit-token')), 'no other container mounts it');
  t.equal(env.LOOM_AUDIT_SERVER_URL, 'http://loom.loom-system.svc:18090', 'the server URL from the config');
  t.equal((sc.env ?? []).find((e) => e.name === 'LOOM_AUDIT_POD_UID')?.valueFrom?.fieldRef?.fieldPath, 'metadata.uid', 'the pod UID finds its cgroup');
  const vols = Object.fromEntries((pod.spec!.volumes ?? []).map((v) => [v.name, v]));
  t.equal(vols['host-cgroup']?.hostPath?.path, '/sys/fs/cgroup');
  t.ok((sc.volumeMounts ?? []).filter((m) => m.name.startsWith('host-')).every((m) => m.readOnly), 'host paths read-only');
});

t.test('wireguard sidecar: NET_ADMIN only, the TUN device from the host, the key from the weaver\'s Secret', async (t) => {
  const s = spec({ repo: 'https://github.com/acme/widgets', env: { A: '1' } });
  const pod = buildPod(s, { namespace: 'ns', imagePullSecrets: [], audit, tunnel: { image: 'ghcr.io/loom/wireguard:1.0' } });
  const init = pod.spec!.initContainers!;
  t.same(init.map((c) => c.name), ['audit-sidecar', 'wireguard', 'git-clone']);
  const wg = init[1]!;
  t.equal(wg.image, 'ghcr.io/loom/wireguard:1.0');
  t.equal(wg.restartPolicy, 'Always', 'a native sidecar');
  t.same(wg.command, ['sh', '-c', TUNNEL_SIDECAR_SCRIPT]);
  t.same(wg.ports, [{ name: 'wireguard', containerPort: 51820, protocol: 'UDP' }]);
  t.same(wg.securityContext?.capabilities, { drop: ['ALL'], add: ['NET_ADMIN'] }, 'NET_ADMIN and nothing else');
  t.equal(wg.securityContext?.privileged, false, 'not privileged');
  t.equal(wg.securityContext?.allowPrivilegeEscalation, false);
  t.equal(wg.env, undefined, 'no environment at all (the key is a file)');
  const vols = Object.fromEntries((pod.spec!.volumes ?? []).map((v) => [v.name, v]));
  t.same(vols['wg-key']?.secret, { secretName: `loom-wg-${s.id}`, defaultMode: 0o400, items: [{ key: 'private-key', path: 'private-key' }, { key: 'address', path: 'address' }] });
  t.same(vols['dev-net-tun']?.hostPath, { path: '/dev/net/tun', type: 'CharDevice' }, 'the TUN device node, nothing else of the host');
  t.same(wg.volumeMounts, [
    { name: 'wg-key', mountPath: '/var/run/loom-wg', readOnly: true },
    { name: 'dev-net-tun', mountPath: '/dev/net/tun' },
  ]);
  const others = [...pod.spec!.containers, ...init.filter((c) => c.name !== 'wireguard')];
  t.notOk(others.some((c) => (c.volumeMounts ?? []).some((m) => m.name === 'wg-key' || m.name === 'dev-net-tun')), 'no other container mounts the key or the device');
  t.notOk(others.some((c) => c.securityContext?.capabilities?.add?.includes('NET_ADMIN')), 'no other container gets NET_ADMIN');
  t.same(pod.spec!.containers[0]!.securityContext?.capabilities, { drop: ['ALL'] }, 'the weaver container keeps no capability');
  t.notMatch(JSON.stringify(pod), /PRIVATE|private_key"|BEGIN/, 'no key material anywhere in the spec');
  const without = buildPod(s, { namespace: 'ns', imagePullSecrets: [], audit: noAudit });
  t.notOk((without.spec!.volumes ?? []).some((v) => v.name === 'wg-key' || v.name === 'dev-net-tun'), 'without the tunnel setting: no sidecar volumes');
  t.notOk((without.spec!.initContainers ?? []).some((c) => c.name === 'wireguard'));
});

t.test('label values', async (t) => {
  t.ok(isValidLabelValue('0b1e7f6a-1c2d-4e5f-8a9b-000000000001'));
  t.notOk(isValidLabelValue('a@b'));
  t.notOk(isValidLabelValue('x'.repeat(64)));
  t.equal(toLabelValue('user@example.com'), 'user-example.com');
  t.equal(toLabelValue('--x--'), 'x');
  t.ok(isValidLabelValue(toLabelValue('y'.repeat(70) + '!')));
  t.ok(isValidPodName('weaver-0b1e7f6a-1c2d-4e5f-8a9b-000000000001'));
});
