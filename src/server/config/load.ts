import table from './variables.json' with { type: 'json' };

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

export interface WeaverConfig {
  enabled: boolean;
  backend: 'local' | 'kubernetes';
  runtime: 'auto' | 'runc' | 'crun';
  network: 'loopback' | 'slirp4netns';
  defaultImage: string;
  defaultCpu: string;
  defaultMemory: string;
  k8sNamespace: string;
  kubeconfig: string;
  cleanupIntervalSecs: number;
  defaultTtlHours: number;
  maxTtlHours: number;
  maxConcurrent: number;
  readyTimeoutSecs: number;
  imagePullSecrets: string[];
  audit: {
    enabled: boolean;
    image: string;
    batchIntervalMs: number;
    bufferMaxBytes: number;
    metricsPort: number;
    healthPort: number;
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
  branching: { gcIntervalSecs: number; testDelayMs: number };
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

/** Reads and validates every variable of the table; throws ConfigError naming the first wrong one. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const v = new Map<string, Value>();
  for (const spec of VARIABLES) v.set(spec.name, parseVariable(spec, env[spec.name]));
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
      defaultImage: get<string>('LOOM_SERVER_WEAVER_DEFAULT_IMAGE'),
      defaultCpu: get<string>('LOOM_SERVER_WEAVER_DEFAULT_CPU'),
      defaultMemory: get<string>('LOOM_SERVER_WEAVER_DEFAULT_MEMORY'),
      k8sNamespace: get<string>('LOOM_SERVER_WEAVER_K8S_NAMESPACE'),
      kubeconfig: get<string>('KUBECONFIG'),
      cleanupIntervalSecs: get<number>('LOOM_SERVER_WEAVER_CLEANUP_INTERVAL_SECS'),
      defaultTtlHours: get<number>('LOOM_SERVER_WEAVER_DEFAULT_TTL_HOURS'),
      maxTtlHours: get<number>('LOOM_SERVER_WEAVER_MAX_TTL_HOURS'),
      maxConcurrent: get<number>('LOOM_SERVER_WEAVER_MAX_CONCURRENT'),
      readyTimeoutSecs: get<number>('LOOM_SERVER_WEAVER_READY_TIMEOUT_SECS'),
      imagePullSecrets: get<string[]>('LOOM_SERVER_WEAVER_IMAGE_PULL_SECRETS'),
      audit: {
        enabled: get<boolean>('LOOM_SERVER_WEAVER_AUDIT_ENABLED'),
        image: get<string>('LOOM_SERVER_WEAVER_AUDIT_IMAGE'),
        batchIntervalMs: get<number>('LOOM_SERVER_WEAVER_AUDIT_BATCH_INTERVAL_MS'),
        bufferMaxBytes: get<number>('LOOM_SERVER_WEAVER_AUDIT_BUFFER_MAX_BYTES'),
        metricsPort: get<number>('LOOM_SERVER_WEAVER_AUDIT_METRICS_PORT'),
        healthPort: get<number>('LOOM_SERVER_WEAVER_AUDIT_HEALTH_PORT'),
        retentionDays: get<number>('LOOM_SERVER_WEAVER_AUDIT_RETENTION_DAYS'),
        maxEventsPerWeaver: get<number>('LOOM_SERVER_WEAVER_AUDIT_MAX_EVENTS_PER_WEAVER'),
      },
    },
    branching: { gcIntervalSecs: get<number>('LOOM_BRANCHING_GC_INTERVAL_SECS'), testDelayMs: get<number>('LOOM_BRANCHING_TEST_DELAY_MS') },
  };
  if (cfg.weaver.defaultTtlHours > cfg.weaver.maxTtlHours) {
    throw new ConfigError('LOOM_SERVER_WEAVER_DEFAULT_TTL_HOURS', `${cfg.weaver.defaultTtlHours} is over LOOM_SERVER_WEAVER_MAX_TTL_HOURS (${cfg.weaver.maxTtlHours})`);
  }
  if (cfg.weaver.audit.enabled && cfg.weaver.backend === 'kubernetes' && !cfg.weaver.audit.image) {
    throw new ConfigError('LOOM_SERVER_WEAVER_AUDIT_IMAGE', 'must be set when LOOM_SERVER_WEAVER_AUDIT_ENABLED is true on the kubernetes backend');
  }
  return cfg;
}
