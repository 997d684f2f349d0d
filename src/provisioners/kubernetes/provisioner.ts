/**
 * The Kubernetes (k3s) backend: one pod per weaver in one namespace, status from a pod
 * informer (list + watch, never polling), attach and logs through the pod subresources.
 */
import { AuthenticationV1Api, CoreV1Api, KubeConfig, ListWatch, NetworkingV1Api, Watch, type V1Pod, type V1Secret } from '@kubernetes/client-node';
import { LoomError, errorMessage } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { WeaverConfig } from '../../server/config/load.js';
import type {
  BackendHealth,
  BackendWeaver,
  LogOptions,
  Provisioner,
  ReconcileReport,
  StatusListener,
  TerminalStream,
  ExecProcess,
  ExecRequest,
  WeaverSpec,
} from '../../weaver/provisioner.js';
import { attachPod } from './attach.js';
import { execPod } from './exec.js';
import { apiServerUrl, describeApiError, isNotFound, loadKubeConfig, withTimeout } from './client.js';
import { MAIN_CONTAINER, TUNNEL_CONTAINER, MANAGED_BY_LABEL, MANAGED_BY_VALUE, MANAGED_SELECTOR, WEAVER_ID_ANNOTATION, WEAVER_ID_LABEL, podName, toLabelValue } from './labels.js';
import { streamPodLog } from './logs.js';
import { GIT_SECRET_ANNOTATION, TUNNEL_IFACE, TUNNEL_PORT, auditSecretName, buildPod, tunnelSecretName, type PodSpecOptions } from './pod-spec.js';
import { podToWeaver, weaverIdOf } from './status.js';
import { DEFAULT_INTERNAL_CIDRS, buildNetworkPolicies } from './network-policy.js';

export type KubernetesWeaverConfig = Pick<WeaverConfig, 'k8sNamespace' | 'kubeconfig' | 'imagePullSecrets' | 'audit'> &
  Partial<Pick<WeaverConfig, 'k8sNetworkPolicies' | 'k8sInternalCidrs'>>;

export interface KubernetesProvisionerOptions {
  /** The weaver section of the server config (namespace, kubeconfig path, pull secrets, audit). */
  config: KubernetesWeaverConfig;
  log: Logger;
  /** A ready KubeConfig; when absent one is loaded from config.kubeconfig / in-cluster / default. */
  kubeConfig?: KubeConfig;
  /** Environment used to detect in-cluster config (defaults to process.env). */
  env?: NodeJS.ProcessEnv;
  /** Image of the git clone init container; the weaver image itself when unset. */
  gitImage?: string;
  /** URL pods reach loom-server at for their secrets (LOOM_SECRETS_K8S_URL); empty: no secrets init container. */
  secretsUrl?: string;
  /** sizeLimit of the pod's in-memory secrets volume (LOOM_SECRETS_TMPFS_SIZE; default 1Mi). */
  secretsSizeLimit?: string;
  /** Image of the WireGuard sidecar (LOOM_TUNNEL_K8S_IMAGE); empty: weaver pods get no tunnel endpoint. */
  tunnelImage?: string;
  /** Grace period given to a deleted pod (default 5 s). */
  deleteGracePeriodSeconds?: number;
  /** Timeout of single API requests (default 15 s). */
  requestTimeoutMs?: number;
  /** First delay before re-establishing a broken watch (default 1 s, doubling to 30 s). */
  watchRetryMs?: number;
}

type Informer = ListWatch<V1Pod>;

/**
 * The audit component's side of a weaver pod's credential: it mints one per weaver (stored hashed
 * and bound to that weaver's identity, so ingest derives the weaver from it) and revokes it when
 * the weaver goes. This backend only carries the token into the pod, in a Secret.
 */
export interface PodAuditCredentials {
  mint(w: { weaverId: string; orgId: string; ownerUserId: string }): string;
  revoke(weaverId: string): void;
}

/**
 * The tunnel component's side of a weaver pod's WireGuard endpoint: a fresh ephemeral key per
 * weaver (it keeps the public half) and the weaver's tunnel address. This backend only carries the
 * private half into the pod, in a Secret, and forgets it.
 */
export interface PodTunnelKeys {
  mint(weaverId: string): { privateKey: Buffer; address: string };
  forget(weaverId: string): void;
}

const statusKey = (w: BackendWeaver): string => `${w.status}|${w.reason ?? ''}|${w.exitCode ?? ''}`;
const TERMINAL = new Set(['succeeded', 'failed']);

export class KubernetesProvisioner implements Provisioner {
  readonly name = 'kubernetes' as const;
  readonly namespace: string;
  private readonly kc: KubeConfig;
  private readonly api: CoreV1Api;
  private readonly net: NetworkingV1Api;
  private readonly networkPolicies: boolean;
  private readonly internalCidrs: string[];
  private readonly log: Logger;
  private readonly podOpts: PodSpecOptions;
  private readonly grace: number;
  private readonly timeoutMs: number;
  private readonly retryMs: number;
  private readonly listeners = new Set<StatusListener>();
  /** Last status reported per weaver id, to report changes only. */
  private readonly last = new Map<string, BackendWeaver>();
  /** Ids whose pods this process deleted: their disappearance is expected, not news. */
  private readonly deletedByUs = new Set<string>();
  private readonly streams = new Set<TerminalStream>();
  private informer: Informer | null = null;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay: number;
  private watchHealthy = false;
  private closed = false;
  private configError: LoomError | undefined;
  private auditCredentials: PodAuditCredentials | null = null;
  private readonly tunnelImage: string;
  private tunnelKeys: PodTunnelKeys | null = null;
  /** Per weaver: the wireguard sidecar's restartCount last seen Ready (a new one has no peers). */
  private readonly sidecarSeen = new Map<string, number>();
  private readonly sidecarReadyListeners = new Set<(weaverId: string) => void>();

  constructor(opts: KubernetesProvisionerOptions) {
    this.namespace = opts.config.k8sNamespace;
    this.log = opts.log;
    let kc = opts.kubeConfig;
    if (!kc) {
      try {
        kc = loadKubeConfig({ kubeconfig: opts.config.kubeconfig, ...(opts.env ? { env: opts.env } : {}) });
      } catch (e) {
        // Reported by start(), which is where the server expects backend errors.
        const where = opts.config.kubeconfig ? `kubeconfig ${opts.config.kubeconfig}` : 'the kubeconfig';
        this.configError = new LoomError(503, 'kubernetes_config', `cannot load ${where}: ${errorMessage(e)}`);
        kc = new KubeConfig();
        kc.loadFromClusterAndUser({ name: 'unconfigured', server: 'https://unconfigured.invalid', skipTLSVerify: false }, { name: 'unconfigured' });
      }
    }
    this.kc = kc;
    this.api = this.kc.makeApiClient(CoreV1Api);
    this.net = this.kc.makeApiClient(NetworkingV1Api);
    this.networkPolicies = opts.config.k8sNetworkPolicies ?? true;
    this.internalCidrs = opts.config.k8sInternalCidrs ?? DEFAULT_INTERNAL_CIDRS;
    this.podOpts = {
      namespace: this.namespace,
      imagePullSecrets: opts.config.imagePullSecrets,
      audit: opts.config.audit,
      ...(opts.gitImage ? { gitImage: opts.gitImage } : {}),
      ...(opts.secretsUrl ? { secrets: { url: opts.secretsUrl, sizeLimit: opts.secretsSizeLimit ?? '1Mi' } } : {}),
    };
    this.tunnelImage = opts.tunnelImage ?? '';
    this.grace = opts.deleteGracePeriodSeconds ?? 5;
    this.timeoutMs = opts.requestTimeoutMs ?? 15_000;
    this.retryMs = opts.watchRetryMs ?? 1000;
    this.retryDelay = this.retryMs;
  }

  /**
   * Which weaver a pod's projected service-account token belongs to: a TokenReview with the given
   * audience, the pod name and UID from the review's user info (never from the caller), the live
   * pod in our namespace with that UID, managed by us, not terminating. Throws LoomError 401.
   */
  async identifyPod(token: string, audience: string): Promise<{ weaverId: string; podName: string; gitSecret?: string }> {
    const refuse = (why: string) => new LoomError(401, 'pod_identity_refused', why);
    let review;
    try {
      review = await withTimeout(
        this.kc.makeApiClient(AuthenticationV1Api).createTokenReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [audience] } } }),
        this.timeoutMs,
        'a TokenReview',
      );
    } catch (e) {
      throw new LoomError(503, 'kubernetes_unavailable', `TokenReview failed: ${describeApiError(e).message}`);
    }
    const st = review.status;
    if (!st?.authenticated) throw refuse('the token was not authenticated');
    if (!st.audiences?.includes(audience)) throw refuse(`the token is not for audience ${audience}`);
    const prefix = `system:serviceaccount:${this.namespace}:`;
    if (!st.user?.username?.startsWith(prefix)) throw refuse('the token is not a service account of the weaver namespace');
    const name = st.user.extra?.['authentication.kubernetes.io/pod-name']?.[0];
    const uid = st.user.extra?.['authentication.kubernetes.io/pod-uid']?.[0];
    if (!name || !uid) throw refuse('the token is not bound to a pod');
    let pod: V1Pod;
    try {
      pod = await withTimeout(this.api.readNamespacedPod({ name, namespace: this.namespace }), this.timeoutMs, 'reading a pod');
    } catch (e) {
      if (isNotFound(e)) throw refuse('the token\'s pod no longer exists');
      throw this.apiError(e, `reading pod ${name}`);
    }
    if (pod.metadata?.uid !== uid) throw refuse('the token\'s pod was replaced (UID differs)');
    if (pod.metadata?.labels?.[MANAGED_BY_LABEL] !== MANAGED_BY_VALUE) throw refuse('the token\'s pod is not a weaver');
    if (pod.metadata?.deletionTimestamp) throw refuse('the token\'s pod is terminating');
    const weaverId = pod.metadata?.annotations?.[WEAVER_ID_ANNOTATION];
    if (!weaverId || podName(weaverId) !== name) throw refuse('the token\'s pod is not a weaver');
    const gitSecret = pod.metadata?.annotations?.[GIT_SECRET_ANNOTATION];
    return { weaverId, podName: name, ...(gitSecret ? { gitSecret } : {}) };
  }

  /** The API server URL in use. */
  get server(): string {
    return apiServerUrl(this.kc);
  }

  /** Checks the API answers and the namespace exists, then starts the pod informer. */
  async start(): Promise<void> {
    if (this.configError) throw this.configError;
    await this.checkNamespace();
    if (this.networkPolicies) await this.ensureNetworkPolicies();
    else this.log.warn({ namespace: this.namespace }, 'LOOM_SERVER_WEAVER_K8S_NETWORK_POLICIES is false: weaver pods are not isolated from each other or the cluster');
    const informer = new ListWatch<V1Pod>(
      `/api/v1/namespaces/${this.namespace}/pods`,
      new Watch(this.kc),
      () => this.api.listNamespacedPod({ namespace: this.namespace, labelSelector: MANAGED_SELECTOR }),
      false,
      MANAGED_SELECTOR,
    );
    let startError: unknown;
    const onStartError = (err?: unknown) => {
      startError = err ?? new Error('watch failed');
    };
    informer.on('error', onStartError);
    informer.on('add', (pod) => this.onPod(pod));
    informer.on('update', (pod) => this.onPod(pod));
    informer.on('delete', (pod) => this.onPodGone(pod));
    this.informer = informer;
    await withTimeout(informer.start(), this.timeoutMs, 'listing pods');
    informer.off('error', onStartError);
    if (startError !== undefined) {
      await informer.stop();
      this.informer = null;
      throw this.unreachable(startError, `watching pods in namespace "${this.namespace}"`);
    }
    informer.on('error', (err?: unknown) => this.onWatchError(err));
    this.watchHealthy = true;
    this.log.info({ backend: 'kubernetes', server: this.server, namespace: this.namespace, pods: informer.list(this.namespace).length }, 'kubernetes backend started');
  }

  private unreachable(e: unknown, doing: string): LoomError {
    const f = describeApiError(e);
    if (f.httpStatus === 401 || f.httpStatus === 403) {
      return new LoomError(503, 'kubernetes_unauthorized', `kubernetes API ${this.server} refused the credentials (${f.httpStatus}) while ${doing}: ${f.message}; check KUBECONFIG and the service account's RBAC`);
    }
    if (f.httpStatus !== undefined) {
      return new LoomError(503, 'kubernetes_error', `kubernetes API ${this.server} answered ${f.httpStatus} while ${doing}: ${f.message}`);
    }
    const connErr = f.errno && /^(ECONNREFUSED|ECONNRESET|ENOTFOUND|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|EAI_AGAIN)$/.test(f.errno);
    return new LoomError(503, 'kubernetes_unreachable', `kubernetes API ${this.server} unreachable: ${connErr ? f.errno : f.message}`);
  }

  /** Creates or updates the weaver NetworkPolicies (network-policy.ts); refuses to start without them. */
  private async ensureNetworkPolicies(): Promise<void> {
    for (const want of buildNetworkPolicies({ namespace: this.namespace, internalCidrs: this.internalCidrs })) {
      const name = want.metadata!.name!;
      try {
        let current;
        try {
          current = await withTimeout(this.net.readNamespacedNetworkPolicy({ name, namespace: this.namespace }), this.timeoutMs, `reading NetworkPolicy ${name}`);
        } catch (e) {
          if (!isNotFound(e)) throw e;
        }
        if (!current) {
          await withTimeout(this.net.createNamespacedNetworkPolicy({ namespace: this.namespace, body: want }), this.timeoutMs, `creating NetworkPolicy ${name}`);
          this.log.info({ namespace: this.namespace, policy: name }, 'NetworkPolicy created');
        } else {
          const body = { ...want, metadata: { ...want.metadata, resourceVersion: current.metadata?.resourceVersion } };
          await withTimeout(this.net.replaceNamespacedNetworkPolicy({ name, namespace: this.namespace, body }), this.timeoutMs, `updating NetworkPolicy ${name}`);
        }
      } catch (e) {
        const f = describeApiError(e);
        if (f.httpStatus === 401 || f.httpStatus === 403) {
          throw new LoomError(
            503,
            'kubernetes_unauthorized',
            `kubernetes API ${this.server} refused to manage NetworkPolicy ${name} in namespace "${this.namespace}" (${f.httpStatus}): grant get/create/update on networkpolicies.networking.k8s.io, or set LOOM_SERVER_WEAVER_K8S_NETWORK_POLICIES=false to run weavers without network isolation`,
          );
        }
        throw this.unreachable(e, `ensuring NetworkPolicy ${name}`);
      }
    }
  }

  private async checkNamespace(): Promise<void> {
    try {
      await withTimeout(this.api.readNamespace({ name: this.namespace }), this.timeoutMs, 'reading the namespace');
    } catch (e) {
      if (isNotFound(e)) {
        throw new LoomError(
          503,
          'kubernetes_namespace_missing',
          `kubernetes namespace "${this.namespace}" not found at ${this.server}: create it with kubectl create namespace ${this.namespace}`,
        );
      }
      throw this.unreachable(e, `reading namespace "${this.namespace}"`);
    }
  }

  private onWatchError(err: unknown): void {
    this.watchHealthy = false;
    if (this.closed || !this.informer) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, 30_000);
    this.log.warn({ backend: 'kubernetes', err: errorMessage(err), retryInMs: delay }, 'pod watch broke; restarting');
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      const inf = this.informer;
      if (this.closed || !inf) return;
      inf.start().then(
        () => {
          this.watchHealthy = true;
          this.retryDelay = this.retryMs;
        },
        (e: unknown) => this.onWatchError(e),
      );
    }, delay);
    this.retryTimer.unref();
  }

  private emit(w: BackendWeaver): void {
    for (const l of this.listeners) {
      try {
        l(w);
      } catch (e) {
        this.log.error({ backend: 'kubernetes', err: errorMessage(e) }, 'status listener threw');
      }
    }
  }

  private onPod(pod: V1Pod): void {
    const w = podToWeaver(pod);
    if (!w) return;
    this.checkTunnelSidecar(w.id, pod);
    const prev = this.last.get(w.id);
    if (prev && statusKey(prev) === statusKey(w)) return;
    // startedAt is reported with the first `running` and kept afterwards.
    const out: BackendWeaver = { ...w, ...(w.startedAt ?? prev?.startedAt ? { startedAt: w.startedAt ?? prev?.startedAt } : {}) };
    this.last.set(w.id, out);
    this.emit(out);
  }

  private onPodGone(pod: V1Pod): void {
    const id = weaverIdOf(pod);
    if (!id) return;
    const prev = this.last.get(id) ?? podToWeaver(pod);
    this.last.delete(id);
    this.sidecarSeen.delete(id);
    // whoever removed the pod, its tunnel key goes with it
    this.deleteTunnelSecret(id).catch((e: unknown) => this.log.warn({ backend: 'kubernetes', weaverId: id, err: errorMessage(e) }, 'removing the WireGuard Secret of a gone pod failed'));
    // whoever removed the pod, its audit credential goes with it
    if (this.podOpts.audit.enabled) {
      this.deleteAuditSecret(id).catch((e: unknown) => this.log.warn({ backend: 'kubernetes', weaverId: id, err: errorMessage(e) }, 'removing the audit Secret of a gone pod failed'));
    }
    if (this.deletedByUs.delete(id)) return;
    if (prev && TERMINAL.has(prev.status)) return;
    // Removed by someone else (kubectl delete, node loss, eviction cleanup).
    this.emit({ id, status: 'failed', reason: `pod ${pod.metadata?.name ?? podName(id)} was deleted outside Loom` });
  }

  /** Set by the audit component when audit is on; returns the unset. */
  useAuditCredentials(c: PodAuditCredentials): () => void {
    this.auditCredentials = c;
    return () => {
      if (this.auditCredentials === c) this.auditCredentials = null;
    };
  }

  /** Whether new weaver pods get the WireGuard sidecar (an image is configured). */
  get tunnels(): boolean {
    return this.tunnelImage !== '';
  }

  /** Set by the tunnel component when tunnels are on; returns the unset. Pods created without it get no sidecar. */
  useTunnelKeys(k: PodTunnelKeys): () => void {
    this.tunnelKeys = k;
    return () => {
      if (this.tunnelKeys === k) this.tunnelKeys = null;
    };
  }

  /**
   * Calls back when a weaver's wireguard sidecar becomes Ready as a new container (first start, a
   * restart after wireguard-go died, or first seen after loom-server started): its wireguard-go
   * has no peers, so the sessions' peers are set again (`wg set … peer` is idempotent).
   */
  onTunnelSidecarReady(cb: (weaverId: string) => void): () => void {
    this.sidecarReadyListeners.add(cb);
    return () => void this.sidecarReadyListeners.delete(cb);
  }

  private checkTunnelSidecar(id: string, pod: V1Pod): void {
    const sc = (pod.status?.initContainerStatuses ?? []).find((c) => c.name === TUNNEL_CONTAINER);
    if (!sc?.ready || !sc.state?.running) return;
    if (this.sidecarSeen.get(id) === sc.restartCount) return;
    this.sidecarSeen.set(id, sc.restartCount);
    for (const cb of this.sidecarReadyListeners) {
      try {
        cb(id);
      } catch (e) {
        this.log.error({ backend: 'kubernetes', err: errorMessage(e) }, 'tunnel sidecar listener threw');
      }
    }
  }

  /** Stores the weaver's ephemeral WireGuard key and tunnel address in the Secret only its sidecar mounts. */
  private async createTunnelSecret(spec: WeaverSpec, keys: PodTunnelKeys): Promise<void> {
    const name = tunnelSecretName(spec.id);
    const { privateKey, address } = keys.mint(spec.id);
    const body: V1Secret = {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name, namespace: this.namespace, labels: { [MANAGED_BY_LABEL]: MANAGED_BY_VALUE, [WEAVER_ID_LABEL]: toLabelValue(spec.id) } },
      type: 'Opaque',
      immutable: true,
      data: { 'private-key': Buffer.from(privateKey.toString('base64')).toString('base64'), address: Buffer.from(address).toString('base64') },
    };
    privateKey.fill(0);
    try {
      await withTimeout(this.api.createNamespacedSecret({ namespace: this.namespace, body }), this.timeoutMs, `creating Secret ${name}`);
    } catch (e) {
      keys.forget(spec.id);
      await this.deleteTunnelSecret(spec.id).catch(() => undefined);
      throw this.apiError(e, `creating Secret ${name}`);
    }
  }

  /** Forgets the weaver's tunnel key and deletes its Secret (gone already, or never made, is fine). */
  private async deleteTunnelSecret(id: string): Promise<void> {
    this.tunnelKeys?.forget(id);
    if (!this.tunnels) return;
    const name = tunnelSecretName(id);
    try {
      await withTimeout(this.api.deleteNamespacedSecret({ name, namespace: this.namespace }), this.timeoutMs, `deleting Secret ${name}`);
    } catch (e) {
      if (!isNotFound(e)) throw this.apiError(e, `deleting Secret ${name}`);
    }
  }

  /**
   * Where the gateway sends a weaver's WireGuard datagrams: its pod IP and the sidecar's UDP port,
   * once the pod runs with a ready wireguard sidecar; null otherwise.
   */
  tunnelEndpoint(id: string): { host: string; port: number } | null {
    const pod = this.cached(id);
    const ip = pod?.status?.podIP;
    if (!pod || !ip || pod.status?.phase !== 'Running' || pod.metadata?.deletionTimestamp) return null;
    const sc = (pod.status.initContainerStatuses ?? []).find((c) => c.name === TUNNEL_CONTAINER);
    if (!sc?.ready || !sc.state?.running) return null;
    return { host: ip, port: TUNNEL_PORT };
  }

  /** Runs `wg set <iface> …args` in the weaver pod's wireguard sidecar (the exec API), failing on a non-zero exit. */
  async tunnelSet(id: string, args: string[]): Promise<void> {
    if (!this.tunnelEndpoint(id)) throw new LoomError(409, 'tunnel_unavailable', `weaver ${id} has no running WireGuard sidecar`);
    const p = await execPod({ kc: this.kc, namespace: this.namespace, pod: podName(id), container: TUNNEL_CONTAINER, req: { command: ['wg', 'set', TUNNEL_IFACE, ...args], tty: false, stdin: false } });
    const err: Buffer[] = [];
    p.stderr.on('data', (d: Buffer) => err.push(d));
    p.stdout.resume();
    const exit = await p.exit;
    if (exit.exitCode !== 0) throw new LoomError(502, 'tunnel_config_failed', `wg set in pod ${podName(id)} exited with ${exit.exitCode}: ${Buffer.concat(err).toString().trim().slice(0, 300)}`);
  }

  /** Mints the weaver's audit credential and stores it in the Secret its pod's sidecar mounts. */
  private async createAuditSecret(spec: WeaverSpec): Promise<void> {
    // fail closed: a pod whose sidecar has no credential would run unaudited
    if (!this.auditCredentials) throw new LoomError(503, 'audit_unavailable', 'audit is enabled but the audit component is not ready to mint pod credentials');
    const name = auditSecretName(spec.id);
    const token = this.auditCredentials.mint({ weaverId: spec.id, orgId: spec.orgId, ownerUserId: spec.ownerUserId });
    const body: V1Secret = {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name, namespace: this.namespace, labels: { [MANAGED_BY_LABEL]: MANAGED_BY_VALUE, [WEAVER_ID_LABEL]: toLabelValue(spec.id) } },
      type: 'Opaque',
      immutable: true,
      data: { token: Buffer.from(token).toString('base64') },
    };
    try {
      await withTimeout(this.api.createNamespacedSecret({ namespace: this.namespace, body }), this.timeoutMs, `creating Secret ${name}`);
    } catch (e) {
      this.auditCredentials.revoke(spec.id);
      // a timeout may have stored it: remove whatever exists
      await this.deleteAuditSecret(spec.id).catch(() => undefined);
      throw this.apiError(e, `creating Secret ${name}`);
    }
  }

  /** Revokes the weaver's audit credential and deletes its Secret (gone already is fine). */
  private async deleteAuditSecret(id: string): Promise<void> {
    this.auditCredentials?.revoke(id);
    if (!this.podOpts.audit.enabled) return;
    const name = auditSecretName(id);
    try {
      await withTimeout(this.api.deleteNamespacedSecret({ name, namespace: this.namespace }), this.timeoutMs, `deleting Secret ${name}`);
    } catch (e) {
      if (!isNotFound(e)) throw this.apiError(e, `deleting Secret ${name}`);
    }
  }

  async create(spec: WeaverSpec): Promise<void> {
    const tunnelKeys = this.tunnels ? this.tunnelKeys : null;
    const pod = buildPod(spec, { ...this.podOpts, ...(tunnelKeys ? { tunnel: { image: this.tunnelImage } } : {}) });
    const name = pod.metadata?.name ?? podName(spec.id);
    this.deletedByUs.delete(spec.id);
    if (this.podOpts.audit.enabled) await this.createAuditSecret(spec);
    if (tunnelKeys) {
      try {
        await this.createTunnelSecret(spec, tunnelKeys);
      } catch (e) {
        await this.deleteAuditSecret(spec.id).catch(() => undefined);
        throw e;
      }
    }
    try {
      await withTimeout(this.api.createNamespacedPod({ namespace: this.namespace, body: pod }), this.timeoutMs, `creating pod ${name}`);
    } catch (e) {
      const f = describeApiError(e);
      if (f.httpStatus === 409) {
        throw new LoomError(409, 'weaver_exists', `pod ${name} already exists in namespace "${this.namespace}"`);
      }
      // The API server may have stored the pod before the failure (a timeout, a reset
      // connection): remove whatever half exists so nothing runs without a record.
      await this.deletePod(name, spec.id).catch((de: unknown) => {
        this.log.warn({ backend: 'kubernetes', pod: name, err: errorMessage(de) }, 'cleanup of a failed create failed');
      });
      if (f.httpStatus !== 409) {
        await this.deleteAuditSecret(spec.id).catch((de: unknown) => {
          this.log.warn({ backend: 'kubernetes', weaverId: spec.id, err: errorMessage(de) }, 'cleanup of the audit Secret of a failed create failed');
        });
        await this.deleteTunnelSecret(spec.id).catch((de: unknown) => {
          this.log.warn({ backend: 'kubernetes', weaverId: spec.id, err: errorMessage(de) }, 'cleanup of the WireGuard Secret of a failed create failed');
        });
      }
      if (f.httpStatus === 403 && /exceeded quota/i.test(f.message)) {
        throw new LoomError(429, 'quota_exceeded', `kubernetes namespace "${this.namespace}": ${f.message}`);
      }
      if (f.httpStatus === 422 || f.httpStatus === 400) {
        throw new LoomError(400, 'invalid_weaver', `kubernetes rejected pod ${name}: ${f.message}`);
      }
      if (f.httpStatus === undefined) throw this.unreachable(e, `creating pod ${name}`);
      throw new LoomError(502, 'kubernetes_error', `creating pod ${name} failed (${f.httpStatus}): ${f.message}`);
    }
    this.log.info({ backend: 'kubernetes', weaverId: spec.id, pod: name, image: spec.image }, 'weaver pod created');
  }

  private cached(id: string): V1Pod | undefined {
    return this.informer?.get(podName(id), this.namespace);
  }

  async get(id: string): Promise<BackendWeaver | null> {
    const hit = this.cached(id);
    if (hit) return podToWeaver(hit);
    // Not in the cache (yet): the informer may lag a create by a few ms, so ask.
    try {
      const pod = await withTimeout(this.api.readNamespacedPod({ name: podName(id), namespace: this.namespace }), this.timeoutMs, 'reading a pod');
      return podToWeaver(pod);
    } catch (e) {
      if (isNotFound(e)) return null;
      throw this.apiError(e, `reading pod ${podName(id)}`);
    }
  }

  async list(): Promise<BackendWeaver[]> {
    const pods = this.informer ? this.informer.list(this.namespace) : await this.listPods();
    return pods.map(podToWeaver).filter((w): w is BackendWeaver => w !== null);
  }

  private async listPods(): Promise<V1Pod[]> {
    try {
      const list = await withTimeout(this.api.listNamespacedPod({ namespace: this.namespace, labelSelector: MANAGED_SELECTOR }), this.timeoutMs, 'listing pods');
      return list.items;
    } catch (e) {
      throw this.apiError(e, 'listing pods');
    }
  }

  private apiError(e: unknown, doing: string): LoomError {
    const f = describeApiError(e);
    if (f.httpStatus === undefined) return this.unreachable(e, doing);
    return new LoomError(502, 'kubernetes_error', `${doing} failed (${f.httpStatus}): ${f.message}`);
  }

  private async deletePod(name: string, id: string): Promise<void> {
    this.deletedByUs.add(id);
    try {
      await withTimeout(
        this.api.deleteNamespacedPod({ name, namespace: this.namespace, gracePeriodSeconds: this.grace, propagationPolicy: 'Background' }),
        this.timeoutMs,
        `deleting pod ${name}`,
      );
    } catch (e) {
      // Already gone: no DELETED event will follow unless the cache still holds it.
      if (isNotFound(e)) {
        if (!this.informer?.get(name, this.namespace)) this.deletedByUs.delete(id);
        return;
      }
      this.deletedByUs.delete(id);
      throw this.apiError(e, `deleting pod ${name}`);
    }
  }

  /** Deletes the weaver's pod; a pod that is already gone is not an error. */
  async delete(id: string): Promise<void> {
    await this.deletePod(podName(id), id);
    await this.deleteAuditSecret(id);
    await this.deleteTunnelSecret(id);
    this.log.info({ backend: 'kubernetes', weaverId: id, pod: podName(id) }, 'weaver pod deleted');
  }

  async attach(id: string, size?: { cols: number; rows: number }): Promise<TerminalStream> {
    const w = await this.get(id);
    if (!w) throw new LoomError(404, 'not_found', `weaver ${id} has no pod`);
    if (w.status !== 'running') {
      throw new LoomError(409, 'weaver_not_running', `weaver ${id} is ${w.status}${w.reason ? ` (${w.reason})` : ''}; attach needs it running`);
    }
    const stream = await attachPod({ kc: this.kc, namespace: this.namespace, pod: podName(id), container: MAIN_CONTAINER, ...(size ? { size } : {}) });
    this.streams.add(stream);
    stream.onClose(() => this.streams.delete(stream));
    return stream;
  }

  async exec(id: string, req: ExecRequest): Promise<ExecProcess> {
    const w = await this.get(id);
    if (!w) throw new LoomError(404, 'not_found', `weaver ${id} has no pod`);
    if (w.status !== 'running') throw new LoomError(409, 'weaver_not_running', `weaver ${id} is ${w.status}${w.reason ? ` (${w.reason})` : ''}; exec needs it running`);
    return execPod({ kc: this.kc, namespace: this.namespace, pod: podName(id), container: MAIN_CONTAINER, req });
  }

  /** The image's own tools (sh, cat, tar, stat) from PATH: the pod's filesystem is only reachable through exec. */
  toolbox(): string[] {
    return [];
  }

  logs(id: string, opts: LogOptions): AsyncIterable<Buffer> {
    return streamPodLog({
      kc: this.kc,
      namespace: this.namespace,
      pod: podName(id),
      container: MAIN_CONTAINER,
      follow: opts.follow,
      ...(opts.tail !== undefined ? { tail: opts.tail } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  }

  watch(listener: StatusListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Pods without a record are deleted; records without a pod are missing; the rest adopted. */
  async reconcile(knownIds: string[]): Promise<ReconcileReport> {
    const known = new Set(knownIds);
    const pods = await this.listPods();
    const report: ReconcileReport = { adopted: [], orphansRemoved: [], missing: [] };
    const seen = new Set<string>();
    for (const pod of pods) {
      const id = weaverIdOf(pod);
      if (!id) continue;
      seen.add(id);
      if (known.has(id)) {
        report.adopted.push(id);
        continue;
      }
      await this.deletePod(pod.metadata?.name ?? podName(id), id);
      report.orphansRemoved.push(id);
      this.log.warn({ backend: 'kubernetes', weaverId: id, pod: pod.metadata?.name }, 'deleted weaver pod with no record');
    }
    for (const id of knownIds) if (!seen.has(id)) report.missing.push(id);
    return report;
  }

  async health(): Promise<BackendHealth> {
    try {
      await withTimeout(this.api.readNamespace({ name: this.namespace }), Math.min(this.timeoutMs, 5000), 'reading the namespace');
    } catch (e) {
      const detail = isNotFound(e) ? `namespace "${this.namespace}" not found at ${this.server}` : this.unreachable(e, 'checking health').message;
      return { ok: false, backend: 'kubernetes', detail };
    }
    const watching = this.informer !== null && this.watchHealthy;
    return {
      ok: watching,
      backend: 'kubernetes',
      detail: `namespace "${this.namespace}" at ${this.server}; pod watch ${watching ? 'connected' : this.informer ? 'reconnecting' : 'not started'}`,
    };
  }

  /** Stops the informer and detaches open attach streams; pods keep running. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const inf = this.informer;
    this.informer = null;
    if (inf) await inf.stop();
    for (const s of this.streams) s.close();
    this.streams.clear();
    this.listeners.clear();
  }
}
