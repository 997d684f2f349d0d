/**
 * The weaver pod, as a pure function of the weaver spec and the backend's settings.
 * Nothing here talks to the API server; tests validate every shape this builds against the
 * Kubernetes OpenAPI schema.
 */
import type { V1Container, V1EnvVar, V1Pod, V1SecurityContext, V1Volume } from '@kubernetes/client-node';
import type { WeaverConfig } from '../../server/config/load.js';
import type { WeaverSpec } from '../../weaver/provisioner.js';
import {
  AUDIT_CONTAINER,
  TUNNEL_CONTAINER,
  CLONE_CONTAINER,
  EXPIRES_AT_ANNOTATION,
  LIFETIME_ANNOTATION,
  MAIN_CONTAINER,
  MANAGED_BY_LABEL,
  MANAGED_BY_VALUE,
  ORG_ID_LABEL,
  OWNER_LABEL,
  TAGS_ANNOTATION,
  WEAVER_ID_ANNOTATION,
  WEAVER_ID_LABEL,
  WORKSPACE_DIR,
  WORKSPACE_VOLUME,
  podName,
  toLabelValue,
} from './labels.js';

export type AuditSettings = WeaverConfig['audit'];

export interface PodSpecOptions {
  namespace: string;
  imagePullSecrets: string[];
  audit: AuditSettings;
  /** Image of the clone init container; the weaver image (expected to have git) when unset. */
  gitImage?: string;
  /** Secrets: an init container fetches them from loom-server at url into an in-memory volume. */
  secrets?: { url: string; sizeLimit: string };
  /** WireGuard endpoint: a sidecar running wireguard-go in the pod's network namespace (tunnel-sidecar below). */
  tunnel?: TunnelSidecarSettings;
}

export interface TunnelSidecarSettings {
  /** An image with wireguard-go, wg (wireguard-tools), ip (iproute2) and a POSIX sh. */
  image: string;
}


export const SECRETS_AUDIENCE = 'loom-secrets';
export const SECRETS_CONTAINER = 'loom-secrets';
export const SECRETS_VOLUME = 'loom-secrets';
export const SECRETS_TOKEN_VOLUME = 'loom-secrets-token';
export const SECRETS_DIR = '/run/secrets/loom';
const SECRETS_TOKEN_DIR = '/var/run/secrets/loom-secrets-token';

/**
 * The secrets init container's program (busybox/POSIX sh + wget + tar): send the pod's projected
 * token (audience loom-secrets) to loom-server, which answers with a tar of 0400 files. No value
 * is ever in the pod spec, an environment variable or an argument; the URL is $0.
 */
export const SECRETS_FETCH_SCRIPT = [
  'set -eu',
  'umask 0277',
  `cd ${SECRETS_DIR}`,
  `wget -q -O .bundle.tar --header "Authorization: Bearer $(cat ${SECRETS_TOKEN_DIR}/token)" --post-data "" "$0/internal/secrets/k8s/fetch"`,
  'tar -xf .bundle.tar',
  'rm -f .bundle.tar',
].join('\n');

/** The weaver user of the images: uid and gid 1000. */
export const WEAVER_UID = 1000;
export const WEAVER_GID = 1000;

/** The directory a repo is cloned into: the last path segment of the URL without `.git`. */
export function repoDirName(repo: string): string {
  let path = repo;
  try {
    path = new URL(repo).pathname;
  } catch {
    // not a URL: use the string as a path
  }
  let last = path.split('/').filter(Boolean).pop() ?? '';
  try {
    last = decodeURIComponent(last);
  } catch {
    // keep it encoded
  }
  const name = last.replace(/\.git$/i, '').replace(/[^A-Za-z0-9._-]/g, '-');
  if (!name || name === '.' || name === '..') return 'repo';
  return name;
}

export function workingDir(spec: Pick<WeaverSpec, 'repo'>): string {
  return spec.repo ? `${WORKSPACE_DIR}/${repoDirName(spec.repo)}` : WORKSPACE_DIR;
}

/** argv of the clone init container (no shell). */
export function cloneCommand(repo: string, branch?: string): string[] {
  return ['git', 'clone', '--depth', '1', ...(branch ? ['--branch', branch] : []), '--', repo, `${WORKSPACE_DIR}/${repoDirName(repo)}`];
}

/** The file (in the secrets volume) holding the clone token, written by loom-server's bundle. */
export const GIT_TOKEN_FILE = '.git-token';
export const GIT_SECRET_ANNOTATION = 'loom.dev/git-secret';

/**
 * The clone argv when the pod has secrets: git asks a credential helper, which reads the token
 * from the in-memory volume (only after the server answers 401); the token is never in argv,
 * the environment or the pod spec, and git's credential protocol gives it to that host only.
 */
export function cloneCommandWithToken(repo: string, branch?: string): string[] {
  const helper = `!f() { test "$1" = get || exit 0; test -r ${SECRETS_DIR}/${GIT_TOKEN_FILE} || exit 0; echo username=x-access-token; printf 'password=%s\\n' "$(cat ${SECRETS_DIR}/${GIT_TOKEN_FILE})"; }; f`;
  const [git, ...rest] = cloneCommand(repo, branch);
  return [git!, '-c', 'credential.helper=', '-c', `credential.helper=${helper}`, ...rest];
}

/** activeDeadlineSeconds: the lifetime, a second guard beside the lifecycle layer's TTL timer. */
export function deadlineSeconds(lifetimeHours: number): number {
  return Math.max(1, Math.ceil(lifetimeHours * 3600));
}

function restrictedSecurityContext(): V1SecurityContext {
  return {
    runAsNonRoot: true,
    runAsUser: WEAVER_UID,
    runAsGroup: WEAVER_GID,
    allowPrivilegeEscalation: false,
    capabilities: { drop: ['ALL'] },
    seccompProfile: { type: 'RuntimeDefault' },
  };
}

const MIB = 1024 * 1024;

/** The Secret holding a weaver pod's audit credential (key `token`), minted by loom-server. */
export const auditSecretName = (weaverId: string) => `loom-audit-${weaverId}`.slice(0, 253);
const AUDIT_CGROUP_VOLUME = 'host-cgroup';
const AUDIT_TRACEFS_VOLUME = 'host-tracefs';
const AUDIT_BUFFER_VOLUME = 'audit-buffer';
const AUDIT_TOKEN_VOLUME = 'audit-token';
/** Where the audit sidecar reads its credential (the Secret, mounted read-only). */
export const AUDIT_TOKEN_DIR = '/var/run/loom-audit';

function auditSidecar(spec: WeaverSpec, audit: AuditSettings, serverUrl: string): V1Container {
  // The buffer may fill to bufferMaxBytes; leave room for the process itself.
  const memLimitMi = Math.ceil(audit.bufferMaxBytes / MIB) + 128;
  return {
    name: AUDIT_CONTAINER,
    image: audit.image,
    // loom-audit-sidecar (src/audit/sidecar/main.ts): filters this pod's cgroup, found by the pod
    // UID under the host's cgroup hierarchy (mounted read-only), excluding its own container.
    command: ['loom-audit-sidecar'],
    volumeMounts: [
      { name: AUDIT_CGROUP_VOLUME, mountPath: '/host/sys/fs/cgroup', readOnly: true },
      // per-syscall tracepoint ids: the host's tracefs, since the sidecar may not mount one
      { name: AUDIT_TRACEFS_VOLUME, mountPath: '/sys/kernel/tracing', readOnly: true },
      { name: AUDIT_BUFFER_VOLUME, mountPath: '/var/lib/loom-audit' },
      // the credential loom-server minted for this weaver's pod (only its hash is kept there)
      { name: AUDIT_TOKEN_VOLUME, mountPath: AUDIT_TOKEN_DIR, readOnly: true },
    ],
    // A native sidecar (Kubernetes >= 1.29): an init container that keeps running beside the main
    // container and is stopped once the main container ends, so it never keeps the pod alive.
    restartPolicy: 'Always',
    ports: [
      { name: 'metrics', containerPort: audit.metricsPort, protocol: 'TCP' },
      { name: 'health', containerPort: audit.healthPort, protocol: 'TCP' },
    ],
    env: [
      { name: 'LOOM_WEAVER_ID', value: spec.id },
      { name: 'LOOM_AUDIT_BATCH_INTERVAL_MS', value: String(audit.batchIntervalMs) },
      { name: 'LOOM_AUDIT_BUFFER_MAX_BYTES', value: String(audit.bufferMaxBytes) },
      { name: 'LOOM_AUDIT_METRICS_PORT', value: String(audit.metricsPort) },
      { name: 'LOOM_AUDIT_HEALTH_PORT', value: String(audit.healthPort) },
      { name: 'LOOM_AUDIT_POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'LOOM_AUDIT_POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
      { name: 'LOOM_AUDIT_POD_UID', valueFrom: { fieldRef: { fieldPath: 'metadata.uid' } } },
      { name: 'LOOM_AUDIT_WEAVER_ID', value: spec.id },
      { name: 'LOOM_AUDIT_ORG_ID', value: spec.orgId },
      { name: 'LOOM_AUDIT_OWNER_USER_ID', value: spec.ownerUserId },
      { name: 'LOOM_AUDIT_SERVER_URL', value: serverUrl },
      { name: 'LOOM_AUDIT_CGROUP_ROOT', value: '/host/sys/fs/cgroup' },
      { name: 'LOOM_AUDIT_BUFFER_DIR', value: '/var/lib/loom-audit/buffer' },
      // a file, not an env value: read at each send, never in the pod's env listing
      { name: 'LOOM_AUDIT_TOKEN_FILE', value: `${AUDIT_TOKEN_DIR}/token` },
    ],
    livenessProbe: {
      httpGet: { path: '/health', port: 'health' },
      initialDelaySeconds: 5,
      periodSeconds: 10,
      failureThreshold: 3,
    },
    readinessProbe: {
      httpGet: { path: '/health', port: 'health' },
      periodSeconds: 5,
    },
    resources: {
      requests: { cpu: '50m', memory: '64Mi' },
      limits: { cpu: '500m', memory: `${memLimitMi}Mi` },
    },
    securityContext: {
      // Loading BPF programs needs the capabilities in the effective set, which Kubernetes only
      // gives to uid 0 (it has no ambient capabilities), so the sidecar alone runs as root.
      runAsNonRoot: false,
      runAsUser: 0,
      runAsGroup: 0,
      allowPrivilegeEscalation: false,
      capabilities: {
        drop: ['ALL'],
        // BPF: bpf() for maps and programs; PERFMON: tracing programs (tp_btf, fentry, raw
        // tracepoints) and perf buffers; SYS_RESOURCE: the memlock rlimit on kernels < 5.11.
        // SYS_ADMIN is deliberately absent: since 5.8 BPF+PERFMON cover tracing, the programs
        // attach with tp_btf/fentry so no tracefs/debugfs mount is needed, and Kubernetes
        // rejects SYS_ADMIN together with allowPrivilegeEscalation: false anyway.
        add: ['BPF', 'PERFMON', 'SYS_RESOURCE'],
      },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    terminationMessagePolicy: 'FallbackToLogsOnError',
  };
}

/** The Secret holding a weaver pod's ephemeral WireGuard key (keys `private-key`, `address`), made by loom-server. */
export const tunnelSecretName = (weaverId: string) => `loom-wg-${weaverId}`.slice(0, 253);
/** wireguard-go's UDP port on the pod IP (the pod has its own network namespace, so one fixed port). */
export const TUNNEL_PORT = 51820;
/** The WireGuard interface inside the pod's network namespace. */
export const TUNNEL_IFACE = 'loomwg';
const TUNNEL_KEY_VOLUME = 'wg-key';
const TUNNEL_TUN_VOLUME = 'dev-net-tun';
/** Where the sidecar reads its key and address (the Secret, mounted read-only, 0400). */
export const TUNNEL_KEY_DIR = '/var/run/loom-wg';

/**
 * The sidecar's program: wireguard-go in the foreground, then the key (from the Secret's file —
 * never argv, env or the pod spec), the port, the weaver's tunnel address, up. Peers are added by
 * loom-server through the exec API (`wg set … peer`) as sessions open. If wireguard-go exits, the
 * script exits and the kubelet restarts the native sidecar (restartPolicy Always).
 */
export const TUNNEL_SIDECAR_SCRIPT = [
  'set -eu',
  'umask 0077',
  // a clear message in the termination log rather than wg's bare "fopen: No such file or directory"
  `for f in private-key address; do test -s ${TUNNEL_KEY_DIR}/$f || { echo "loom wireguard sidecar: ${TUNNEL_KEY_DIR}/$f is missing or empty (the weaver's Secret)" >&2; exit 1; }; done`,
  `wireguard-go -f ${TUNNEL_IFACE} & wg_pid=$!`,
  `until wg show ${TUNNEL_IFACE} public-key >/dev/null 2>&1; do kill -0 "$wg_pid"; sleep 0.1; done`,
  `wg set ${TUNNEL_IFACE} listen-port ${TUNNEL_PORT} private-key ${TUNNEL_KEY_DIR}/private-key`,
  `ip -6 addr add "$(cat ${TUNNEL_KEY_DIR}/address)/64" dev ${TUNNEL_IFACE} nodad`,
  `ip link set ${TUNNEL_IFACE} up`,
  'wait "$wg_pid"',
].join('\n');

function tunnelSidecar(t: TunnelSidecarSettings): V1Container {
  return {
    name: TUNNEL_CONTAINER,
    image: t.image,
    command: ['sh', '-c', TUNNEL_SIDECAR_SCRIPT],
    // A native sidecar (Kubernetes >= 1.29): up before the weaver's own process, stopped after it.
    restartPolicy: 'Always',
    ports: [{ name: 'wireguard', containerPort: TUNNEL_PORT, protocol: 'UDP' }],
    volumeMounts: [
      { name: TUNNEL_KEY_VOLUME, mountPath: TUNNEL_KEY_DIR, readOnly: true },
      { name: TUNNEL_TUN_VOLUME, mountPath: '/dev/net/tun' },
    ],
    // ready once the key is set and the interface is up: the weaver's kernel then serves the tunnel
    readinessProbe: { exec: { command: ['sh', '-c', `ip link show ${TUNNEL_IFACE} up | grep -q UP`] }, periodSeconds: 5 },
    resources: { requests: { cpu: '10m', memory: '16Mi' }, limits: { cpu: '1', memory: '128Mi' } },
    securityContext: {
      // TUNSETIFF, adding the address and link up need CAP_NET_ADMIN in the effective set, which
      // Kubernetes gives only to uid 0 (no ambient capabilities): root, with every other capability
      // dropped, no privilege escalation, not privileged. The weaver container keeps none.
      runAsNonRoot: false,
      runAsUser: 0,
      runAsGroup: 0,
      privileged: false,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'], add: ['NET_ADMIN'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    terminationMessagePolicy: 'FallbackToLogsOnError',
  };
}

/** The pod for one weaver. */
export function buildPod(spec: WeaverSpec, opts: PodSpecOptions): V1Pod {
  const env: V1EnvVar[] = Object.keys(spec.env)
    .sort()
    .map((name) => ({ name, value: spec.env[name] }));
  const resources = {
    requests: { cpu: spec.resources.cpu, memory: spec.resources.memory },
    limits: { cpu: spec.resources.cpu, memory: spec.resources.memory },
  };
  const workspaceMount = { name: WORKSPACE_VOLUME, mountPath: WORKSPACE_DIR };

  const main: V1Container = {
    name: MAIN_CONTAINER,
    image: spec.image,
    ...(spec.command && spec.command.length > 0 ? { command: [...spec.command] } : {}),
    tty: true,
    stdin: true,
    stdinOnce: false,
    workingDir: workingDir(spec),
    ...(env.length > 0 ? { env } : {}),
    resources,
    securityContext: restrictedSecurityContext(),
    volumeMounts: [workspaceMount],
    terminationMessagePolicy: 'FallbackToLogsOnError',
  };

  const initContainers: V1Container[] = [];
  if (opts.audit.enabled) initContainers.push(auditSidecar(spec, opts.audit, opts.audit.serverUrl));
  const volumes: V1Volume[] = [{ name: WORKSPACE_VOLUME, emptyDir: {} }];
  if (opts.audit.enabled) {
    volumes.push(
      { name: AUDIT_CGROUP_VOLUME, hostPath: { path: '/sys/fs/cgroup', type: 'Directory' } },
      { name: AUDIT_TRACEFS_VOLUME, hostPath: { path: '/sys/kernel/tracing', type: 'Directory' } },
      { name: AUDIT_BUFFER_VOLUME, emptyDir: { sizeLimit: `${Math.ceil(opts.audit.bufferMaxBytes / MIB) + 16}Mi` } },
      // only the audit sidecar mounts it; readable by its root user alone
      { name: AUDIT_TOKEN_VOLUME, secret: { secretName: auditSecretName(spec.id), defaultMode: 0o400, items: [{ key: 'token', path: 'token' }] } },
    );
  }
  if (opts.tunnel) {
    initContainers.push(tunnelSidecar(opts.tunnel));
    volumes.push(
      // only the wireguard sidecar mounts it; readable by its root user alone
      { name: TUNNEL_KEY_VOLUME, secret: { secretName: tunnelSecretName(spec.id), defaultMode: 0o400, items: [{ key: 'private-key', path: 'private-key' }, { key: 'address', path: 'address' }] } },
      // The TUN device node, from the host (hostPath CharDevice): container runtimes (runc,
      // crun) allow c 10:200 in every container's device cgroup by default, so no privileged
      // mode and no device plugin are needed; a missing node fails the mount, not silently.
      { name: TUNNEL_TUN_VOLUME, hostPath: { path: '/dev/net/tun', type: 'CharDevice' } },
    );
  }
  if (opts.secrets) {
    volumes.push(
      { name: SECRETS_VOLUME, emptyDir: { medium: 'Memory', sizeLimit: opts.secrets.sizeLimit } },
      // Only the init container mounts it; the pod's own service-account token stays unmounted.
      { name: SECRETS_TOKEN_VOLUME, projected: { defaultMode: 0o400, sources: [{ serviceAccountToken: { audience: SECRETS_AUDIENCE, expirationSeconds: 600, path: 'token' } }] } },
    );
    initContainers.push({
      name: SECRETS_CONTAINER,
      image: spec.image,
      command: ['sh', '-c', SECRETS_FETCH_SCRIPT, opts.secrets.url],
      resources: { requests: { cpu: '10m', memory: '16Mi' }, limits: { cpu: '200m', memory: '64Mi' } },
      securityContext: restrictedSecurityContext(),
      volumeMounts: [
        { name: SECRETS_VOLUME, mountPath: SECRETS_DIR },
        { name: SECRETS_TOKEN_VOLUME, mountPath: SECRETS_TOKEN_DIR, readOnly: true },
      ],
      terminationMessagePolicy: 'FallbackToLogsOnError',
    });
    main.volumeMounts!.push({ name: SECRETS_VOLUME, mountPath: SECRETS_DIR, readOnly: true });
    main.env = [...(main.env ?? []), { name: 'LOOM_SECRETS_DIR', value: SECRETS_DIR }];
  }
  if (spec.repo) {
    initContainers.push({
      name: CLONE_CONTAINER,
      image: opts.gitImage || spec.image,
      command: opts.secrets ? cloneCommandWithToken(spec.repo, spec.branch) : cloneCommand(spec.repo, spec.branch),
      env: [
        // Fail instead of waiting for credentials nobody will type.
        { name: 'GIT_TERMINAL_PROMPT', value: '0' },
        { name: 'HOME', value: '/tmp' },
      ],
      // Same as the main container: an init container's requests don't add to the pod's,
      // and a ResourceQuota on limits needs every container to have them.
      resources,
      securityContext: restrictedSecurityContext(),
      volumeMounts: [workspaceMount, ...(opts.secrets ? [{ name: SECRETS_VOLUME, mountPath: SECRETS_DIR, readOnly: true }] : [])],
      // git's own error ("fatal: …") becomes the termination message the status shows.
      terminationMessagePolicy: 'FallbackToLogsOnError',
    });
  }

  const labels: Record<string, string> = {
    [MANAGED_BY_LABEL]: MANAGED_BY_VALUE,
    [WEAVER_ID_LABEL]: toLabelValue(spec.id),
    [ORG_ID_LABEL]: toLabelValue(spec.orgId),
    [OWNER_LABEL]: toLabelValue(spec.ownerUserId),
  };
  const annotations: Record<string, string> = {
    [WEAVER_ID_ANNOTATION]: spec.id,
    [LIFETIME_ANNOTATION]: String(spec.lifetimeHours),
    [EXPIRES_AT_ANNOTATION]: spec.expiresAt.toISOString(),
    [TAGS_ANNOTATION]: JSON.stringify(spec.tags),
    // The secret's name only: the server reads it from the live pod when the pod asks for its secrets.
    ...(spec.gitSecret && opts.secrets ? { [GIT_SECRET_ANNOTATION]: spec.gitSecret } : {}),
  };

  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: podName(spec.id),
      namespace: opts.namespace,
      labels,
      annotations,
    },
    spec: {
      restartPolicy: 'Never',
      activeDeadlineSeconds: deadlineSeconds(spec.lifetimeHours),
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: 10,
      securityContext: {
        fsGroup: WEAVER_GID,
        seccompProfile: { type: 'RuntimeDefault' },
      },
      ...(opts.imagePullSecrets.length > 0 ? { imagePullSecrets: opts.imagePullSecrets.map((name) => ({ name })) } : {}),
      ...(initContainers.length > 0 ? { initContainers } : {}),
      containers: [main],
      volumes,
    },
  };
}
