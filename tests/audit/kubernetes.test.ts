/**
 * Audit on the kubernetes backend: the real loom-server against the K8S STAND-IN API server
 * (tests/support/k8s-standin: not a real cluster). For each weaver the server mints the pod's
 * audit credential (stored hashed), puts it in a Secret mounted into the audit sidecar only, and
 * passes the audit server URL; ingest with that credential speaks for that weaver alone (a forged
 * weaver, org or owner is 403); the credential is revoked and the Secret deleted when the weaver
 * goes, whether Loom deletes it or its pod disappears outside Loom.
 */
import t from 'tap';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Pod, Secret } from 'kubernetes-models/v1';
import { K8sStandin, STANDIN_BANNER, extraPodChecks, type JsonPod } from '../support/k8s-standin/index.js';
import { startServer, tempDir } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { loadConfig } from '../../src/server/config/load.js';

t.comment(`loom-server runs against the ${STANDIN_BANNER}`);

const AUDIT_URL = 'http://loom.loom-system.svc:18090';
type Weaver = { id: string; status: string; org_id: string; owner_user_id: string };

t.test('config: audit on kubernetes needs the URL pods reach the server at', async (t) => {
  const base = { LOOM_SERVER_WEAVER_BACKEND: 'kubernetes', LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'true', LOOM_SERVER_WEAVER_AUDIT_IMAGE: 'ghcr.io/loom/audit-sidecar:1' };
  t.throws(() => loadConfig(base), /LOOM_SERVER_WEAVER_AUDIT_SERVER_URL/);
  t.throws(() => loadConfig({ ...base, LOOM_SERVER_WEAVER_AUDIT_SERVER_URL: 'loom:18090' }), /LOOM_SERVER_WEAVER_AUDIT_SERVER_URL/, 'a URL, not a host:port');
  t.equal(loadConfig({ ...base, LOOM_SERVER_WEAVER_AUDIT_SERVER_URL: AUDIT_URL }).weaver.audit.serverUrl, AUDIT_URL);
});

t.test('a weaver pod gets its own audit credential in a Secret, good for that weaver only, revoked when it goes', async (t) => {
  const standin = await K8sStandin.start({ kubelet: 'auto', kubeletDelayMs: 50 });
  t.teardown(() => standin.close());
  const kubeconfig = join(tempDir('loom-kube-'), 'config');
  writeFileSync(kubeconfig, standin.kubeconfigYaml());
  const srv = await startServer({
    env: {
      LOOM_SERVER_WEAVER_BACKEND: 'kubernetes',
      KUBECONFIG: kubeconfig,
      LOOM_SERVER_WEAVER_DEFAULT_IMAGE: 'docker.io/library/busybox:1.36',
      LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'true',
      LOOM_SERVER_WEAVER_AUDIT_IMAGE: 'ghcr.io/loom/audit-sidecar:1',
      LOOM_SERVER_WEAVER_AUDIT_SERVER_URL: AUDIT_URL,
    },
  });
  t.teardown(() => srv.stop());
  const alice = await srv.token('alice');
  const bob = await srv.token('bob');

  const mk = async (tok: string): Promise<Weaver> => {
    const w = await srv.api<Weaver>('POST', '/api/weaver', tok, {});
    t.equal(w.status, 202, JSON.stringify(w.body));
    return waitUntil(async () => {
      const g = await srv.api<Weaver>('GET', `/api/weaver/${w.body.id}`, tok);
      return g.body.status === 'running' ? g.body : null;
    }, 'the weaver running');
  };
  const a1 = await mk(alice);
  const a2 = await mk(alice);
  const b1 = await mk(bob);

  // the Secret: schema-valid, labelled, holding a token; the pod mounts it into the sidecar only
  const secretOf = (id: string) => standin.secrets.get(`loom-weavers/loom-audit-${id}`) as { data?: { token?: string }; metadata: { labels?: Record<string, string> }; immutable?: boolean } | undefined;
  const sec = secretOf(a1.id);
  t.ok(sec, 'the Secret exists in the weavers namespace');
  t.doesNotThrow(() => new Secret(sec as never).validate(), 'valid against the Kubernetes schema');
  t.equal(sec!.metadata.labels?.['loom.dev/weaver-id'], a1.id);
  t.equal(sec!.immutable, true);
  const tokenOf = (id: string) => Buffer.from(secretOf(id)!.data!.token!, 'base64').toString('utf8');
  const tokA1 = tokenOf(a1.id);
  t.match(tokA1, /^loom_audit_\S{20,}$/);
  t.not(tokenOf(a2.id), tokA1, 'each weaver its own credential');

  const pod = standin.pod(`weaver-${a1.id}`) as JsonPod;
  t.doesNotThrow(() => new Pod(pod as never).validate());
  t.same(extraPodChecks(pod), []);
  const side = (pod.spec.initContainers ?? []).find((c) => c.name === 'audit-sidecar')! as { env?: { name: string; value?: string }[] };
  const env = Object.fromEntries((side.env ?? []).map((e) => [e.name, e.value]));
  t.equal(env['LOOM_AUDIT_SERVER_URL'], AUDIT_URL, 'the sidecar is told where to deliver');
  t.equal(env['LOOM_AUDIT_TOKEN_FILE'], '/var/run/loom-audit/token');
  t.notOk(JSON.stringify(pod).includes(tokA1), 'the token itself is nowhere in the pod');
  const vol = (pod.spec as { volumes?: { name: string; secret?: { secretName: string } }[] }).volumes?.find((v) => v.name === 'audit-token');
  t.equal(vol?.secret?.secretName, `loom-audit-${a1.id}`);

  // stored hashed: the database holds the token's SHA-256, never the token
  const db = new Database(join(srv.dataDir, 'loom.db'), { readonly: true });
  t.teardown(() => db.close());
  const dump = JSON.stringify(db.prepare('SELECT * FROM audit_credentials').all());
  t.notOk(dump.includes(tokA1), 'no plaintext token in the database');
  t.ok(dump.includes(createHash('sha256').update(tokA1).digest('hex')) || dump.includes(createHash('sha256').update(tokA1).digest('base64url')), 'its hash is');

  let seq = 0;
  const ev = (w: Pick<Weaver, 'id' | 'org_id' | 'owner_user_id'>) => ({
    weaver_id: w.id, org_id: w.org_id, owner_user_id: w.owner_user_id, boot_id: 'k8s-test-boot', seq: ++seq,
    timestamp_ns: String(BigInt(Date.now()) * 1_000_000n), pid: 42, ppid: 1, tid: 42, uid: 1000, comm: 'marker',
    exec_id: '7', parent_exec_id: '1', event_type: 'process_exec', ret: 0, details: { filename: '/bin/marker', argv: ['marker'] },
  });
  const ingest = (token: string, events: unknown[]) => fetch(`${srv.url}/internal/audit/events`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ events }) });

  const good = ev(a1);
  const ok = await ingest(tokA1, [good]);
  t.equal(ok.status, 200, await ok.clone().text());
  t.match(await ok.json(), { inserted: 1 });
  const seen = await srv.api<{ events: { seq: number; weaver_id: string; comm: string }[] }>('GET', `/api/weaver/${a1.id}/audit`, alice);
  t.same(seen.body.events.map((e) => [e.weaver_id, e.seq, e.comm]), [[a1.id, good.seq, 'marker']], 'stored and readable by the owner');

  // the weaver comes from the credential: anything else is refused whole, and nothing is stored
  const forged = [
    ['another weaver of the same owner', ev(a2)],
    ["another user's weaver", ev(b1)],
    ['a weaver id that does not exist', { ...ev(a1), weaver_id: '00000000-0000-4000-8000-000000000000' }],
    ['its own weaver id with another org', { ...ev(a1), org_id: b1.org_id }],
    ['its own weaver id with another owner', { ...ev(a1), owner_user_id: b1.owner_user_id }],
  ] as const;
  for (const [what, e] of forged) {
    const r = await ingest(tokA1, [ev(a1), e]);
    t.equal(r.status, 403, `${what}: 403`);
    t.match(await r.json(), { error: { code: 'forbidden' } });
  }
  for (const w of [a1, a2]) {
    const n = (await srv.api<{ events: unknown[] }>('GET', `/api/weaver/${w.id}/audit`, alice)).body.events.length;
    t.equal(n, w === a1 ? 1 : 0, `nothing more stored for ${w === a1 ? 'a1' : 'a2'}`);
  }
  t.equal((await srv.api<{ events: unknown[] }>('GET', `/api/weaver/${b1.id}/audit`, bob)).body.events.length, 0, "nothing stored for bob's weaver");
  t.equal((await ingest('loom_audit_not-a-real-token', [ev(a1)])).status, 401, 'an unknown credential is 401');

  // deleted through Loom: Secret gone, credential revoked
  t.equal((await srv.api('DELETE', `/api/weaver/${a1.id}`, alice)).status, 204);
  await waitUntil(async () => !secretOf(a1.id), 'the Secret deleted');
  t.equal((await ingest(tokA1, [ev(a1)])).status, 401, 'the credential died with the weaver');

  // the pod removed outside Loom: the same
  const tokA2 = tokenOf(a2.id);
  t.equal((await ingest(tokA2, [ev(a2)])).status, 200, 'a2 can report while its pod lives');
  standin.deletePod(`weaver-${a2.id}`);
  await waitUntil(async () => !secretOf(a2.id), "the Secret of a pod deleted outside Loom");
  await waitUntil(async () => (await ingest(tokA2, [ev(a2)])).status === 401, 'its credential revoked');
  t.ok(secretOf(b1.id), "bob's weaver keeps its own");
  t.equal((await ingest(tokenOf(b1.id), [ev(b1)])).status, 200, 'and it still works');
});
