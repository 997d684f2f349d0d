// loom-server's Kubernetes account as loom-k3s creates it (nixos-modules/lib/k3s.nix, evaluated
// with nix-instantiate): valid against the Kubernetes OpenAPI schema (kubernetes-models), and no
// more than the kubernetes backend calls — namespaced, no Secrets, no wildcards, the only
// cluster-scoped grant `create tokenreviews`.
import t from 'tap';
import { Secret, ServiceAccount } from 'kubernetes-models/v1';
import { ClusterRole, ClusterRoleBinding, Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { CANNOT_RUN_HERE, nixEval, requireNix } from './nix.js';

t.comment(requireNix());
t.comment(CANNOT_RUN_HERE);

type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; annotations?: Record<string, string> }; [k: string]: any };

const rbacOf = (k3s: Record<string, unknown>): Obj[] =>
  nixEval(`let h = import (REPO + "/tests/nix/fixtures/host.nix") { modules = [ (REPO + "/nixos-modules/loom-k3s.nix") (builtins.fromJSON ${JSON.stringify(JSON.stringify({ services: { 'loom-k3s': { enable: true, ...k3s } } }))}) ]; };
    in (builtins.fromJSON (builtins.head h.services.loom-k3s-setup.restartTriggers)).items`);

const MODELS: Record<string, new (o: any) => { validate(): void }> = { ServiceAccount, Role, RoleBinding, ClusterRole, ClusterRoleBinding, Secret };

t.test('every object validates against the Kubernetes schema', async (t) => {
  const items = rbacOf({});
  t.same(items.map((i) => i.kind), ['ServiceAccount', 'Role', 'RoleBinding', 'ClusterRole', 'ClusterRoleBinding', 'Secret']);
  for (const i of items) t.doesNotThrow(() => new MODELS[i.kind]!(i).validate(), `${i.kind} ${i.metadata.name}`);
  // The check is real: a wrong shape is refused.
  t.throws(() => new Role({ ...items[1], rules: [{ verbs: 'get' }] } as any).validate());
});

t.test('namespaced Role: exactly what the backend calls', async (t) => {
  const items = rbacOf({});
  const role = items.find((i) => i.kind === 'Role')!;
  t.same(role.metadata.namespace, 'loom-weavers');
  const grants = new Map<string, string[]>();
  for (const r of role.rules as Array<{ apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }>) {
    for (const g of r.apiGroups) for (const res of r.resources) grants.set(`${g}/${res}${r.resourceNames ? `:${r.resourceNames.join(',')}` : ''}`, [...r.verbs].sort());
  }
  t.same(Object.fromEntries(grants), {
    '/namespaces:loom-weavers': ['get'],
    '/pods': ['create', 'delete', 'get', 'list', 'watch'],
    '/pods/log': ['get'],
    '/pods/attach': ['create', 'get'],
    '/pods/exec': ['create', 'get'],
    '/events': ['get', 'list', 'watch'],
    'networking.k8s.io/networkpolicies': ['create', 'delete', 'get', 'list', 'patch', 'update', 'watch'],
  });
  t.notMatch(JSON.stringify(role.rules), /"\*"/, 'no wildcards');
  t.notMatch(JSON.stringify(role.rules), /secrets/, 'no access to Secrets');
});

t.test('bindings name this account only; the cluster-wide grant is TokenReview create', async (t) => {
  const items = rbacOf({ namespace: 'weavers-prod', serverServiceAccount: 'loom-api' });
  const sa = items.find((i) => i.kind === 'ServiceAccount')!;
  t.same(sa.metadata, { name: 'loom-api', namespace: 'weavers-prod', labels: { 'app.kubernetes.io/managed-by': 'loom-k3s', 'app.kubernetes.io/name': 'loom-server' } });
  t.equal(sa.automountServiceAccountToken, false);
  const subject = [{ kind: 'ServiceAccount', name: 'loom-api', namespace: 'weavers-prod' }];
  const rb = items.find((i) => i.kind === 'RoleBinding')!;
  t.same(rb.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'loom-api' });
  t.same(rb.subjects, subject);
  t.equal(rb.metadata.namespace, 'weavers-prod');
  const cr = items.find((i) => i.kind === 'ClusterRole')!;
  t.same(cr.rules, [{ apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] }]);
  const crb = items.find((i) => i.kind === 'ClusterRoleBinding')!;
  t.same(crb.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'loom-api-tokenreview' });
  t.same(crb.subjects, subject);
  const secret = items.find((i) => i.kind === 'Secret')!;
  t.equal(secret.type, 'kubernetes.io/service-account-token');
  t.same(secret.metadata.annotations, { 'kubernetes.io/service-account.name': 'loom-api' });
  t.equal(secret.metadata.namespace, 'weavers-prod');
});
