/**
 * NetworkPolicies the Kubernetes backend keeps in its namespace, so weavers of different orgs
 * cannot reach each other, the cluster's services or the API server:
 *
 *   loom-weaver-ingress  weaver pods accept connections only from loom-server pods (by label) —
 *                        this is also what keeps the wireguard sidecar's UDP port (51820) open to
 *                        loom-server's gateway and closed to everyone else;
 *   loom-weaver-egress   weaver pods may reach cluster DNS (kube-system/kube-dns, port 53),
 *                        loom-server pods, and any address outside the internal ranges
 *                        (LOOM_SERVER_WEAVER_K8S_INTERNAL_CIDRS: private, link-local — cloud
 *                        metadata — CGNAT and loopback by default; the pod and service networks
 *                        of k3s, 10.42/16 and 10.43/16, are inside 10/8).
 *
 * Policies are enforced by the CNI (k3s's embedded network-policy controller does by default;
 * flannel alone does not).
 */
import type { V1NetworkPolicy } from '@kubernetes/client-node';
import { MANAGED_BY_LABEL, MANAGED_BY_VALUE } from './labels.js';

export const INGRESS_POLICY = 'loom-weaver-ingress';
export const EGRESS_POLICY = 'loom-weaver-egress';
/** The label loom-server's own pods carry (when it runs in the cluster). */
export const SERVER_POD_LABELS: Record<string, string> = { 'app.kubernetes.io/name': 'loom-server' };

export const DEFAULT_INTERNAL_CIDRS = ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '169.254.0.0/16', '100.64.0.0/10', '127.0.0.0/8', 'fc00::/7', 'fe80::/10', '::1/128'];

export interface NetworkPolicyOptions {
  namespace: string;
  internalCidrs: string[];
}

const weaverPods = { matchLabels: { [MANAGED_BY_LABEL]: MANAGED_BY_VALUE } };
const serverPods = { namespaceSelector: {}, podSelector: { matchLabels: SERVER_POD_LABELS } };
const metadata = (name: string, namespace: string) => ({ name, namespace, labels: { [MANAGED_BY_LABEL]: MANAGED_BY_VALUE } });

/** The outside world for one address family: everything but the internal ranges of that family. */
function outside(all: string, internal: string[]): { ipBlock: { cidr: string; except?: string[] } } {
  const except = internal.filter((c) => c.includes(':') === all.includes(':'));
  return { ipBlock: { cidr: all, ...(except.length ? { except } : {}) } };
}

export function buildNetworkPolicies(o: NetworkPolicyOptions): V1NetworkPolicy[] {
  return [
    {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: metadata(INGRESS_POLICY, o.namespace),
      spec: { podSelector: weaverPods, policyTypes: ['Ingress'], ingress: [{ _from: [serverPods] }] },
    },
    {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: metadata(EGRESS_POLICY, o.namespace),
      spec: {
        podSelector: weaverPods,
        policyTypes: ['Egress'],
        egress: [
          {
            to: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'kube-system' } }, podSelector: { matchLabels: { 'k8s-app': 'kube-dns' } } }],
            ports: [
              { protocol: 'UDP', port: 53 },
              { protocol: 'TCP', port: 53 },
            ],
          },
          { to: [serverPods] },
          { to: [outside('0.0.0.0/0', o.internalCidrs), outside('::/0', o.internalCidrs)] },
        ],
      },
    },
  ];
}
