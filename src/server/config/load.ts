import { isAbsolute, join, resolve } from 'node:path';
import table from './variables.json' with { type: 'json' };
import { cpuMillis, memoryBytes } from '../../common/quantity.js';
import { parseCidrs } from '../../common/netaddr.js';
import { isAptSourceLine } from '../../images/build.js';

/** One variable of the shared table (also read by nixos-modules/loom-server.nix). */
export interface VariableSpec {
  name: string;
  option: string | null;
  type: 'addr' | 'path' | 'enum' | 'bool' | 'int' | 'number' | 'string' | 'list' | 'quantity-cpu' | 'quantity-memory';
  default: string | number | boolean | string[];
  values?: string[];
  min?: number;
  max?: number;
  pattern?: string;
  description: string;
}

export const VARIABLES: readonly VariableSpec[] = (table as { variables: VariableSpec[] }).variables;

/**
 * Test-only knobs: read by the loader with the same checks, but not operator settings, so not in
 * variables.json (hence no NixOS option and no row in the README's configuration table).
 */
export const TEST_KNOBS: readonly VariableSpec[] = [
  { name: 'LOOM_BRANCHING_TEST_DELAY_MS', option: null, type: 'int', min: 0, max: 3600000, default: 0, description: 'tests only: branching operations sleep this long after copying' },
];

/** loom image build and registry pulls (local backend). */
export interface ImagesConfig {
  buildMirror: string;
  buildExtraSources: string[];
  buildTimeoutSecs: number;
  pullTimeoutSecs: number;
}

export interface WeaverConfig {
  enabled: boolean;
  backend: 'local' | 'kubernetes';
  runtime: 'auto' | 'runc' | 'crun';
  network: 'loopback' | 'slirp4netns';
  /** CIDRs weavers may reach through slirp4netns although they are internal ranges. */
  networkAllowedNetworks: string[];
  defaultImage: string;
  defaultCpu: string;
  defaultMemory: string;
  k8sNamespace: string;
  k8sNetworkPolicies: boolean;
  k8sInternalCidrs: string[];
  kubeconfig: string;
  cleanupIntervalSecs: number;
  defaultTtlHours: number;
  maxTtlHours: number;
  maxConcurrent: number;
  readyTimeoutSecs: number;
  imagePullSecrets: string[];
  /** Largest cpu / memory one weaver or branching container may ask for. */
  maxCpu: string;
  maxMemory: string;
  pidsLimit: number;
  /** Host id that id 0 in a weaver's user namespace maps to; 0 = no user namespace. */
  usernsBase: number;
  diskMaxBytes: number;
  diskCheckSecs: number;
  git: { allowedNetworks: string[]; maxBytes: number; timeoutSecs: number; caFile: string };
  execTimeoutSecs: number;
  execOutputMaxBytes: number;
  filesMaxBytes: number;
  audit: {
    enabled: boolean;
    image: string;
    batchIntervalMs: number;
    bufferMaxBytes: number;
    metricsPort: number;
    healthPort: number;
    /** kubernetes: the URL weaver pods' audit sidecars deliver to */
    serverUrl: string;
    retentionDays: number;
    maxEventsPerWeaver: number;
  };
}

export interface Config {
  httpHost: string;
  httpPort: number;
  dataDir: string;
  logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';
  publicUrl: string;
  sessionIdleDays: number;
  streams: { recheckSecs: number; pingSecs: number };
  auth: { loginMaxFailures: number; loginWindowSecs: number };
  weaver: WeaverConfig;
  branching: { gcIntervalSecs: number; testDelayMs: number; importRoots: string[]; archiveMaxBytes: number };
  /** Per-user and per-org quotas over weavers and branching containers; 0 means no limit. */
  quota: { user: QuotaLimit; org: QuotaLimit };
  minFreeDiskBytes: number;
  secrets: SecretsConfig;
  /** WireGuard tunnels: the UDP gateway's bind address and the endpoint clients are told ('' = off / derived). */
  tunnel: { udpAddr: string; udpEndpoint: string; k8sImage: string };
  images: ImagesConfig;
}

export interface SecretsConfig {
  /** Absolute or relative path; '' was resolved to <dataDir>/secrets/master.key. */
  masterKeyFile: string;
  /** Size cap of a weaver's secrets tmpfs, a memory quantity. */
  tmpfsSize: string;
  /** URL weaver pods reach loom-server at for their secrets; '' means no secrets on kubernetes. */
  kubernetesUrl: string;
}

export interface QuotaLimit {
  count: number;
  cpuMillis: number;
  memoryBytes: number;
}

/** A configuration value that is wrong; the message is the one line the server prints before it stops. */
export class ConfigError extends Error {
  constructor(readonly variable: string, message: string) {
    super(`invalid ${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

type Value = string | number | boolean | string[];

const CPU_RE = /^(\d+(\.\d+)?|\d+m)$/;
const MEM_RE = /^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$/;

export function parseVariable(spec: VariableSpec, raw: string | undefined): Value {
  if (raw === undefined || raw === '') return spec.default;
  const fail = (accepts: string): never => {
    throw new ConfigError(spec.name, `${JSON.stringify(raw)} (accepts ${accepts})`);
  };
  switch (spec.type) {
    case 'bool': {
      const v = raw.toLowerCase();
      if (['true', '1', 'yes', 'on'].includes(v)) return true;
      if (['false', '0', 'no', 'off'].includes(v)) return false;
      return fail('true or false');
    }
    case 'int':
    case 'number': {
      const re = spec.type === 'int' ? /^-?\d+$/ : /^-?\d+(\.\d+)?$/;
      const n = Number(raw);
      const range = `${spec.min ?? '-inf'} to ${spec.max ?? 'inf'}`;
      if (!re.test(raw.trim()) || !Number.isFinite(n)) return fail(`${spec.type === 'int' ? 'a whole number' : 'a number'} from ${range}`);
      if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) return fail(`${range}`);
      return n;
    }
    case 'enum':
      if (!spec.values?.includes(raw)) return fail(`one of ${spec.values?.join(', ')}`);
      return raw;
    case 'addr': {
      const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(raw);
      if (!m || Number(m[2]) > 65535) return fail('host:port, e.g. 127.0.0.1:18090');
      return raw;
    }
    case 'list':
      return raw.split(',').map((s) => s.trim()).filter(Boolean);
    case 'quantity-cpu':
      if (!CPU_RE.test(raw)) return fail('a CPU quantity such as 500m or 2');
      return raw;
    case 'quantity-memory':
      if (!MEM_RE.test(raw)) return fail('a memory quantity such as 512Mi or 2Gi');
      return raw;
    case 'path':
    case 'string':
      if (spec.pattern && !new RegExp(spec.pattern).test(raw)) return fail(`a value matching ${spec.pattern}`);
      return raw;
  }
}

/**
 * The one reader of the server's environment: every LOOM_* (and KUBECONFIG) value the server uses
 * comes through here, so tests/config/env-access.test.ts can check that no other file reads them.
 */
export function env(name: string, source: NodeJS.ProcessEnv = process.env): string | undefined {
  return source[name];
}

/**
 * Test-only knobs. They are not configuration (not in variables.json, not NixOS options) and are
 * honoured only when NODE_ENV=test, so an operator cannot turn them on by accident.
 *   LOOM_TEST_AUTH_CLOCK_FILE  a file holding milliseconds added to the token service's clock,
 *                              so tests move sliding and idle expiry without waiting.
 */
export interface TestKnobs {
  authClockFile: string | null;
}

export function testKnobs(source: NodeJS.ProcessEnv = process.env): TestKnobs {
  if (env('NODE_ENV', source) !== 'test') return { authClockFile: null };
  return { authClockFile: env('LOOM_TEST_AUTH_CLOCK_FILE', source) || null };
}

/** Reads and validates every variable of the table; throws ConfigError naming the first wrong one. */
export function loadConfig(source: NodeJS.ProcessEnv = process.env): Config {
  const v = new Map<string, Value>();
  for (const spec of [...VARIABLES, ...TEST_KNOBS]) v.set(spec.name, parseVariable(spec, env(spec.name, source)));
  const get = <T extends Value>(name: string): T => {
    if (!v.has(name)) throw new Error(`config variable ${name} is not in variables.json`);
    return v.get(name) as T;
  };
  const addr = get<string>('LOOM_HTTP_ADDR');
  const idx = addr.lastIndexOf(':');
  const host = addr.slice(0, idx).replace(/^\[|\]$/g, '');
  const cfg: Config = {
    httpHost: host,
    httpPort: Number(addr.slice(idx + 1)),
    dataDir: get<string>('LOOM_DATA_DIR'),
    logLevel: get('LOOM_LOG_LEVEL'),
    publicUrl: get<string>('LOOM_PUBLIC_URL'),
    sessionIdleDays: get<number>('LOOM_SESSION_IDLE_DAYS'),
    streams: { recheckSecs: get<number>('LOOM_STREAM_RECHECK_SECS'), pingSecs: get<number>('LOOM_STREAM_PING_SECS') },
    auth: { loginMaxFailures: get<number>('LOOM_LOGIN_MAX_FAILURES'), loginWindowSecs: get<number>('LOOM_LOGIN_WINDOW_SECS') },
    weaver: {
      enabled: get<boolean>('LOOM_SERVER_WEAVER_ENABLED'),
      backend: get('LOOM_SERVER_WEAVER_BACKEND'),
      runtime: get('LOOM_SERVER_WEAVER_RUNTIME'),
      network: get('LOOM_SERVER_WEAVER_NETWORK'),
      networkAllowedNetworks: get<string[]>('LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS'),
      defaultImage: get<string>('LOOM_SERVER_WEAVER_DEFAULT_IMAGE'),
      defaultCpu: get<string>('LOOM_SERVER_WEAVER_DEFAULT_CPU'),
      defaultMemory: get<string>('LOOM_SERVER_WEAVER_DEFAULT_MEMORY'),
      k8sNamespace: get<string>('LOOM_SERVER_WEAVER_K8S_NAMESPACE'),
      k8sNetworkPolicies: get<boolean>('LOOM_SERVER_WEAVER_K8S_NETWORK_POLICIES'),
      k8sInternalCidrs: get<string[]>('LOOM_SERVER_WEAVER_K8S_INTERNAL_CIDRS'),
      kubeconfig: get<string>('KUBECONFIG'),
      cleanupIntervalSecs: get<number>('LOOM_SERVER_WEAVER_CLEANUP_INTERVAL_SECS'),
      defaultTtlHours: get<number>('LOOM_SERVER_WEAVER_DEFAULT_TTL_HOURS'),
      maxTtlHours: get<number>('LOOM_SERVER_WEAVER_MAX_TTL_HOURS'),
      maxConcurrent: get<number>('LOOM_SERVER_WEAVER_MAX_CONCURRENT'),
      readyTimeoutSecs: get<number>('LOOM_SERVER_WEAVER_READY_TIMEOUT_SECS'),
      imagePullSecrets: get<string[]>('LOOM_SERVER_WEAVER_IMAGE_PULL_SECRETS'),
      maxCpu: get<string>('LOOM_SERVER_WEAVER_MAX_CPU'),
      maxMemory: get<string>('LOOM_SERVER_WEAVER_MAX_MEMORY'),
      pidsLimit: get<number>('LOOM_SERVER_WEAVER_PIDS_LIMIT'),
      usernsBase: get<number>('LOOM_SERVER_WEAVER_USERNS_BASE'),
      diskMaxBytes: memoryBytes(get<string>('LOOM_SERVER_WEAVER_DISK_MAX'))!,
      diskCheckSecs: get<number>('LOOM_SERVER_WEAVER_DISK_CHECK_SECS'),
      git: {
        allowedNetworks: get<string[]>('LOOM_SERVER_WEAVER_GIT_ALLOWED_NETWORKS'),
        maxBytes: get<number>('LOOM_SERVER_WEAVER_GIT_MAX_BYTES'),
        timeoutSecs: get<number>('LOOM_SERVER_WEAVER_GIT_TIMEOUT_SECS'),
        caFile: get<string>('LOOM_SERVER_WEAVER_GIT_CA_FILE'),
      },
      execTimeoutSecs: get<number>('LOOM_SERVER_WEAVER_EXEC_TIMEOUT_SECS'),
      execOutputMaxBytes: get<number>('LOOM_SERVER_WEAVER_EXEC_OUTPUT_MAX_BYTES'),
      filesMaxBytes: get<number>('LOOM_SERVER_WEAVER_FILES_MAX_BYTES'),
      audit: {
        enabled: get<boolean>('LOOM_SERVER_WEAVER_AUDIT_ENABLED'),
        image: get<string>('LOOM_SERVER_WEAVER_AUDIT_IMAGE'),
        batchIntervalMs: get<number>('LOOM_SERVER_WEAVER_AUDIT_BATCH_INTERVAL_MS'),
        bufferMaxBytes: get<number>('LOOM_SERVER_WEAVER_AUDIT_BUFFER_MAX_BYTES'),
        metricsPort: get<number>('LOOM_SERVER_WEAVER_AUDIT_METRICS_PORT'),
        healthPort: get<number>('LOOM_SERVER_WEAVER_AUDIT_HEALTH_PORT'),
        serverUrl: get<string>('LOOM_SERVER_WEAVER_AUDIT_SERVER_URL'),
        retentionDays: get<number>('LOOM_SERVER_WEAVER_AUDIT_RETENTION_DAYS'),
        maxEventsPerWeaver: get<number>('LOOM_SERVER_WEAVER_AUDIT_MAX_EVENTS_PER_WEAVER'),
      },
    },
    branching: {
      gcIntervalSecs: get<number>('LOOM_BRANCHING_GC_INTERVAL_SECS'),
      testDelayMs: get<number>('LOOM_BRANCHING_TEST_DELAY_MS'),
      importRoots: get<string[]>('LOOM_BRANCHING_IMPORT_ROOTS').flatMap((r) => r.split(':')).map((r) => r.trim()).filter(Boolean),
      archiveMaxBytes: get<number>('LOOM_BRANCHING_ARCHIVE_MAX_BYTES'),
    },
    quota: {
      user: {
        count: get<number>('LOOM_QUOTA_USER_COUNT'),
        cpuMillis: cpuMillis(get<string>('LOOM_QUOTA_USER_CPU'))!,
        memoryBytes: memoryBytes(get<string>('LOOM_QUOTA_USER_MEMORY'))!,
      },
      org: {
        count: get<number>('LOOM_QUOTA_ORG_COUNT'),
        cpuMillis: cpuMillis(get<string>('LOOM_QUOTA_ORG_CPU'))!,
        memoryBytes: memoryBytes(get<string>('LOOM_QUOTA_ORG_MEMORY'))!,
      },
    },
    minFreeDiskBytes: memoryBytes(get<string>('LOOM_MIN_FREE_DISK'))!,
    images: {
      buildMirror: get<string>('LOOM_IMAGE_BUILD_MIRROR'),
      buildExtraSources: get<string[]>('LOOM_IMAGE_BUILD_EXTRA_SOURCES'),
      buildTimeoutSecs: get<number>('LOOM_IMAGE_BUILD_TIMEOUT_SECS'),
      pullTimeoutSecs: get<number>('LOOM_IMAGE_PULL_TIMEOUT_SECS'),
    },
    secrets: {
      masterKeyFile: get<string>('LOOM_SECRETS_MASTER_KEY_FILE') || join(get<string>('LOOM_DATA_DIR'), 'secrets', 'master.key'),
      tmpfsSize: get<string>('LOOM_SECRETS_TMPFS_SIZE'),
      kubernetesUrl: get<string>('LOOM_SECRETS_K8S_URL'),
    },
    tunnel: { udpAddr: get<string>('LOOM_TUNNEL_UDP_ADDR'), udpEndpoint: get<string>('LOOM_TUNNEL_UDP_ENDPOINT'), k8sImage: get<string>('LOOM_TUNNEL_K8S_IMAGE') },
  };
  try {
    parseCidrs(cfg.weaver.networkAllowedNetworks);
  } catch (e) {
    throw new ConfigError('LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS', (e as Error).message);
  }
  const badSource = cfg.images.buildExtraSources.find((l) => !isAptSourceLine(l));
  if (badSource !== undefined) throw new ConfigError('LOOM_IMAGE_BUILD_EXTRA_SOURCES', `${JSON.stringify(badSource)} (accepts one-line apt sources: deb [options] http(s)://mirror suite component…)`);
  if (!/^(?:https?|file):\/\/\S+$/.test(cfg.images.buildMirror)) throw new ConfigError('LOOM_IMAGE_BUILD_MIRROR', `${JSON.stringify(cfg.images.buildMirror)} (accepts an http(s):// or file:// URL)`);
  try {
    parseCidrs(cfg.weaver.git.allowedNetworks);
  } catch (e) {
    throw new ConfigError('LOOM_SERVER_WEAVER_GIT_ALLOWED_NETWORKS', (e as Error).message);
  }
  for (const name of ['LOOM_TUNNEL_UDP_ADDR', 'LOOM_TUNNEL_UDP_ENDPOINT']) {
    const a = get<string>(name);
    const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(a);
    if (a && (!m || Number(m[2]) > 65535)) throw new ConfigError(name, 'host:port, e.g. 0.0.0.0:51820 or [::]:51820 (empty: off)');
  }
  for (const r of cfg.branching.importRoots) {
    if (!isAbsolute(r) || resolve(r) !== r) throw new ConfigError('LOOM_BRANCHING_IMPORT_ROOTS', `${JSON.stringify(r)} is not a normalized absolute path`);
  }
  for (const [name, def, max] of [
    ['LOOM_SERVER_WEAVER_DEFAULT_CPU', cpuMillis(cfg.weaver.defaultCpu)!, cpuMillis(cfg.weaver.maxCpu)!],
    ['LOOM_SERVER_WEAVER_DEFAULT_MEMORY', memoryBytes(cfg.weaver.defaultMemory)!, memoryBytes(cfg.weaver.maxMemory)!],
  ] as const) {
    if (def > max) throw new ConfigError(name, `the default is over ${name.replace('DEFAULT', 'MAX')}`);
  }
  if (cfg.weaver.defaultTtlHours > cfg.weaver.maxTtlHours) {
    throw new ConfigError('LOOM_SERVER_WEAVER_DEFAULT_TTL_HOURS', `${cfg.weaver.defaultTtlHours} is over LOOM_SERVER_WEAVER_MAX_TTL_HOURS (${cfg.weaver.maxTtlHours})`);
  }
  const cidr = /^(?:(?:\d{1,3}\.){3}\d{1,3}\/(?:3[0-2]|[12]?\d)|[0-9a-fA-F:]*:[0-9a-fA-F:]*\/(?:12[0-8]|1[01]\d|[1-9]?\d))$/;
  const badCidr = cfg.weaver.k8sInternalCidrs.find((c) => !cidr.test(c));
  if (badCidr !== undefined) throw new ConfigError('LOOM_SERVER_WEAVER_K8S_INTERNAL_CIDRS', `${JSON.stringify(badCidr)} (accepts comma-separated CIDRs such as 10.0.0.0/8,fc00::/7)`);
  if (cfg.weaver.audit.enabled && cfg.weaver.backend === 'kubernetes' && !cfg.weaver.audit.image) {
    throw new ConfigError('LOOM_SERVER_WEAVER_AUDIT_IMAGE', 'must be set when LOOM_SERVER_WEAVER_AUDIT_ENABLED is true on the kubernetes backend');
  }
  if (cfg.weaver.audit.enabled && cfg.weaver.backend === 'kubernetes' && !cfg.weaver.audit.serverUrl) {
    throw new ConfigError('LOOM_SERVER_WEAVER_AUDIT_SERVER_URL', 'must be set when LOOM_SERVER_WEAVER_AUDIT_ENABLED is true on the kubernetes backend (the URL weaver pods reach loom-server at)');
  }
  return cfg;
}
