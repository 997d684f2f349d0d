// The mapping from services.loom-server settings to loom-server's environment
// (nixos-modules/lib/env.nix), evaluated with nix-instantiate: the exact environment for the
// defaults and for a sample with every option set, and its agreement with the TypeScript loader.
import t from 'tap';
import { VARIABLES, loadConfig } from '../../src/server/config/load.js';
import { CANNOT_RUN_HERE, nixEval, nixEvalError, requireNix } from './nix.js';

t.comment(requireNix());
t.comment(CANNOT_RUN_HERE);

const ENV = 'import (REPO + "/nixos-modules/lib/env.nix") { }';
const toEnv = (settings: unknown): Record<string, string> =>
  nixEval(`(${ENV}).toEnv (builtins.fromJSON ${JSON.stringify(JSON.stringify(settings))})`);

// Every option of the table set to a value other than its default.
export const FULL_SAMPLE = {
  listenAddress: '0.0.0.0:8443',
  dataDir: '/srv/loom',
  logLevel: 'debug',
  publicUrl: 'https://loom.example.com',
  sessionIdleDays: 7,
  streams: { recheckSecs: 5, pingSecs: 0.5 },
  auth: { loginMaxFailures: 3, loginWindowSecs: 60 },
  minFreeDisk: '5Gi',
  quota: { user: { count: 5, cpu: '4', memory: '8Gi' }, org: { count: 50, cpu: '16', memory: '32Gi' } },
  weaver: {
    maxCpu: '8',
    maxMemory: '16Gi',
    pidsLimit: 2048,
    usernsBase: 200000,
    diskMax: '20Gi',
    diskCheckSecs: 30,
    git: { allowedNetworks: ['10.1.0.0/16', 'fd00::/8'], maxBytes: 2147483648, timeoutSecs: 600, caFile: '/etc/loom/git-ca.pem' },
    enable: false,
    backend: 'kubernetes',
    runtime: 'runc',
    network: 'loopback',
    networkAllowedNetworks: ['10.20.0.0/16', 'fd12::/64'],
    defaultImage: 'ghcr.io/acme/weaver:1',
    defaultCpu: '500m',
    defaultMemory: '2Gi',
    namespace: 'weavers-prod',
    networkPolicies: false,
    internalCidrs: ['10.0.0.0/8', 'fd00::/8'],
    kubeconfigPath: '/etc/rancher/k3s/k3s.yaml',
    cleanupIntervalSecs: 600,
    defaultTtlHours: 2.5,
    maxTtlHours: 72,
    maxConcurrent: 8,
    readyTimeoutSecs: 120,
    imagePullSecrets: ['ghcr-secret', 'quay-secret'],
    execTimeoutSecs: 600,
    execOutputMaxBytes: 1048576,
    filesMaxBytes: 1073741824,
    audit: {
      enable: true,
      image: 'ghcr.io/acme/audit:1',
      batchIntervalMs: 250,
      bufferMaxBytes: 1073741824,
      metricsPort: 9190,
      healthPort: 9191,
      serverUrl: 'http://loom.loom-system.svc:18090',
      retentionDays: 7,
      maxEventsPerWeaver: 5000,
    },
  },
  branching: { gcIntervalSecs: 300, importRoots: ['/srv/rootfs', '/data/images'], archiveMaxBytes: 4294967296 },
  secrets: { masterKeyFile: '/run/keys/loom-master.key', tmpfsSize: '4Mi', kubernetesUrl: 'http://loom.loom-system.svc:18090' },
  tunnel: { udpAddress: '0.0.0.0:51820', udpEndpoint: 'loom.example.com:51820', kubernetesImage: 'ghcr.io/acme/wireguard:1' },
  images: { buildMirror: 'http://mirror.example.com/debian', buildExtraSources: ['deb http://deb.debian.org/debian-security bookworm-security main'], buildTimeoutSecs: 900, pullTimeoutSecs: 30 },
};

const FULL_ENV = {
  LOOM_HTTP_ADDR: '0.0.0.0:8443',
  LOOM_DATA_DIR: '/srv/loom',
  LOOM_LOG_LEVEL: 'debug',
  LOOM_PUBLIC_URL: 'https://loom.example.com',
  LOOM_SESSION_IDLE_DAYS: '7',
  LOOM_STREAM_RECHECK_SECS: '5',
  LOOM_STREAM_PING_SECS: '0.5',
  LOOM_LOGIN_MAX_FAILURES: '3',
  LOOM_LOGIN_WINDOW_SECS: '60',
  LOOM_SERVER_WEAVER_ENABLED: 'false',
  LOOM_SERVER_WEAVER_BACKEND: 'kubernetes',
  LOOM_SERVER_WEAVER_RUNTIME: 'runc',
  LOOM_SERVER_WEAVER_NETWORK: 'loopback',
  LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS: '10.20.0.0/16,fd12::/64',
  LOOM_SERVER_WEAVER_DEFAULT_IMAGE: 'ghcr.io/acme/weaver:1',
  LOOM_SERVER_WEAVER_DEFAULT_CPU: '500m',
  LOOM_SERVER_WEAVER_DEFAULT_MEMORY: '2Gi',
  LOOM_SERVER_WEAVER_K8S_NAMESPACE: 'weavers-prod',
  KUBECONFIG: '/etc/rancher/k3s/k3s.yaml',
  LOOM_SERVER_WEAVER_CLEANUP_INTERVAL_SECS: '600',
  LOOM_SERVER_WEAVER_DEFAULT_TTL_HOURS: '2.5',
  LOOM_SERVER_WEAVER_MAX_TTL_HOURS: '72',
  LOOM_SERVER_WEAVER_MAX_CONCURRENT: '8',
  LOOM_SERVER_WEAVER_READY_TIMEOUT_SECS: '120',
  LOOM_SERVER_WEAVER_IMAGE_PULL_SECRETS: 'ghcr-secret,quay-secret',
  LOOM_SERVER_WEAVER_EXEC_TIMEOUT_SECS: '600',
  LOOM_SERVER_WEAVER_EXEC_OUTPUT_MAX_BYTES: '1048576',
  LOOM_SERVER_WEAVER_FILES_MAX_BYTES: '1073741824',
  LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'true',
  LOOM_SERVER_WEAVER_AUDIT_IMAGE: 'ghcr.io/acme/audit:1',
  LOOM_SERVER_WEAVER_AUDIT_BATCH_INTERVAL_MS: '250',
  LOOM_SERVER_WEAVER_AUDIT_BUFFER_MAX_BYTES: '1073741824',
  LOOM_SERVER_WEAVER_AUDIT_METRICS_PORT: '9190',
  LOOM_SERVER_WEAVER_AUDIT_HEALTH_PORT: '9191',
  LOOM_SERVER_WEAVER_AUDIT_SERVER_URL: 'http://loom.loom-system.svc:18090',
  LOOM_SERVER_WEAVER_AUDIT_RETENTION_DAYS: '7',
  LOOM_SERVER_WEAVER_AUDIT_MAX_EVENTS_PER_WEAVER: '5000',
  LOOM_SERVER_WEAVER_K8S_NETWORK_POLICIES: 'false',
  LOOM_SERVER_WEAVER_K8S_INTERNAL_CIDRS: '10.0.0.0/8,fd00::/8',
  LOOM_BRANCHING_GC_INTERVAL_SECS: '300',
  LOOM_MIN_FREE_DISK: '5Gi',
  LOOM_QUOTA_USER_COUNT: '5',
  LOOM_QUOTA_USER_CPU: '4',
  LOOM_QUOTA_USER_MEMORY: '8Gi',
  LOOM_QUOTA_ORG_COUNT: '50',
  LOOM_QUOTA_ORG_CPU: '16',
  LOOM_QUOTA_ORG_MEMORY: '32Gi',
  LOOM_SERVER_WEAVER_MAX_CPU: '8',
  LOOM_SERVER_WEAVER_MAX_MEMORY: '16Gi',
  LOOM_SERVER_WEAVER_PIDS_LIMIT: '2048',
  LOOM_SERVER_WEAVER_USERNS_BASE: '200000',
  LOOM_SERVER_WEAVER_DISK_MAX: '20Gi',
  LOOM_SERVER_WEAVER_DISK_CHECK_SECS: '30',
  LOOM_SERVER_WEAVER_GIT_ALLOWED_NETWORKS: '10.1.0.0/16,fd00::/8',
  LOOM_SERVER_WEAVER_GIT_MAX_BYTES: '2147483648',
  LOOM_SERVER_WEAVER_GIT_TIMEOUT_SECS: '600',
  LOOM_SERVER_WEAVER_GIT_CA_FILE: '/etc/loom/git-ca.pem',
  LOOM_BRANCHING_IMPORT_ROOTS: '/srv/rootfs,/data/images',
  LOOM_BRANCHING_ARCHIVE_MAX_BYTES: '4294967296',
  LOOM_SECRETS_MASTER_KEY_FILE: '/run/keys/loom-master.key',
  LOOM_SECRETS_TMPFS_SIZE: '4Mi',
  LOOM_SECRETS_K8S_URL: 'http://loom.loom-system.svc:18090',
  LOOM_TUNNEL_UDP_ADDR: '0.0.0.0:51820',
  LOOM_TUNNEL_UDP_ENDPOINT: 'loom.example.com:51820',
  LOOM_TUNNEL_K8S_IMAGE: 'ghcr.io/acme/wireguard:1',
  LOOM_IMAGE_BUILD_MIRROR: 'http://mirror.example.com/debian',
  LOOM_IMAGE_BUILD_EXTRA_SOURCES: 'deb http://deb.debian.org/debian-security bookworm-security main',
  LOOM_IMAGE_BUILD_TIMEOUT_SECS: '900',
  LOOM_IMAGE_PULL_TIMEOUT_SECS: '30',
};

const DEFAULT_ENV = {
  LOOM_HTTP_ADDR: '127.0.0.1:18090',
  LOOM_DATA_DIR: './data',
  LOOM_LOG_LEVEL: 'info',
  LOOM_SESSION_IDLE_DAYS: '30',
  LOOM_STREAM_RECHECK_SECS: '30',
  LOOM_STREAM_PING_SECS: '20',
  LOOM_LOGIN_MAX_FAILURES: '10',
  LOOM_LOGIN_WINDOW_SECS: '900',
  LOOM_SERVER_WEAVER_ENABLED: 'true',
  LOOM_SERVER_WEAVER_BACKEND: 'local',
  LOOM_SERVER_WEAVER_RUNTIME: 'auto',
  LOOM_SERVER_WEAVER_NETWORK: 'slirp4netns',
  LOOM_SERVER_WEAVER_DEFAULT_CPU: '1',
  LOOM_SERVER_WEAVER_DEFAULT_MEMORY: '1Gi',
  LOOM_SERVER_WEAVER_K8S_NAMESPACE: 'loom-weavers',
  LOOM_SERVER_WEAVER_CLEANUP_INTERVAL_SECS: '1800',
  LOOM_SERVER_WEAVER_DEFAULT_TTL_HOURS: '4',
  LOOM_SERVER_WEAVER_MAX_TTL_HOURS: '48',
  LOOM_SERVER_WEAVER_MAX_CONCURRENT: '64',
  LOOM_SERVER_WEAVER_READY_TIMEOUT_SECS: '60',
  LOOM_SERVER_WEAVER_EXEC_TIMEOUT_SECS: '300',
  LOOM_SERVER_WEAVER_EXEC_OUTPUT_MAX_BYTES: '16777216',
  LOOM_SERVER_WEAVER_FILES_MAX_BYTES: '4294967296',
  LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'false',
  LOOM_SERVER_WEAVER_AUDIT_BATCH_INTERVAL_MS: '100',
  LOOM_SERVER_WEAVER_AUDIT_BUFFER_MAX_BYTES: '268435456',
  LOOM_SERVER_WEAVER_AUDIT_METRICS_PORT: '9090',
  LOOM_SERVER_WEAVER_AUDIT_HEALTH_PORT: '9091',
  LOOM_SERVER_WEAVER_AUDIT_RETENTION_DAYS: '30',
  LOOM_SERVER_WEAVER_AUDIT_MAX_EVENTS_PER_WEAVER: '1000000',
  LOOM_SERVER_WEAVER_K8S_NETWORK_POLICIES: 'true',
  LOOM_SERVER_WEAVER_K8S_INTERNAL_CIDRS: '10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,100.64.0.0/10,127.0.0.0/8,fc00::/7,fe80::/10,::1/128',
  LOOM_BRANCHING_GC_INTERVAL_SECS: '60',
  LOOM_MIN_FREE_DISK: '1Gi',
  LOOM_QUOTA_USER_COUNT: '20',
  LOOM_QUOTA_USER_CPU: '8',
  LOOM_QUOTA_USER_MEMORY: '16Gi',
  LOOM_QUOTA_ORG_COUNT: '100',
  LOOM_QUOTA_ORG_CPU: '32',
  LOOM_QUOTA_ORG_MEMORY: '64Gi',
  LOOM_SERVER_WEAVER_MAX_CPU: '4',
  LOOM_SERVER_WEAVER_MAX_MEMORY: '8Gi',
  LOOM_SERVER_WEAVER_PIDS_LIMIT: '1024',
  LOOM_SERVER_WEAVER_USERNS_BASE: '100000',
  LOOM_SERVER_WEAVER_DISK_MAX: '10Gi',
  LOOM_SERVER_WEAVER_DISK_CHECK_SECS: '10',
  LOOM_SERVER_WEAVER_GIT_MAX_BYTES: '1073741824',
  LOOM_SERVER_WEAVER_GIT_TIMEOUT_SECS: '300',
  LOOM_BRANCHING_ARCHIVE_MAX_BYTES: '2147483648',
  LOOM_SECRETS_TMPFS_SIZE: '1Mi',
  LOOM_IMAGE_BUILD_MIRROR: 'http://deb.debian.org/debian',
  LOOM_IMAGE_BUILD_TIMEOUT_SECS: '1800',
  LOOM_IMAGE_PULL_TIMEOUT_SECS: '60',
};

const mapped = VARIABLES.filter((v) => v.option !== null);

t.test('defaults: the exact environment', async (t) => {
  t.same(toEnv({}), DEFAULT_ENV);
  // Unset optional strings (publicUrl, defaultImage, kubeconfigPath, audit.image) and the empty
  // imagePullSecrets list are omitted.
  for (const name of ['LOOM_PUBLIC_URL', 'LOOM_SERVER_WEAVER_DEFAULT_IMAGE', 'KUBECONFIG', 'LOOM_SERVER_WEAVER_AUDIT_IMAGE', 'LOOM_SERVER_WEAVER_IMAGE_PULL_SECRETS']) {
    t.notOk(name in toEnv({}), `${name} omitted`);
  }
});

t.test('explicit nulls and empty values are omitted like unset ones', async (t) => {
  t.same(
    toEnv({ publicUrl: null, weaver: { kubeconfigPath: null, defaultImage: '', imagePullSecrets: [], audit: { image: null } } }),
    DEFAULT_ENV,
  );
});

t.test('a full sample with every option set: the exact environment', async (t) => {
  t.same(toEnv(FULL_SAMPLE), FULL_ENV);
});

t.test('the mapping is total over the table', async (t) => {
  // The full sample sets every option: every table entry with an option path must appear, so a
  // new entry in variables.json fails here until the sample (and the module) cover it.
  t.same(Object.keys(toEnv(FULL_SAMPLE)).sort(), mapped.map((v) => v.name).sort());
  const paths = nixEval<string[]>(`(${ENV}).optionPaths`);
  t.same(paths.sort(), mapped.map((v) => v.option).sort());
  // Every variable the full sample emits differs from its default (non-default sample).
  const def = toEnv({});
  for (const [k, v] of Object.entries(FULL_ENV)) t.not(def[k], v, `${k} non-default`);
});

t.test('the TypeScript loader reads back what Nix writes', async (t) => {
  const cfg = loadConfig(toEnv(FULL_SAMPLE));
  t.equal(cfg.httpHost, '0.0.0.0');
  t.equal(cfg.httpPort, 8443);
  t.equal(cfg.dataDir, '/srv/loom');
  t.equal(cfg.publicUrl, 'https://loom.example.com');
  t.equal(cfg.sessionIdleDays, 7);
  t.equal(cfg.weaver.enabled, false);
  t.equal(cfg.weaver.backend, 'kubernetes');
  t.equal(cfg.weaver.kubeconfig, '/etc/rancher/k3s/k3s.yaml');
  t.equal(cfg.weaver.defaultTtlHours, 2.5);
  t.same(cfg.weaver.imagePullSecrets, ['ghcr-secret', 'quay-secret']);
  t.equal(cfg.weaver.audit.bufferMaxBytes, 1073741824);
  t.equal(cfg.branching.gcIntervalSecs, 300);
  // Defaults: the environment Nix writes for empty settings gives the loader's own defaults.
  t.same(loadConfig(toEnv({})), loadConfig({}));
});

t.test('option defaults tree mirrors the table', async (t) => {
  const defaults = nixEval<Record<string, unknown>>(`(${ENV}).defaults`);
  for (const v of mapped) {
    const got = v.option!.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown>)[k], defaults);
    const optional = (v.type === 'string' || v.type === 'path') && v.default === '';
    t.same(got, optional ? null : v.default, `${v.option}`);
  }
});

t.test('wrong values fail evaluation naming the option and the variable', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ sessionIdleDays: 0 }, /services\.loom-server\.sessionIdleDays \(LOOM_SESSION_IDLE_DAYS\): expected an int in 1\.\.365/],
    [{ weaver: { maxConcurrent: 1.5 } }, /weaver\.maxConcurrent .*expected an int/],
    [{ weaver: { backend: 'docker' } }, /LOOM_SERVER_WEAVER_BACKEND.*one of local, kubernetes/],
    [{ weaver: { enable: 'yes' } }, /LOOM_SERVER_WEAVER_ENABLED.*a bool/],
    [{ weaver: { defaultTtlHours: 0 } }, /LOOM_SERVER_WEAVER_DEFAULT_TTL_HOURS.*a number/],
    [{ weaver: { imagePullSecrets: 'a,b' } }, /LOOM_SERVER_WEAVER_IMAGE_PULL_SECRETS.*a list of strings/],
    [{ weaver: { namespace: 'Bad_NS' } }, /LOOM_SERVER_WEAVER_K8S_NAMESPACE.*matching/],
    [{ listenAddress: null }, /LOOM_HTTP_ADDR/],
  ];
  for (const [settings, re] of cases) {
    t.match(nixEvalError(`(${ENV}).toEnv (builtins.fromJSON ${JSON.stringify(JSON.stringify(settings))})`), re, JSON.stringify(settings));
  }
});

t.test('portOf', async (t) => {
  t.equal(nixEval(`(${ENV}).portOf "127.0.0.1:18090"`), 18090);
  t.equal(nixEval(`(${ENV}).portOf "[::1]:443"`), 443);
});
