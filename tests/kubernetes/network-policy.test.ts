/**
 * Weaver NetworkPolicies on the Kubernetes backend (issue 9 item 15), created through the K8S
 * STAND-IN API server (tests/support/k8s-standin — not a cluster), which validates them against
 * the published schema (kubernetes-models) and the API server's CIDR rules. A small evaluator
 * then asks who may talk to a weaver pod under the stored policies.
 */
import t, { type Test } from 'tap';
import { KubernetesProvisioner } from '../../src/provisioners/kubernetes/provisioner.js';
import { EGRESS_POLICY, INGRESS_POLICY, SERVER_POD_LABELS } from '../../src/provisioners/kubernetes/network-policy.js';
import { TUNNEL_PORT } from '../../src/provisioners/kubernetes/pod-spec.js';
import { K8sStandin, cidrContains, parseCidr, parseIp, validateNetworkPolicy } from '../support/k8s-standin/index.js';
import { k8sConfig, silentLog } from './helpers.js';

type Sel = { matchLabels?: Record<string, string> };
type Peer = { podSelector?: Sel; namespaceSelector?: Sel; ipBlock?: { cidr: string; except?: string[] } };
type Policy = { metadata: { name: string; resourceVersion: string }; spec: { podSelector: Sel; policyTypes: string[]; ingress?: { from?: Peer[]; ports?: { protocol: string; port: number }[] }[]; egress?: { to?: Peer[]; ports?: { protocol: string; port: number }[] }[] } };

// Kubernetes semantics: a rule without `to`/`from` (or an empty one) matches every peer.
/** A destination as the CNI sees it: a pod (labels, namespace labels, ip) or a bare address. */
interface Endpoint {
  ip: string;
  pod?: { labels: Record<string, string>; nsLabels: Record<string, string> };
}

const matches = (sel: Sel | undefined, labels: Record<string, string>) => !sel || Object.entries(sel.matchLabels ?? {}).every(([k, v]) => labels[k] === v);
function peerMatches(p: Peer, e: Endpoint): boolean {
  if (p.ipBlock) {
    const block = parseCidr(p.ipBlock.cidr)!;
    const ip = parseIp(e.ip)!;
    if (ip.v6 !== block.v6 || !cidrContains(block, ip.value)) return false;
    return !(p.ipBlock.except ?? []).some((x) => {
      const c = parseCidr(x)!;
      return c.v6 === ip.v6 && cidrContains(c, ip.value);
    });
  }
  // Selectors only ever match pods; a namespaceSelector alone or with a podSelector.
  if (!e.pod) return false;
  return (p.namespaceSelector ? matches(p.namespaceSelector, e.pod.nsLabels) : true) && matches(p.podSelector, e.pod.labels);
}
const egressAllowed = (pols: Policy[], to: Endpoint, port: number, protocol = 'TCP') =>
  pols.filter((p) => p.spec.policyTypes.includes('Egress')).some((p) => (p.spec.egress ?? []).some((r) => (!r.ports || r.ports.some((x) => x.port === port && x.protocol === protocol)) && (!r.to?.length || r.to.some((peer) => peerMatches(peer, to)))));
const ingressAllowed = (pols: Policy[], from: Endpoint) =>
  pols.filter((p) => p.spec.policyTypes.includes('Ingress')).some((p) => (p.spec.ingress ?? []).some((r) => (!r.from?.length || r.from.some((peer) => peerMatches(peer, from)))));
/** Ingress on one port: a rule without `ports` allows every port (Kubernetes semantics). */
const ingressAllowedOn = (pols: Policy[], from: Endpoint, port: number, protocol: string) =>
  pols
    .filter((p) => p.spec.policyTypes.includes('Ingress'))
    .some((p) => (p.spec.ingress ?? []).some((r) => (!r.ports || r.ports.some((x) => x.port === port && x.protocol === protocol)) && (!r.from?.length || r.from.some((peer) => peerMatches(peer, from)))));

const weaverPod = (ip: string): Endpoint => ({ ip, pod: { labels: { 'app.kubernetes.io/managed-by': 'loom', 'loom.dev/org-id': 'other-org' }, nsLabels: { 'kubernetes.io/metadata.name': 'loom-weavers' } } });
const serverPod: Endpoint = { ip: '10.42.0.9', pod: { labels: SERVER_POD_LABELS, nsLabels: { 'kubernetes.io/metadata.name': 'loom' } } };
const dns: Endpoint = { ip: '10.42.0.3', pod: { labels: { 'k8s-app': 'kube-dns' }, nsLabels: { 'kubernetes.io/metadata.name': 'kube-system' } } };

async function started(t: Test, over: Parameters<typeof k8sConfig>[0] = {}, standin?: K8sStandin) {
  const s = standin ?? (await K8sStandin.start());
  if (!standin) t.teardown(() => s.close());
  const prov = new KubernetesProvisioner({ config: k8sConfig(over), log: silentLog(), kubeConfig: s.kubeConfig() });
  t.teardown(() => prov.close());
  return { standin: s, prov };
}
const stored = (s: K8sStandin) => [...s.networkPolicies.values()] as unknown as Policy[];

t.test('negative control: the stand-in rejects policies the API server would', async (t) => {
  const ok = { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'x' }, spec: { podSelector: {}, policyTypes: ['Egress'], egress: [{ to: [{ ipBlock: { cidr: '0.0.0.0/0', except: ['10.0.0.0/8'] } }] }] } };
  t.same(validateNetworkPolicy(ok, 'ns'), [], 'a good policy passes');
  const badPort = structuredClone(ok) as unknown as { spec: { egress: { ports: unknown }[] } };
  badPort.spec.egress[0]!.ports = [{ protocol: 'TCP', port: { nope: 1 } }];
  t.ok(validateNetworkPolicy(badPort as never, 'ns').length > 0, 'a port that is an object is refused (schema)');
  const badTypes = structuredClone(ok) as unknown as { spec: { policyTypes: unknown } };
  badTypes.spec.policyTypes = 'Egress';
  t.ok(validateNetworkPolicy(badTypes as never, 'ns').length > 0, 'policyTypes that is not a list is refused (schema)');
  const badExcept = structuredClone(ok);
  badExcept.spec.egress[0]!.to[0]!.ipBlock.except = ['fc00::/7'];
  t.ok(validateNetworkPolicy(badExcept, 'ns').length > 0, 'an except outside its cidr is refused');
  const badCidr = structuredClone(ok);
  badCidr.spec.egress[0]!.to[0]!.ipBlock.cidr = '10.0.0.0/33';
  t.ok(validateNetworkPolicy(badCidr, 'ns').length > 0, 'a bad cidr is refused');
});

t.test('start() creates the weaver policies; they isolate weaver pods', async (t) => {
  const { standin, prov } = await started(t);
  await prov.start();
  const pols = stored(standin);
  t.same(pols.map((p) => p.metadata.name).sort(), [EGRESS_POLICY, INGRESS_POLICY].sort(), 'both policies stored (schema-valid, or the stand-in would have answered 422)');
  for (const p of pols) t.same(p.spec.podSelector, { matchLabels: { 'app.kubernetes.io/managed-by': 'loom' } }, `${p.metadata.name} selects the weaver pods`);

  t.notOk(ingressAllowed(pols, weaverPod('10.42.1.5')), 'ingress: another weaver pod (another org) may not connect');
  t.notOk(ingressAllowed(pols, { ip: '10.42.2.8', pod: { labels: { app: 'something' }, nsLabels: { 'kubernetes.io/metadata.name': 'default' } } }), 'ingress: other cluster pods may not');
  t.notOk(ingressAllowed(pols, { ip: '203.0.113.7' }), 'ingress: the outside may not');
  t.ok(ingressAllowed(pols, serverPod), 'ingress: loom-server may');

  t.ok(egressAllowed(pols, { ip: '1.1.1.1' }, 443), 'egress: the internet (IPv4)');
  t.ok(egressAllowed(pols, { ip: '2606:4700:4700::1111' }, 443), 'egress: the internet (IPv6)');
  t.ok(egressAllowed(pols, dns, 53, 'UDP'), 'egress: cluster DNS over UDP 53');
  t.ok(egressAllowed(pols, dns, 53, 'TCP'), 'egress: cluster DNS over TCP 53');
  t.notOk(egressAllowed(pols, dns, 8080), 'egress: the DNS pod on another port is refused');
  t.ok(egressAllowed(pols, serverPod, 18090), 'egress: loom-server');
  t.notOk(egressAllowed(pols, weaverPod('10.42.1.5'), 22), 'egress: another weaver pod is refused');
  t.notOk(egressAllowed(pols, { ip: '10.43.0.1' }, 443), 'egress: the API server service (10.43.0.1) is refused');
  t.notOk(egressAllowed(pols, { ip: '169.254.169.254' }, 80), 'egress: cloud metadata is refused');
  t.notOk(egressAllowed(pols, { ip: '192.168.1.10' }, 22), 'egress: the node network is refused');
  t.notOk(egressAllowed(pols, { ip: '127.0.0.1' }, 6443), 'egress: loopback ranges are refused');
  t.notOk(egressAllowed(pols, { ip: 'fd00::1' }, 443), 'egress: IPv6 unique-local is refused');
});

t.test('the WireGuard sidecar\'s UDP port (51820) is reachable from loom-server only', async (t) => {
  const { standin, prov } = await started(t);
  await prov.start();
  const pols = stored(standin);
  t.ok(ingressAllowedOn(pols, serverPod, TUNNEL_PORT, 'UDP'), 'loom-server (the gateway and relay) may send to the pod IP\'s UDP port');
  t.notOk(ingressAllowedOn(pols, weaverPod('10.42.1.5'), TUNNEL_PORT, 'UDP'), 'another weaver pod may not');
  t.notOk(ingressAllowedOn(pols, { ip: '10.42.2.8', pod: { labels: { app: 'something' }, nsLabels: { 'kubernetes.io/metadata.name': 'default' } } }, TUNNEL_PORT, 'UDP'), 'another cluster pod may not');
  t.notOk(ingressAllowedOn(pols, { ip: '203.0.113.7' }, TUNNEL_PORT, 'UDP'), 'a client on the internet may not (it goes through loom-server)');
  t.notOk(ingressAllowedOn(pols, { ip: '10.42.0.1' }, TUNNEL_PORT, 'UDP'), 'nor the node (an address, not a loom-server pod)');
  // negative control of the evaluator: a policy that opens UDP 51820 to everyone is seen as open
  const open: Policy = structuredClone(pols.find((p) => p.metadata.name === INGRESS_POLICY)!);
  open.spec.ingress = [...(open.spec.ingress ?? []), { ports: [{ protocol: 'UDP', port: TUNNEL_PORT }] }];
  t.ok(ingressAllowedOn([open], { ip: '203.0.113.7' }, TUNNEL_PORT, 'UDP'), 'the evaluator notices an opened port');
  t.notOk(ingressAllowedOn([open], { ip: '203.0.113.7' }, TUNNEL_PORT, 'TCP'), 'per protocol');
});

t.test('a second start updates tampered policies instead of failing', async (t) => {
  const standin = await K8sStandin.start();
  t.teardown(() => standin.close());
  const first = await started(t, {}, standin);
  await first.prov.start();
  await first.prov.close();
  // Someone opened egress to everything.
  const key = `loom-weavers/${EGRESS_POLICY}`;
  const tampered = structuredClone(standin.networkPolicies.get(key)) as unknown as Policy;
  tampered.spec.egress = [{}];
  standin.networkPolicies.set(key, tampered as never);
  t.ok(egressAllowed([tampered], { ip: '10.43.0.1' }, 443), 'tampered policy would allow the API server');
  const second = await started(t, {}, standin);
  await second.prov.start();
  const now = standin.networkPolicies.get(key) as unknown as Policy;
  t.notOk(egressAllowed([now], { ip: '10.43.0.1' }, 443), 'restored on start');
  t.not(now.metadata.resourceVersion, tampered.metadata.resourceVersion, 'replaced through the API (new resourceVersion)');
  t.equal(standin.networkPolicies.size, 2);
});

t.test('custom internal ranges; without the RBAC start fails with one clear error; the operator can opt out', async (t) => {
  const a = await started(t, { k8sInternalCidrs: ['10.0.0.0/8', '198.18.0.0/15'] });
  await a.prov.start();
  const pols = stored(a.standin);
  t.notOk(egressAllowed(pols, { ip: '198.18.0.5' }, 443), 'an added range is refused');
  t.ok(egressAllowed(pols, { ip: '192.168.1.10' }, 443), 'a range left out is allowed');

  const b = await started(t);
  b.standin.forbidNetworkPolicies = true;
  await t.rejects(b.prov.start(), { code: 'kubernetes_unauthorized', message: /networkpolicies.*LOOM_SERVER_WEAVER_K8S_NETWORK_POLICIES=false/ });

  const c = await started(t, { k8sNetworkPolicies: false });
  c.standin.forbidNetworkPolicies = true;
  await c.prov.start();
  t.equal(c.standin.networkPolicies.size, 0, 'opted out: nothing created, and start succeeds');
});
