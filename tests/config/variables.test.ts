// The shared table (src/server/config/variables.json) against the code: every variable the server
// reads is in the table, the loader reads every entry, wrong values are refused naming the
// variable, and the NixOS module's defaults are the loader's defaults.
import t from 'tap';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { ConfigError, TEST_KNOBS, VARIABLES, loadConfig, parseVariable } from '../../src/server/config/load.js';
import { REPO, nixEval, requireNix } from '../nix/nix.js';

const TABLE = new Set(VARIABLES.map((v) => v.name));
const NAME_RE = /\b(LOOM_[A-Z0-9_]+|KUBECONFIG)\b/g;

// The CLI (src/cli/) is not the server: its own variables (LOOM_SERVER_URL, LOOM_CONFIG_DIR,
// LOOM_DEBUG) are the user's, documented with the CLI, and not part of the server's table.
// loom-audit-sidecar (src/audit/sidecar/) is its own process: its LOOM_AUDIT_* settings are set
// by loom-server (local) or the pod spec (kubernetes) and documented in README "Audit".
// `loom run --local` (src/run/) runs in the CLI's process, never in the server: its settings
// (LOOM_RUN_USERNS_BASE) are the user's, documented in README "loom run --local".
const NOT_SERVER = ['src/cli/', 'src/audit/sidecar/', 'src/run/'];

// Names the server *sets* in a weaver's environment (pod spec / OCI config); it never reads them.
const WEAVER_ENV = new Set([
  'LOOM_WEAVER_ID',
  'LOOM_SECRETS_DIR',
  'LOOM_AUDIT_BATCH_INTERVAL_MS',
  'LOOM_AUDIT_BUFFER_MAX_BYTES',
  'LOOM_AUDIT_METRICS_PORT',
  'LOOM_AUDIT_HEALTH_PORT',
  'LOOM_AUDIT_POD_NAME',
  'LOOM_AUDIT_POD_NAMESPACE',
  // the audit sidecar's environment, set by loom-server (src/audit/server/local-sidecar.ts) or the pod spec
  'LOOM_AUDIT_SERVER_URL',
  'LOOM_AUDIT_TOKEN_FILE',
  'LOOM_AUDIT_TOKEN',
  'LOOM_AUDIT_BUFFER_DIR',
  'LOOM_AUDIT_LISTEN_ADDR',
  'LOOM_AUDIT_CONTROL_SOCKET',
  'LOOM_AUDIT_REGISTRATION_DIR',
  'LOOM_AUDIT_RING_BYTES',
  'LOOM_AUDIT_TEST_CONTROLS',
  'LOOM_AUDIT_LIBBPF_DEBUG',
  'LOOM_AUDIT_WEAVER_ID',
  'LOOM_AUDIT_ORG_ID',
  'LOOM_AUDIT_OWNER_USER_ID',
  'LOOM_AUDIT_POD_UID',
  'LOOM_AUDIT_CGROUP_ROOT',
  // `loom run --local` (a CLI command): the predefined variables of the workflow contract it sets
  // for every job, and the user's KeePass aliases (LOOM_KEEPASS_<ALIAS>_DB / _PASSWORD)
  'LOOM_CI', 'LOOM_RUN_ID', 'LOOM_PIPELINE_ID', 'LOOM_WORKFLOW_PATH', 'LOOM_JOB_NAME', 'LOOM_JOB_ID', 'LOOM_JOB_STAGE',
  'LOOM_JOB_TARGET', 'LOOM_JOB_IMAGE', 'LOOM_PROVIDER', 'LOOM_PROJECT_DIR', 'LOOM_COMMIT_SHA', 'LOOM_DEBUG_TRACE', 'LOOM_KEEPASS_',
]);

// Read, but not configuration: process plumbing, and the variables Kubernetes sets in every pod
// (in-cluster detection when KUBECONFIG is unset).
const PLUMBING = new Set(['PATH', 'HOME', 'KUBERNETES_SERVICE_HOST', 'KUBERNETES_SERVICE_PORT']);

// Variables the server reads that are not (yet) in the table: reported as TODO so they stay
// visible until their owners add them to variables.json (and so to the NixOS module).
const KNOWN_GAPS: Record<string, string> = {};

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (name.endsWith('.ts')) out.push(p);
  }
  return out;
}

const files = sourceFiles(join(REPO, 'src'))
  .map((p) => ({ rel: relative(REPO, p), text: readFileSync(p, 'utf8') }))
  .filter((f) => !NOT_SERVER.some((d) => f.rel.startsWith(d)) && f.rel !== 'src/server/config/load.ts');

t.test('every variable read through env() is in the table or is a documented test knob', async (t) => {
  // Other files cannot read the environment (tests/config/env-access.test.ts); the accessor's
  // literal reads are the test knobs, and loadConfig reads exactly the table (next tests).
  const load = readFileSync(join(REPO, 'src/server/config/load.ts'), 'utf8');
  const literal = [...load.matchAll(/\benv\(\s*'([A-Z][A-Z0-9_]*)'/g)].map((m) => m[1]!);
  t.same(literal.sort(), ['LOOM_TEST_AUTH_CLOCK_FILE', 'NODE_ENV'], 'the accessor reads by literal name only the test knobs and NODE_ENV');
  for (const name of literal.filter((n) => n.startsWith('LOOM_TEST_'))) {
    t.notOk(TABLE.has(name), `${name} is not in the operator's table`);
    t.match(load, new RegExp(`\\*\\s+${name}\\s+\\S`), `${name} is documented as test-only beside testKnobs()`);
  }
});

t.test('every LOOM_* / KUBECONFIG name in the server sources is a table variable or a weaver env name', async (t) => {
  const seen = new Map<string, string>();
  for (const f of files) for (const m of f.text.matchAll(NAME_RE)) seen.set(m[1]!, f.rel);
  for (const [name, where] of seen) {
    if (KNOWN_GAPS[name]) t.fail(`${name} (${where}) is accounted for`, { todo: KNOWN_GAPS[name] });
    else t.ok(TABLE.has(name) || WEAVER_ENV.has(name), `${name} (${where}) is in variables.json or set in weavers`);
  }
  for (const name of WEAVER_ENV) t.notOk(TABLE.has(name), `${name} is not also a server variable`);
});

t.test('test-only knobs are not operator settings', async (t) => {
  for (const k of TEST_KNOBS) {
    t.notOk(TABLE.has(k.name), `${k.name} is not in variables.json (no NixOS option, no README row)`);
    t.equal(k.option, null, `${k.name} has no option path`);
  }
  t.ok(TEST_KNOBS.some((k) => k.name === 'LOOM_BRANCHING_TEST_DELAY_MS'));
  t.equal(loadConfig({ LOOM_BRANCHING_TEST_DELAY_MS: '25' }).branching.testDelayMs, 25, 'still read by the loader');
  t.throws(() => loadConfig({ LOOM_BRANCHING_TEST_DELAY_MS: '-1' }), ConfigError, 'and checked');
});

t.test('loadConfig reads every table entry and the test knobs, and nothing else', async (t) => {
  const accessed = new Set<string>();
  const env = new Proxy({} as NodeJS.ProcessEnv, {
    get(target, key) {
      if (typeof key === 'string') accessed.add(key);
      return undefined;
    },
  });
  loadConfig(env);
  t.same([...accessed].sort(), [...TABLE, ...TEST_KNOBS.map((k) => k.name)].sort());
});

t.test('the table is well formed', async (t) => {
  const types = new Set(['addr', 'path', 'enum', 'bool', 'int', 'number', 'string', 'list', 'quantity-cpu', 'quantity-memory']);
  const options = new Set<string>();
  for (const v of VARIABLES) {
    t.ok(types.has(v.type), `${v.name}: known type ${v.type}`);
    t.ok(v.description.length > 0, `${v.name}: description`);
    if (v.type === 'enum') t.ok(v.values?.includes(v.default as string), `${v.name}: default among values`);
    if (v.type === 'int' || v.type === 'number') t.ok(v.min !== undefined && v.max !== undefined, `${v.name}: min and max (the Nix option type needs both)`);
    if (v.option !== null) {
      t.match(v.option, /^[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)*$/, `${v.name}: option path`);
      t.notOk(options.has(v.option), `${v.name}: option path unique`);
      options.add(v.option);
    }
    // The default itself passes the loader's own check.
    const raw = Array.isArray(v.default) ? v.default.join(',') : String(v.default);
    if (raw !== '') t.same(parseVariable(v, raw), v.default, `${v.name}: default parses to itself`);
  }
  // No option path is a prefix of another (an attrset and a leaf at once).
  for (const a of options) for (const b of options) if (a !== b) t.notOk(b.startsWith(`${a}.`), `${a} is not a prefix of ${b}`);
});

t.test('a wrong value of each type stops the loader with a ConfigError naming the variable', async (t) => {
  const bad: Record<string, string[]> = {
    bool: ['maybe', '2'],
    int: ['abc', '1.5', '-999999999999', '99999999999999999'],
    number: ['x', '1e3', '-1', '999999'],
    enum: ['nope'],
    addr: ['nohost', 'host:99999', ':80'],
    'quantity-cpu': ['lots', '1.5m'],
    'quantity-memory': ['1XB', 'much'],
    string: [],
    path: [],
    list: [],
  };
  const covered = new Set<string>();
  for (const v of VARIABLES) {
    const values = [...(bad[v.type] ?? [])];
    if (v.type === 'string' && v.pattern) values.push('Bad_Value!');
    for (const raw of values) {
      covered.add(v.type);
      const err = (() => {
        try {
          loadConfig({ [v.name]: raw });
        } catch (e) {
          return e;
        }
        return undefined;
      })();
      t.ok(err instanceof ConfigError, `${v.name}=${raw}: ConfigError`);
      t.equal((err as ConfigError).variable, v.name);
      t.match((err as Error).message, v.name, `${v.name}=${raw}: the message names the variable`);
      t.notMatch((err as Error).message, /\n/, 'one line');
    }
  }
  for (const ty of ['bool', 'int', 'number', 'enum', 'addr', 'quantity-cpu', 'quantity-memory', 'string']) t.ok(covered.has(ty), `type ${ty} exercised`);
  // Cross-variable checks.
  t.throws(() => loadConfig({ LOOM_SERVER_WEAVER_DEFAULT_TTL_HOURS: '50' }), ConfigError);
  t.throws(() => loadConfig({ LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'true', LOOM_SERVER_WEAVER_BACKEND: 'kubernetes' }), ConfigError);
  t.equal(loadConfig({ LOOM_SERVER_WEAVER_AUDIT_ENABLED: 'true' }).weaver.audit.enabled, true, 'the local backend needs no audit image');
});

t.test("the NixOS module's defaults are the loader's defaults", async (t) => {
  t.comment(requireNix());
  const nixEnv = nixEval<Record<string, string>>('(import (REPO + "/nixos-modules/lib/env.nix") { }).toEnv { }');
  t.same(loadConfig(nixEnv), loadConfig({}), 'loadConfig(env of empty Nix settings) = loadConfig({})');
  for (const v of VARIABLES.filter((x) => x.option !== null)) {
    const raw = Array.isArray(v.default) ? v.default.join(',') : String(v.default);
    if (raw === '') t.notOk(v.name in nixEnv, `${v.name}: unset by default in Nix too`);
    else t.equal(nixEnv[v.name], raw, `${v.name}: same default`);
  }
});
