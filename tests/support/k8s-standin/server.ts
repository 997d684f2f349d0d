/**
 * K8S STAND-IN API SERVER — not Kubernetes.
 *
 * A small in-process imitation of the parts of the Kubernetes API that the Loom kubernetes
 * backend (through @kubernetes/client-node and `ws`) uses, speaking the same wire protocol:
 * JSON over plain HTTP with a bearer token; namespaces GET; pods list/get/create/delete with
 * resourceVersions and label selectors; `?watch=true&resourceVersion=N` streams of
 * newline-delimited watch events (ADDED/MODIFIED/DELETED, ERROR 410 after compaction); the pod
 * log subresource (plain and follow); v1 Secrets (create/get/list/delete, schema-validated; the
 * stand-in kubelet holds a pod in ContainerCreating while a secret volume's Secret is missing);
 * and the attach subresource over WebSocket with the
 * channel protocol (v4.channel.k8s.io / channel.k8s.io). Errors are Status objects like the
 * real API server's. Pods are validated against the Kubernetes OpenAPI schema
 * (kubernetes-models) and rejected with 422 Invalid when they don't conform.
 *
 * There is no scheduler or kubelet: an optional "stand-in kubelet" moves created pods along
 * (Running, ErrImagePull for images containing "does-not-exist", git clone failure for repos
 * containing "does-not-exist"), and tests can drive any pod state directly.
 */
import http from 'node:http';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, copyFileSync, symlinkSync, rmSync, chmodSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import type { AddressInfo, Socket } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { Pod, Secret } from 'kubernetes-models/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { WebSocketServer, type WebSocket } from 'ws';

export const STANDIN_BANNER = 'K8S STAND-IN API server (not a real cluster)';

/** A pod as JSON (the stand-in keeps wire objects, not typed client objects). */
export type JsonPod = {
  apiVersion?: string;
  kind?: string;
  metadata: {
    name: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    creationTimestamp?: string;
    deletionTimestamp?: string;
    deletionGracePeriodSeconds?: number;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
  };
  spec: {
    containers: { name: string; image?: string; command?: string[] }[];
    initContainers?: { name: string; image?: string; command?: string[]; restartPolicy?: string }[];
    activeDeadlineSeconds?: number;
    [k: string]: unknown;
  };
  status?: {
    phase?: string;
    podIP?: string;
    reason?: string;
    message?: string;
    startTime?: string;
    conditions?: { type: string; status: string; reason?: string; message?: string }[];
    containerStatuses?: ContainerStatus[];
    initContainerStatuses?: ContainerStatus[];
  };
};

export interface ContainerState {
  waiting?: { reason?: string; message?: string };
  running?: { startedAt?: string };
  terminated?: { exitCode: number; reason?: string; message?: string; startedAt?: string; finishedAt?: string };
}

export interface ContainerStatus {
  name: string;
  image: string;
  imageID: string;
  ready: boolean;
  restartCount: number;
  started?: boolean;
  state: ContainerState;
}

export interface StandinOptions {
  token?: string;
  namespaces?: string[];
  /** 'auto': the stand-in kubelet moves new pods along after kubeletDelayMs. */
  kubelet?: 'auto' | 'manual';
  kubeletDelayMs?: number;
  /** Time between a delete (deletionTimestamp set) and the pod's removal; 0 removes at once. */
  deleteDelayMs?: number;
}

interface WatchEvent {
  rv: number;
  ns: string;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: JsonPod;
}

interface Watcher {
  ns: string;
  selector: string | null;
  res: http.ServerResponse;
}

interface AttachConn {
  ws: WebSocket;
  protocol: string;
}

export interface RequestRecord {
  method: string;
  path: string;
  query: Record<string, string>;
}

/** chroot(8) lives in /usr/sbin, which a test's PATH may lack. */
const CHROOT = ['/usr/sbin/chroot', '/usr/bin/chroot', '/sbin/chroot'].find((p) => existsSync(p)) ?? 'chroot';

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;
const now = (): string => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');

function status(code: number, reason: string, message: string, details?: Record<string, unknown>) {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(details ? { details } : {}), code };
}

/** Kubernetes label selector subset: k=v, k==v, k!=v, k, !k (comma = AND). */
export function matchesSelector(labels: Record<string, string> | undefined, selector: string | null): boolean {
  if (!selector) return true;
  const l = labels ?? {};
  for (const raw of selector.split(',')) {
    const term = raw.trim();
    if (!term) continue;
    let m: RegExpExecArray | null;
    if ((m = /^([^!=]+)!=(.*)$/.exec(term))) {
      if (l[m[1].trim()] === m[2].trim()) return false;
    } else if ((m = /^([^!=]+)==?(.*)$/.exec(term))) {
      if (l[m[1].trim()] !== m[2].trim()) return false;
    } else if (term.startsWith('!')) {
      if (term.slice(1) in l) return false;
    } else if (!(term in l)) return false;
  }
  return true;
}

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;

/** The checks the real API server makes that the OpenAPI schema alone does not catch (a subset). */
export function extraPodChecks(pod: JsonPod): string[] {
  const errs: string[] = [];
  const name = pod.metadata?.name ?? '';
  if (!name || name.length > 253 || !DNS_SUBDOMAIN.test(name)) errs.push(`metadata.name: Invalid value: "${name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'`);
  for (const [k, v] of Object.entries(pod.metadata?.labels ?? {})) {
    if (v.length > 63 || !LABEL_VALUE.test(v)) errs.push(`metadata.labels: Invalid value: "${v}": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.' (label ${k})`);
  }
  const names = new Set<string>();
  for (const c of [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])]) {
    if (names.has(c.name)) errs.push(`spec.containers: Duplicate value: "${c.name}"`);
    names.add(c.name);
  }
  if (!pod.spec?.containers?.length) errs.push('spec.containers: Required value');
  return errs;
}

export class K8sStandin {
  readonly token: string;
  readonly requests: RequestRecord[] = [];
  /** Resize messages received on channel 4, per pod name. */
  readonly resizes = new Map<string, { Width: number; Height: number }[]>();
  /** Bytes received on channel 0 (stdin), per pod name. */
  readonly stdin = new Map<string, Buffer[]>();
  /** Subprotocol negotiated by each attach connection, in order. */
  readonly attachProtocols: string[] = [];
  /** Every exec: pod, argv, flags and negotiated subprotocol, in order. */
  readonly execs: { pod: string; command: string[]; tty: boolean; stdin: boolean; protocol: string; container: string }[] = [];
  /** Each pod's root filesystem for exec (a busybox chroot made on first use; the stand-in's "container"). */
  private readonly podRoots = new Map<string, string>();
  private readonly execChildren = new Set<ChildProcess>();
  /** Fault injection: the next create stores the pod, then answers 500 (a half-created pod). */
  failNextCreateAfterStore = false;
  /** Pods allowed in each namespace (a ResourceQuota on pods); undefined = unlimited. */
  podQuota: number | undefined;
  /** Fault injection: NetworkPolicy requests answer 403 (a service account without the RBAC). */
  forbidNetworkPolicies = false;
  /** Watches answered with 410 Gone. */
  gone410 = 0;

  private readonly server: http.Server;
  private readonly wss = new WebSocketServer({ noServer: true, handleProtocols: (protocols) => this.pickProtocol(protocols) });
  private readonly namespaces: Set<string>;
  private readonly pods = new Map<string, JsonPod>();
  /** networking.k8s.io/v1 NetworkPolicies by `<ns>/<name>`, as stored (wire JSON). */
  readonly networkPolicies = new Map<string, JsonObject>();
  // Their own resourceVersion counter: pod watches replay pod events by the pod counter.
  private npRv = 5000;
  /** v1 Secrets by `<ns>/<name>`, as stored (wire JSON). */
  readonly secrets = new Map<string, JsonObject>();
  private secretRv = 8000;
  private readonly saTokens = new Map<string, { namespace: string; serviceAccount: string; podName: string; podUid: string; audience: string }>();
  /** The audiences every TokenReview asked for (a review without an audience is a test failure). */
  readonly tokenReviews: { audiences: string[] }[] = [];
  private readonly logs = new Map<string, string>();
  private readonly logFollowers = new Map<string, Set<http.ServerResponse>>();
  private readonly attaches = new Map<string, Set<AttachConn>>();
  private readonly watchers = new Set<Watcher>();
  private readonly sockets = new Set<Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private events: WatchEvent[] = [];
  private rv = 1000;
  /** Watches asking for a resourceVersion older than this get 410 Gone. */
  private compactedRv = 0;
  private readonly kubelet: 'auto' | 'manual';
  private readonly kubeletDelayMs: number;
  readonly deleteDelayMs: number;
  private port = 0;

  private constructor(opts: StandinOptions) {
    this.token = opts.token ?? 'standin-token';
    this.namespaces = new Set(opts.namespaces ?? ['loom-weavers']);
    this.kubelet = opts.kubelet ?? 'manual';
    this.kubeletDelayMs = opts.kubeletDelayMs ?? 20;
    this.deleteDelayMs = opts.deleteDelayMs ?? 0;
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch((e: unknown) => {
        if (!res.headersSent) this.send(res, 500, status(500, 'InternalError', String(e)));
      });
    });
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.server.on('upgrade', (req, socket, head) => this.upgrade(req, socket as Socket, head));
  }

  static async start(opts: StandinOptions = {}): Promise<K8sStandin> {
    const s = new K8sStandin(opts);
    await new Promise<void>((resolve) => s.server.listen(0, '127.0.0.1', resolve));
    s.port = (s.server.address() as AddressInfo).port;
    return s;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** A kubeconfig for this stand-in: plain http (hence insecure-skip-tls-verify) and a bearer token. */
  kubeconfigYaml(): string {
    return [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      '- name: k8s-standin',
      '  cluster:',
      `    server: ${this.url}`,
      '    insecure-skip-tls-verify: true',
      'users:',
      '- name: standin-user',
      '  user:',
      `    token: ${this.token}`,
      'contexts:',
      '- name: k8s-standin',
      '  context:',
      '    cluster: k8s-standin',
      '    user: standin-user',
      'current-context: k8s-standin',
      '',
    ].join('\n');
  }

  kubeConfig(): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromString(this.kubeconfigYaml());
    return kc;
  }

  addNamespace(ns: string): void {
    this.namespaces.add(ns);
  }

  // ---- state access for tests ----

  pod(name: string, ns = 'loom-weavers'): JsonPod | undefined {
    const p = this.pods.get(`${ns}/${name}`);
    return p ? clone(p) : undefined;
  }

  podNames(ns = 'loom-weavers'): string[] {
    return [...this.pods.values()].filter((p) => p.metadata.namespace === ns).map((p) => p.metadata.name);
  }

  /** Creates a pod directly (as kubectl would), bypassing the client. */
  seedPod(pod: JsonPod, ns = 'loom-weavers'): void {
    const errs = this.validate(pod);
    if (errs.length) throw new Error(`stand-in: invalid seed pod: ${errs.join('; ')}`);
    this.store(ns, pod);
  }

  /** Deletes a pod as someone else would (kubectl delete), outside the backend. */
  deletePod(name: string, ns = 'loom-weavers'): void {
    const p = this.pods.get(`${ns}/${name}`);
    if (p) this.remove(ns, name, p);
  }

  /** Applies a change to a stored pod and emits MODIFIED with a new resourceVersion. */
  update(name: string, mutate: (pod: JsonPod) => void, ns = 'loom-weavers'): void {
    const key = `${ns}/${name}`;
    const p = this.pods.get(key);
    if (!p) throw new Error(`stand-in: no pod ${key}`);
    mutate(p);
    p.metadata.resourceVersion = String(++this.rv);
    this.record(ns, 'MODIFIED', p);
    if (p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed') this.endLogFollowers(key);
  }

  setRunning(name: string, ns = 'loom-weavers'): void {
    this.update(
      name,
      (p) => {
        const started = now();
        p.status = {
          ...(p.status ?? {}),
          phase: 'Running',
          startTime: p.status?.startTime ?? started,
          conditions: [{ type: 'PodScheduled', status: 'True' }, { type: 'Ready', status: 'True' }],
          containerStatuses: p.spec.containers.map((c) => cs(c, { running: { startedAt: started } }, true)),
          initContainerStatuses: (p.spec.initContainers ?? []).map((c) =>
            cs(c, c.restartPolicy === 'Always' ? { running: { startedAt: started } } : { terminated: { exitCode: 0, reason: 'Completed' } }, c.restartPolicy === 'Always'),
          ),
        };
      },
      ns,
    );
  }

  setWaiting(name: string, reason: string, message?: string, container = 'weaver', ns = 'loom-weavers'): void {
    this.update(
      name,
      (p) => {
        const st = p.status ?? {};
        st.phase = 'Pending';
        const list = (st.containerStatuses ??= p.spec.containers.map((c) => cs(c, { waiting: { reason: 'ContainerCreating' } }, false)));
        const target = list.find((c) => c.name === container);
        if (target) target.state = { waiting: { reason, ...(message ? { message } : {}) } };
        p.status = st;
      },
      ns,
    );
  }

  /** The main container ended: phase Succeeded for 0, Failed otherwise (restartPolicy Never). */
  setTerminated(name: string, exitCode: number, reason?: string, message?: string, ns = 'loom-weavers'): void {
    this.update(
      name,
      (p) => {
        const st = p.status ?? {};
        st.phase = exitCode === 0 && reason !== 'OOMKilled' ? 'Succeeded' : 'Failed';
        st.containerStatuses = p.spec.containers.map((c) =>
          cs(c, { terminated: { exitCode, reason: reason ?? (exitCode === 0 ? 'Completed' : 'Error'), ...(message ? { message } : {}), finishedAt: now() } }, false),
        );
        p.status = st;
      },
      ns,
    );
  }

  /** The pod failed as a whole (e.g. activeDeadlineSeconds passed: reason DeadlineExceeded). */
  setPodFailed(name: string, reason: string, message: string, ns = 'loom-weavers'): void {
    this.update(
      name,
      (p) => {
        p.status = { ...(p.status ?? {}), phase: 'Failed', reason, message };
      },
      ns,
    );
  }

  /** Appends to the main container's log; followers receive it at once. */
  appendLog(name: string, text: string, ns = 'loom-weavers'): void {
    const key = `${ns}/${name}`;
    this.logs.set(key, (this.logs.get(key) ?? '') + text);
    for (const res of this.logFollowers.get(key) ?? []) res.write(text);
  }

  /** Output from the attached process, on channel 1 of every attach connection to the pod. */
  sendOutput(name: string, text: string): void {
    for (const a of this.attaches.get(name) ?? []) a.ws.send(Buffer.concat([Buffer.from([1]), Buffer.from(text)]));
  }

  attachCount(name: string): number {
    return this.attaches.get(name)?.size ?? 0;
  }

  /** The attached process ended: status on channel 3, then the connection closes. */
  endAttach(name: string, exitCode: number): void {
    for (const a of this.attaches.get(name) ?? []) {
      let payload: string;
      if (a.protocol === 'channel.k8s.io') payload = exitCode === 0 ? '' : `command terminated with non-zero exit code: exit status ${exitCode}`;
      else if (exitCode === 0) payload = JSON.stringify({ metadata: {}, status: 'Success' });
      else {
        payload = JSON.stringify({
          metadata: {},
          status: 'Failure',
          message: `command terminated with non-zero exit code: exit status ${exitCode}`,
          reason: 'NonZeroExitCode',
          details: { causes: [{ reason: 'ExitCode', message: String(exitCode) }] },
        });
      }
      a.ws.send(Buffer.concat([Buffer.from([3]), Buffer.from(payload)]));
      a.ws.close(1000);
    }
  }

  /**
   * Compaction: forgets the watch history up to now, so any watch resuming from a
   * resourceVersion it knew before gets 410 Gone (as after an etcd compaction) and must relist.
   */
  compact(): void {
    this.compactedRv = ++this.rv;
    this.events = [];
  }

  /** Ends every open watch stream, as the API server does on its watch timeout. */
  dropWatches(): void {
    for (const w of this.watchers) w.res.end();
    this.watchers.clear();
  }

  watchCount(): number {
    return this.watchers.size;
  }

  /** Requests that were list (not watch) calls on pods. */
  podListCalls(): number {
    return this.requests.filter((r) => r.method === 'GET' && /\/pods$/.test(r.path) && r.query.watch !== 'true').length;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.dropWatches();
    for (const set of this.logFollowers.values()) for (const r of set) r.end();
    for (const set of this.attaches.values()) for (const a of set) a.ws.terminate();
    for (const c of this.execChildren) c.kill('SIGKILL');
    for (const d of this.podRoots.values()) rmSync(d, { recursive: true, force: true });
    this.wss.close();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      for (const s of this.sockets) s.destroy();
    });
  }

  // ---- internals ----

  private pickProtocol(offered: Set<string>): string | false {
    // Offered in client preference order; the stand-in speaks v4 and v1 of the channel protocol.
    for (const p of offered) if (p === 'v5.channel.k8s.io' || p === 'v4.channel.k8s.io' || p === 'channel.k8s.io') return p;
    return false;
  }

  private validate(pod: JsonPod): string[] {
    const errs: string[] = [];
    try {
      new Pod(pod as unknown as ConstructorParameters<typeof Pod>[0]).validate();
    } catch (e) {
      errs.push((e as Error).message);
    }
    errs.push(...extraPodChecks(pod));
    return errs;
  }

  private store(ns: string, pod: JsonPod): JsonPod {
    const p = clone(pod);
    p.apiVersion = 'v1';
    p.kind = 'Pod';
    p.metadata.namespace = ns;
    p.metadata.uid = `standin-${(++this.rv).toString(16)}-${Math.random().toString(16).slice(2, 10)}`;
    p.metadata.creationTimestamp = now();
    p.metadata.resourceVersion = String(++this.rv);
    p.status = {
      phase: 'Pending',
      conditions: [{ type: 'PodScheduled', status: 'True' }],
      containerStatuses: p.spec.containers.map((c) => cs(c, { waiting: { reason: 'ContainerCreating' } }, false)),
    };
    this.pods.set(`${ns}/${p.metadata.name}`, p);
    this.record(ns, 'ADDED', p);
    if (this.kubelet === 'auto') this.later(() => this.kubeletTick(ns, p.metadata.name), this.kubeletDelayMs);
    return p;
  }

  private later(fn: () => void, ms: number): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  /** The stand-in kubelet: what a node would do next with a new pod. */
  private kubeletTick(ns: string, name: string): void {
    const p = this.pods.get(`${ns}/${name}`);
    if (!p || p.metadata.deletionTimestamp) return;
    const main = p.spec.containers.find((c) => c.name === 'weaver') ?? p.spec.containers[0];
    const clone = (p.spec.initContainers ?? []).find((c) => c.name === 'git-clone');
    const url = clone?.command?.[clone.command.length - 2];
    if (clone && url && url.includes('does-not-exist')) {
      this.update(
        name,
        (q) => {
          q.status = {
            ...(q.status ?? {}),
            phase: 'Failed',
            initContainerStatuses: (q.spec.initContainers ?? []).map((c) =>
              c.name === 'git-clone'
                ? cs(c, { terminated: { exitCode: 128, reason: 'Error', message: `Cloning into '${clone.command?.[clone.command.length - 1]}'...\nfatal: repository '${url}/' not found\n` } }, false)
                : cs(c, { running: { startedAt: now() } }, true),
            ),
            containerStatuses: q.spec.containers.map((c) => cs(c, { waiting: { reason: 'PodInitializing' } }, false)),
          };
        },
        ns,
      );
      return;
    }
    // as a kubelet: no container starts while a secret volume's Secret does not exist
    const missing = podSecretNames(p).find((sn) => !this.secrets.has(`${ns}/${sn}`));
    if (missing) {
      this.setWaiting(name, 'ContainerCreating', `MountVolume.SetUp failed for volume: secret "${missing}" not found`, main.name, ns);
      return;
    }
    if (main.image?.includes('does-not-exist')) {
      this.setWaiting(name, 'ErrImagePull', `rpc error: code = NotFound desc = failed to pull and unpack image "${main.image}": not found`, main.name, ns);
      return;
    }
    this.setRunning(name, ns);
  }

  private record(ns: string, type: WatchEvent['type'], pod: JsonPod): void {
    const ev: WatchEvent = { rv: Number(pod.metadata.resourceVersion), ns, type, object: clone(pod) };
    this.events.push(ev);
    for (const w of this.watchers) {
      if (w.ns === ns && matchesSelector(pod.metadata.labels, w.selector)) w.res.write(JSON.stringify({ type, object: ev.object }) + '\n');
    }
  }

  private send(res: http.ServerResponse, code: number, body: unknown): void {
    const data = JSON.stringify(body);
    res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
    res.end(data);
  }

  private authorized(req: http.IncomingMessage): boolean {
    return req.headers.authorization === `Bearer ${this.token}`;
  }

  private async body(req: http.IncomingMessage): Promise<unknown> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    if (!text) return undefined;
    return JSON.parse(text) as unknown;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://standin');
    const query = Object.fromEntries(url.searchParams.entries());
    const method = req.method ?? 'GET';
    this.requests.push({ method, path: url.pathname, query });
    if (!this.authorized(req)) return this.send(res, 401, status(401, 'Unauthorized', 'Unauthorized'));

    let m: RegExpExecArray | null;
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)$/.exec(url.pathname)) && method === 'GET') {
      const ns = decodeURIComponent(m[1]);
      if (!this.namespaces.has(ns)) return this.send(res, 404, status(404, 'NotFound', `namespaces "${ns}" not found`, { name: ns, kind: 'namespaces' }));
      return this.send(res, 200, { kind: 'Namespace', apiVersion: 'v1', metadata: { name: ns, resourceVersion: '1' }, spec: { finalizers: ['kubernetes'] }, status: { phase: 'Active' } });
    }
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(url.pathname))) {
      const ns = decodeURIComponent(m[1]);
      if (method === 'GET') {
        if (query.watch === 'true' || query.watch === '1') return this.watch(ns, query, req, res);
        const items = [...this.pods.values()].filter((p) => p.metadata.namespace === ns && matchesSelector(p.metadata.labels, query.labelSelector ?? null));
        return this.send(res, 200, { kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: String(this.rv) }, items });
      }
      if (method === 'POST') return this.create(ns, await this.body(req), res);
    }
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(url.pathname))) {
      const ns = decodeURIComponent(m[1]);
      const name = decodeURIComponent(m[2]);
      const p = this.pods.get(`${ns}/${name}`);
      if (!p) return this.send(res, 404, status(404, 'NotFound', `pods "${name}" not found`, { name, kind: 'pods' }));
      if (method === 'GET') return this.send(res, 200, p);
      if (method === 'DELETE') {
        await this.body(req).catch(() => undefined);
        return this.send(res, 200, this.remove(ns, name, p));
      }
    }
    if ((m = /^\/apis\/networking\.k8s\.io\/v1\/namespaces\/([^/]+)\/networkpolicies(?:\/([^/]+))?$/.exec(url.pathname))) {
      return this.networkPolicy(method, decodeURIComponent(m[1]), m[2] ? decodeURIComponent(m[2]) : null, req, res);
    }
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/secrets(?:\/([^/]+))?$/.exec(url.pathname))) {
      return this.secret(method, decodeURIComponent(m[1]), m[2] ? decodeURIComponent(m[2]) : null, query, req, res);
    }
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/log$/.exec(url.pathname)) && method === 'GET') {
      return this.log(decodeURIComponent(m[1]), decodeURIComponent(m[2]), query, req, res);
    }
    if (url.pathname === '/apis/authentication.k8s.io/v1/tokenreviews' && method === 'POST') return this.tokenReview(await this.body(req), res);
    return this.send(res, 404, status(404, 'NotFound', 'the server could not find the requested resource'));
  }

  /** v1 Secret: list (label selector), get, create (schema-validated, data base64), delete. */
  private async secret(method: string, ns: string, name: string | null, query: Record<string, string>, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!this.namespaces.has(ns)) return this.send(res, 404, status(404, 'NotFound', `namespaces "${ns}" not found`));
    const key = (n: string) => `${ns}/${n}`;
    if (!name) {
      if (method === 'GET') {
        const items = [...this.secrets.entries()].filter(([k, v]) => k.startsWith(`${ns}/`) && matchesSelector((v['metadata'] as JsonPod['metadata']).labels, query.labelSelector ?? null)).map(([, v]) => v);
        return this.send(res, 200, { kind: 'SecretList', apiVersion: 'v1', metadata: { resourceVersion: String(this.secretRv) }, items });
      }
      if (method === 'POST') {
        const body = (await this.body(req)) as JsonObject;
        const n = String((body?.['metadata'] as JsonObject | undefined)?.['name'] ?? '');
        const errs = validateSecret(body, ns);
        if (errs.length) return this.send(res, 422, status(422, 'Invalid', `Secret "${n}" is invalid: ${errs.join('; ')}`, { name: n, kind: 'Secret', causes: errs.map((message) => ({ reason: 'FieldValueInvalid', message })) }));
        if (this.secrets.has(key(n))) return this.send(res, 409, status(409, 'AlreadyExists', `secrets "${n}" already exists`, { name: n, kind: 'secrets' }));
        const stored = { ...body, metadata: { ...(body['metadata'] as JsonObject), namespace: ns, uid: randomUUID(), resourceVersion: String(++this.secretRv), creationTimestamp: now() } };
        this.secrets.set(key(n), stored);
        // a pod waiting for this secret's volume can start now
        if (this.kubelet === 'auto') for (const p of this.pods.values()) if (p.metadata.namespace === ns && podSecretNames(p).includes(n)) this.later(() => this.kubeletTick(ns, p.metadata.name), this.kubeletDelayMs);
        return this.send(res, 201, stored);
      }
      return this.send(res, 405, status(405, 'MethodNotAllowed', `${method} not allowed`));
    }
    const cur = this.secrets.get(key(name));
    if (!cur) return this.send(res, 404, status(404, 'NotFound', `secrets "${name}" not found`, { name, kind: 'secrets' }));
    if (method === 'GET') return this.send(res, 200, cur);
    if (method === 'DELETE') {
      await this.body(req).catch(() => undefined);
      this.secrets.delete(key(name));
      return this.send(res, 200, status(200, 'Success', `secrets "${name}" deleted`));
    }
    return this.send(res, 405, status(405, 'MethodNotAllowed', `${method} not allowed`));
  }

  /** networking.k8s.io/v1 NetworkPolicy: list, get, create, replace (with resourceVersion), delete; schema-validated. */
  private async networkPolicy(method: string, ns: string, name: string | null, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!this.namespaces.has(ns)) return this.send(res, 404, status(404, 'NotFound', `namespaces "${ns}" not found`));
    if (this.forbidNetworkPolicies) return this.send(res, 403, status(403, 'Forbidden', `networkpolicies.networking.k8s.io is forbidden: User "standin-user" cannot ${method === 'GET' ? 'get' : 'create'} resource "networkpolicies" in API group "networking.k8s.io" in the namespace "${ns}"`));
    const key = (n: string) => `${ns}/${n}`;
    const invalid = (n: string, errs: string[]) =>
      this.send(res, 422, status(422, 'Invalid', `NetworkPolicy.networking.k8s.io "${n}" is invalid: ${errs.join('; ')}`, { name: n, kind: 'NetworkPolicy', causes: errs.map((message) => ({ reason: 'FieldValueInvalid', message })) }));
    if (!name) {
      if (method === 'GET') return this.send(res, 200, { kind: 'NetworkPolicyList', apiVersion: 'networking.k8s.io/v1', metadata: { resourceVersion: String(this.npRv) }, items: [...this.networkPolicies.entries()].filter(([k]) => k.startsWith(`${ns}/`)).map(([, v]) => v) });
      if (method === 'POST') {
        const body = (await this.body(req)) as JsonObject;
        const n = String((body?.['metadata'] as JsonObject | undefined)?.['name'] ?? '');
        const errs = validateNetworkPolicy(body, ns);
        if (errs.length) return invalid(n, errs);
        if (this.networkPolicies.has(key(n))) return this.send(res, 409, status(409, 'AlreadyExists', `networkpolicies.networking.k8s.io "${n}" already exists`, { name: n, kind: 'networkpolicies' }));
        const stored = { ...body, metadata: { ...(body['metadata'] as JsonObject), namespace: ns, uid: `np-${++this.npRv}`, resourceVersion: String(this.npRv), generation: 1 } };
        this.networkPolicies.set(key(n), stored);
        return this.send(res, 201, stored);
      }
      return this.send(res, 405, status(405, 'MethodNotAllowed', `${method} not allowed`));
    }
    const cur = this.networkPolicies.get(key(name));
    if (method === 'GET') return cur ? this.send(res, 200, cur) : this.send(res, 404, status(404, 'NotFound', `networkpolicies.networking.k8s.io "${name}" not found`, { name, kind: 'networkpolicies' }));
    if (method === 'DELETE') {
      if (!cur) return this.send(res, 404, status(404, 'NotFound', `networkpolicies.networking.k8s.io "${name}" not found`));
      this.networkPolicies.delete(key(name));
      return this.send(res, 200, status(200, '', 'deleted'));
    }
    if (method === 'PUT') {
      const body = (await this.body(req)) as JsonObject;
      if (!cur) return this.send(res, 404, status(404, 'NotFound', `networkpolicies.networking.k8s.io "${name}" not found`));
      const errs = validateNetworkPolicy(body, ns);
      if (errs.length) return invalid(name, errs);
      const meta = body['metadata'] as JsonObject;
      const curMeta = cur['metadata'] as JsonObject;
      if (meta['resourceVersion'] !== curMeta['resourceVersion']) {
        return this.send(res, 409, status(409, 'Conflict', `Operation cannot be fulfilled on networkpolicies.networking.k8s.io "${name}": the object has been modified; please apply your changes to the latest version and try again`));
      }
      const stored = { ...body, metadata: { ...meta, namespace: ns, uid: curMeta['uid'], resourceVersion: String(++this.npRv), generation: Number(curMeta['generation']) + 1 } };
      this.networkPolicies.set(key(name), stored);
      return this.send(res, 200, stored);
    }
    return this.send(res, 405, status(405, 'MethodNotAllowed', `${method} not allowed`));
  }

  /**
   * Issues a bound service-account token for a pod, as the kubelet's projected volume would
   * (audience, pod name and uid); only this stand-in's TokenReview knows it.
   */
  issueServiceAccountToken(o: { podName: string; podUid: string; audience: string; namespace?: string; serviceAccount?: string }): string {
    const token = `standin-sa.${randomBytes(24).toString('base64url')}`;
    this.saTokens.set(token, { namespace: 'loom-weavers', serviceAccount: 'default', ...o });
    return token;
  }

  /** TokenReview (authentication.k8s.io/v1): authenticated only for a known token whose audience was asked for. */
  private tokenReview(body: unknown, res: http.ServerResponse): void {
    const b = body as { apiVersion?: string; kind?: string; spec?: { token?: string; audiences?: string[] } } | undefined;
    if (b?.kind !== 'TokenReview' || typeof b.spec?.token !== 'string') return this.send(res, 400, status(400, 'BadRequest', 'TokenReview with spec.token expected'));
    this.tokenReviews.push({ audiences: b.spec.audiences ?? [] });
    const t = this.saTokens.get(b.spec.token);
    const wanted = b.spec.audiences ?? [];
    const ok = !!t && (wanted.length === 0 ? false : wanted.includes(t.audience));
    const statusBody = ok
      ? {
          authenticated: true,
          audiences: [t!.audience],
          user: {
            username: `system:serviceaccount:${t!.namespace}:${t!.serviceAccount}`,
            uid: randomUUID(),
            groups: ['system:serviceaccounts', `system:serviceaccounts:${t!.namespace}`, 'system:authenticated'],
            extra: { 'authentication.kubernetes.io/pod-name': [t!.podName], 'authentication.kubernetes.io/pod-uid': [t!.podUid] },
          },
        }
      : { authenticated: false, error: t ? 'token audiences do not match' : 'invalid bearer token' };
    return this.send(res, 201, { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', metadata: { creationTimestamp: null }, spec: b.spec, status: statusBody });
  }

  private create(ns: string, body: unknown, res: http.ServerResponse): void {
    if (!this.namespaces.has(ns)) return this.send(res, 404, status(404, 'NotFound', `namespaces "${ns}" not found`));
    const pod = body as JsonPod;
    const name = pod?.metadata?.name ?? '';
    const errs = this.validate(pod);
    if (errs.length > 0) {
      return this.send(res, 422, status(422, 'Invalid', `Pod "${name}" is invalid: ${errs.join('; ')}`, { name, kind: 'Pod', causes: errs.map((message) => ({ reason: 'FieldValueInvalid', message })) }));
    }
    if (this.pods.has(`${ns}/${name}`)) return this.send(res, 409, status(409, 'AlreadyExists', `pods "${name}" already exists`, { name, kind: 'pods' }));
    if (this.podQuota !== undefined) {
      const used = this.podNames(ns).length;
      if (used >= this.podQuota) {
        return this.send(res, 403, status(403, 'Forbidden', `pods "${name}" is forbidden: exceeded quota: weaver-quota, requested: pods=1, used: pods=${used}, limited: pods=${this.podQuota}`));
      }
    }
    const stored = this.store(ns, pod);
    if (this.failNextCreateAfterStore) {
      this.failNextCreateAfterStore = false;
      return this.send(res, 500, status(500, 'InternalError', 'Internal error occurred: stand-in fault injected after storing the pod'));
    }
    return this.send(res, 201, stored);
  }

  private remove(ns: string, name: string, p: JsonPod): JsonPod {
    const key = `${ns}/${name}`;
    if (!p.metadata.deletionTimestamp) {
      p.metadata.deletionTimestamp = now();
      p.metadata.deletionGracePeriodSeconds = 5;
      p.metadata.resourceVersion = String(++this.rv);
      this.record(ns, 'MODIFIED', p);
    }
    const gone = () => {
      const cur = this.pods.get(key);
      if (!cur) return;
      this.pods.delete(key);
      cur.metadata.resourceVersion = String(++this.rv);
      this.record(ns, 'DELETED', cur);
      this.endLogFollowers(key);
      for (const a of this.attaches.get(name) ?? []) a.ws.close(1000);
    };
    if (this.deleteDelayMs <= 0) gone();
    else this.later(gone, this.deleteDelayMs);
    return clone(p);
  }

  private watch(ns: string, query: Record<string, string>, req: http.IncomingMessage, res: http.ServerResponse): void {
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    // Like the API server: headers go out at once, events follow as they happen.
    res.flushHeaders();
    const selector = query.labelSelector ?? null;
    const rvParam = query.resourceVersion;
    const send = (type: string, object: unknown) => res.write(JSON.stringify({ type, object }) + '\n');
    if (!rvParam || rvParam === '0') {
      for (const p of this.pods.values()) if (p.metadata.namespace === ns && matchesSelector(p.metadata.labels, selector)) send('ADDED', p);
    } else {
      const from = Number(rvParam);
      if (!Number.isFinite(from) || from < this.compactedRv) {
        this.gone410++;
        send('ERROR', status(410, 'Expired', `too old resource version: ${rvParam} (${this.compactedRv})`));
        res.end();
        return;
      }
      for (const ev of this.events) if (ev.rv > from && ev.ns === ns && matchesSelector(ev.object.metadata.labels, selector)) send(ev.type, ev.object);
    }
    const w: Watcher = { ns, selector, res };
    this.watchers.add(w);
    const drop = () => this.watchers.delete(w);
    req.on('close', drop);
    res.on('close', drop);
    if (query.timeoutSeconds) {
      this.later(() => {
        drop();
        res.end();
      }, Number(query.timeoutSeconds) * 1000);
    }
  }

  private log(ns: string, name: string, query: Record<string, string>, req: http.IncomingMessage, res: http.ServerResponse): void {
    const key = `${ns}/${name}`;
    const p = this.pods.get(key);
    if (!p) return this.send(res, 404, status(404, 'NotFound', `pods "${name}" not found`));
    const container = query.container ?? p.spec.containers[0].name;
    const st = (p.status?.containerStatuses ?? []).find((c) => c.name === container);
    if (!st || st.state.waiting) {
      return this.send(res, 400, status(400, 'BadRequest', `container "${container}" in pod "${name}" is waiting to start: ${st?.state.waiting?.reason ?? 'ContainerCreating'}`));
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    let text = this.logs.get(key) ?? '';
    if (query.tailLines !== undefined) {
      const n = Number(query.tailLines);
      const lines = text.split('\n');
      const trailing = text.endsWith('\n');
      const body = trailing ? lines.slice(0, -1) : lines;
      text = n === 0 ? '' : body.slice(-n).join('\n') + (trailing && n > 0 ? '\n' : '');
    }
    if (text) res.write(text);
    const ended = p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed';
    if (query.follow !== 'true' || ended) {
      res.end();
      return;
    }
    let set = this.logFollowers.get(key);
    if (!set) this.logFollowers.set(key, (set = new Set()));
    set.add(res);
    const drop = () => set?.delete(res);
    req.on('close', drop);
    res.on('close', drop);
  }

  private endLogFollowers(key: string): void {
    for (const r of this.logFollowers.get(key) ?? []) r.end();
    this.logFollowers.delete(key);
  }

  private upgrade(req: http.IncomingMessage, socket: Socket, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://standin');
    this.requests.push({ method: 'UPGRADE', path: url.pathname, query: Object.fromEntries(url.searchParams.entries()) });
    const refuse = (code: number, body: unknown) => {
      const data = JSON.stringify(body);
      socket.end(`HTTP/1.1 ${code} ${http.STATUS_CODES[code]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(data)}\r\nconnection: close\r\n\r\n${data}`);
    };
    if (!this.authorized(req)) return refuse(401, status(401, 'Unauthorized', 'Unauthorized'));
    const ex = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/exec$/.exec(url.pathname);
    if (ex) return this.exec(req, socket, head, decodeURIComponent(ex[1]), decodeURIComponent(ex[2]), url, refuse);
    const m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/attach$/.exec(url.pathname);
    if (!m) return refuse(404, status(404, 'NotFound', 'the server could not find the requested resource'));
    const ns = decodeURIComponent(m[1]);
    const name = decodeURIComponent(m[2]);
    const p = this.pods.get(`${ns}/${name}`);
    if (!p) return refuse(404, status(404, 'NotFound', `pods "${name}" not found`));
    const container = url.searchParams.get('container') ?? p.spec.containers[0].name;
    // native sidecars (init containers with restartPolicy Always) take exec like containers
    const st = [...(p.status?.containerStatuses ?? []), ...(p.status?.initContainerStatuses ?? [])].find((c) => c.name === container);
    if (!st?.state.running) return refuse(400, status(400, 'BadRequest', `unable to upgrade connection: container ${container} not found in pod ${name}, or not running`));
    const tty = url.searchParams.get('tty');
    const stderr = url.searchParams.get('stderr');
    if ((tty === 'true' || tty === '1') && (stderr === 'true' || stderr === '1')) {
      // kubelet ignores stderr with a tty; the stand-in is stricter so the client's query is checked.
      return refuse(400, status(400, 'BadRequest', 'stderr must be false when tty is true (stand-in check)'));
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const conn: AttachConn = { ws, protocol: ws.protocol || 'channel.k8s.io' };
      this.attachProtocols.push(conn.protocol);
      let set = this.attaches.get(name);
      if (!set) this.attaches.set(name, (set = new Set()));
      set.add(conn);
      ws.on('close', () => set?.delete(conn));
      ws.on('message', (raw, isBinary) => {
        const buf = Buffer.isBuffer(raw) ? raw : Array.isArray(raw) ? Buffer.concat(raw) : Buffer.from(raw);
        if (!isBinary || buf.length === 0) return;
        const channel = buf[0];
        const payload = buf.subarray(1);
        if (channel === 0) {
          const arr = this.stdin.get(name) ?? [];
          arr.push(Buffer.from(payload));
          this.stdin.set(name, arr);
          // A tty echoes input back.
          ws.send(Buffer.concat([Buffer.from([1]), payload]));
        } else if (channel === 4) {
          const arr = this.resizes.get(name) ?? [];
          arr.push(JSON.parse(payload.toString('utf8')) as { Width: number; Height: number });
          this.resizes.set(name, arr);
        }
      });
    });
  }

  /** The directory exec runs chrooted in for this pod (tests may add programs to its bin/). */
  podRootOf(name: string): string {
    return this.podRoot(name);
  }

  /** A pod's root filesystem: busybox and its applets in a private directory, /workspace and /tmp. */
  private podRoot(name: string): string {
    let d = this.podRoots.get(name);
    if (d) return d;
    d = mkdtempSync(join(tmpdir(), 'k8s-standin-pod-'));
    for (const sub of ['bin', 'etc', 'workspace', 'tmp', 'dev']) mkdirSync(join(d, sub), { recursive: true });
    chmodSync(join(d, 'tmp'), 0o1777);
    copyFileSync('/bin/busybox', join(d, 'bin/busybox'));
    chmodSync(join(d, 'bin/busybox'), 0o755);
    for (const applet of execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n').filter(Boolean)) {
      if (applet !== 'busybox') symlinkSync('busybox', join(d, 'bin', applet));
    }
    writeFileSync(join(d, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    writeFileSync(join(d, 'etc/secret'), 'pod-secret\n');
    this.podRoots.set(name, d);
    return d;
  }

  /**
   * The exec subresource: the command runs chrooted in the pod's root filesystem (a stand-in for
   * the container), stdout on channel 1, stderr on channel 2, stdin from channel 0, v5's close
   * (255) ends stdin, and the exit status arrives on channel 3 as the kubelet sends it.
   * No tty here: the stand-in refuses tty exec with 400.
   */
  private exec(req: http.IncomingMessage, socket: Socket, head: Buffer, ns: string, name: string, url: URL, refuse: (code: number, body: unknown) => void): void {
    const p = this.pods.get(`${ns}/${name}`);
    if (!p) return refuse(404, status(404, 'NotFound', `pods "${name}" not found`));
    const container = url.searchParams.get('container') ?? p.spec.containers[0].name;
    // native sidecars (init containers with restartPolicy Always) take exec like containers
    const st = [...(p.status?.containerStatuses ?? []), ...(p.status?.initContainerStatuses ?? [])].find((c) => c.name === container);
    if (!st?.state.running) return refuse(400, status(400, 'BadRequest', `unable to upgrade connection: container ${container} not found in pod ${name}, or not running`));
    const command = url.searchParams.getAll('command');
    if (command.length === 0) return refuse(400, status(400, 'BadRequest', 'you must specify at least one command for the container'));
    const flag = (k: string) => ['true', '1'].includes(url.searchParams.get(k) ?? '');
    if (flag('tty')) return refuse(400, status(400, 'BadRequest', 'tty exec is not scripted in the stand-in'));
    const root = this.podRoot(name);
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const protocol = ws.protocol || 'channel.k8s.io';
      this.execs.push({ pod: name, command, tty: false, stdin: flag('stdin'), protocol, container });
      const child = spawn(CHROOT, [root, ...command], { stdio: [flag('stdin') ? 'pipe' : 'ignore', 'pipe', 'pipe'], env: { PATH: '/bin', HOME: '/workspace' }, cwd: root });
      this.execChildren.add(child);
      const send = (ch: number, b: Buffer) => ws.readyState === ws.OPEN && ws.send(Buffer.concat([Buffer.from([ch]), b]));
      child.stdout!.on('data', (b: Buffer) => send(1, b));
      child.stderr!.on('data', (b: Buffer) => (flag('stderr') ? send(2, b) : send(1, b)));
      child.stdin?.on('error', () => undefined);
      child.on('error', (e) => {
        send(3, Buffer.from(JSON.stringify({ metadata: {}, status: 'Failure', message: e.message, reason: 'InternalError' })));
        ws.close(1000);
      });
      child.on('close', (code, signal) => {
        this.execChildren.delete(child);
        const exit = code ?? 128 + (signal ? 9 : 0);
        const st = exit === 0
          ? { metadata: {}, status: 'Success' }
          : { metadata: {}, status: 'Failure', message: `command terminated with non-zero exit code: ${exit}`, reason: 'NonZeroExitCode', details: { causes: [{ reason: 'ExitCode', message: String(exit) }] } };
        send(3, Buffer.from(JSON.stringify(st)));
        ws.close(1000);
      });
      ws.on('close', () => child.kill('SIGKILL'));
      ws.on('message', (raw, isBinary) => {
        const buf = Buffer.isBuffer(raw) ? raw : Array.isArray(raw) ? Buffer.concat(raw) : Buffer.from(raw);
        if (!isBinary || buf.length === 0) return;
        if (buf[0] === 0) child.stdin?.write(buf.subarray(1));
        else if (buf[0] === 255 && protocol === 'v5.channel.k8s.io' && buf[1] === 0) child.stdin?.end();
      });
    });
  }
}

function cs(c: { name: string; image?: string }, state: ContainerState, ready: boolean): ContainerStatus {
  return { name: c.name, image: c.image ?? '', imageID: '', ready, restartCount: 0, started: !!state.running, state };
}

type JsonObject = Record<string, unknown>;

/** A NetworkPolicy as the API server would check it: the published schema plus name and namespace rules. */
/** The Secrets a pod mounts as volumes. */
function podSecretNames(p: JsonPod): string[] {
  const vols = ((p.spec as { volumes?: { secret?: { secretName?: string } }[] }).volumes ?? []);
  return vols.map((v) => v.secret?.secretName).filter((n): n is string => typeof n === 'string');
}

export function validateSecret(body: JsonObject | undefined, ns: string): string[] {
  const errs: string[] = [];
  if (!body || typeof body !== 'object') return ['body must be a Secret object'];
  if (body['kind'] !== 'Secret' || body['apiVersion'] !== 'v1') errs.push(`kind/apiVersion must be Secret v1, got ${String(body['kind'])} ${String(body['apiVersion'])}`);
  try {
    new Secret(body as unknown as ConstructorParameters<typeof Secret>[0]).validate();
  } catch (e) {
    errs.push(String((e as Error).message));
  }
  const meta = (body['metadata'] ?? {}) as JsonObject;
  const name = String(meta['name'] ?? '');
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) || name.length > 253) errs.push(`metadata.name: Invalid value: ${JSON.stringify(name)}`);
  if (meta['namespace'] !== undefined && meta['namespace'] !== ns) errs.push('metadata.namespace: does not match the namespace of the request');
  for (const [k, v] of Object.entries((body['data'] ?? {}) as Record<string, unknown>)) {
    if (!/^[-._a-zA-Z0-9]+$/.test(k)) errs.push(`data[${k}]: Invalid value: a valid config key must consist of alphanumeric characters, '-', '_' or '.'`);
    if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v) || v.length % 4 !== 0) errs.push(`data[${k}]: illegal base64 data`);
  }
  return errs;
}

export function validateNetworkPolicy(body: JsonObject | undefined, ns: string): string[] {
  const errs: string[] = [];
  if (!body || typeof body !== 'object') return ['body must be a NetworkPolicy object'];
  if (body['kind'] !== 'NetworkPolicy' || body['apiVersion'] !== 'networking.k8s.io/v1') errs.push(`kind/apiVersion must be NetworkPolicy networking.k8s.io/v1, got ${String(body['kind'])} ${String(body['apiVersion'])}`);
  try {
    new NetworkPolicy(body as unknown as ConstructorParameters<typeof NetworkPolicy>[0]).validate();
  } catch (e) {
    errs.push(String((e as Error).message));
  }
  const meta = (body['metadata'] ?? {}) as JsonObject;
  const name = String(meta['name'] ?? '');
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) || name.length > 253) errs.push(`metadata.name: Invalid value: ${JSON.stringify(name)}`);
  if (meta['namespace'] !== undefined && meta['namespace'] !== ns) errs.push('metadata.namespace: does not match the namespace of the request');
  const spec = (body['spec'] ?? {}) as JsonObject;
  if (!spec['podSelector']) errs.push('spec.podSelector: Required value');
  // CIDRs must parse and every `except` must be a strict subset of its `cidr` (as the API server checks).
  const rules = [...((spec['ingress'] as JsonObject[] | undefined) ?? []).flatMap((r) => (r['from'] as JsonObject[] | undefined) ?? []), ...((spec['egress'] as JsonObject[] | undefined) ?? []).flatMap((r) => (r['to'] as JsonObject[] | undefined) ?? [])];
  for (const peer of rules) {
    const block = peer['ipBlock'] as { cidr?: string; except?: string[] } | undefined;
    if (!block) continue;
    const outer = parseCidr(block.cidr ?? '');
    if (!outer) {
      errs.push(`ipBlock.cidr: Invalid value: ${JSON.stringify(block.cidr)}`);
      continue;
    }
    for (const ex of block.except ?? []) {
      const inner = parseCidr(ex);
      if (!inner || inner.v6 !== outer.v6 || inner.bits <= outer.bits || !cidrContains(outer, inner.addr)) errs.push(`ipBlock.except: Invalid value: ${JSON.stringify(ex)}: must be a strict subset of ${block.cidr}`);
    }
  }
  return errs;
}

/** A CIDR as a bigint address and prefix length (IPv4 or IPv6), or null. */
export function parseCidr(c: string): { v6: boolean; addr: bigint; bits: number } | null {
  const [ip, len] = c.split('/');
  const bits = Number(len);
  if (!ip || !/^\d{1,3}$/.test(len ?? '')) return null;
  const addr = parseIp(ip);
  if (!addr) return null;
  if (bits > (addr.v6 ? 128 : 32)) return null;
  return { v6: addr.v6, addr: addr.value, bits };
}

export function parseIp(ip: string): { v6: boolean; value: bigint } | null {
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(ip)) {
    const parts = ip.split('.').map(Number);
    if (parts.some((p) => p > 255)) return null;
    return { v6: false, value: parts.reduce((a, p) => (a << 8n) + BigInt(p), 0n) };
  }
  if (!/^[0-9a-fA-F:]+$/.test(ip) || (ip.match(/::/g) ?? []).length > 1) return null;
  const [head, tail] = ip.includes('::') ? ip.split('::') : [ip, undefined];
  const h = head ? head.split(':') : [];
  const tl = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - tl.length).fill('0'), ...tl];
  if (groups.length !== 8 || groups.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) return null;
  return { v6: true, value: groups.reduce((a, g) => (a << 16n) + BigInt(parseInt(g, 16)), 0n) };
}

export function cidrContains(c: { v6: boolean; addr: bigint; bits: number }, addr: bigint): boolean {
  const width = c.v6 ? 128 : 32;
  const shift = BigInt(width - c.bits);
  return addr >> shift === c.addr >> shift;
}
