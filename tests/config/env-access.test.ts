// The server reads its LOOM_* configuration through one accessor, env() in
// src/server/config/load.ts. This walks the syntax tree of every source file (so destructuring,
// computed keys and aliases of process.env are seen, not only `process.env.NAME`) and fails on any
// other read of process.env that could reach a LOOM_* variable.
import t from 'tap';
import ts from 'typescript';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { REPO } from '../nix/nix.js';
import { env, loadConfig, testKnobs, VARIABLES } from '../../src/server/config/load.js';

const ACCESSOR_FILE = 'src/server/config/load.ts';

// The CLI is not the server: it reads its user's own variables, by literal name only.
// `loom run --local` (src/run/) is part of the CLI: it reads the user's environment on purpose
// (workflow variables from the host, env:// secrets, KeePass aliases).
const CLI_VARIABLES = new Set(['LOOM_SERVER_URL', 'LOOM_CONFIG_DIR', 'LOOM_DEBUG', 'LOOM_ATTACH_PING_SECS', 'LOOM_ATTACH_RECONNECT_SECS', 'LOOM_DOCKER_WORKSPACE_MOUNT', 'LOOM_RUN_USERNS_BASE']);
// The audit sidecar is a program of its own, configured by loom-server (or its pod spec) through
// LOOM_AUDIT_* variables; its one accessor may read them by computed name.
const SIDECAR_DIR = 'src/audit/sidecar/';
const COMPUTED_OK: Record<string, string> = {
  'src/audit/sidecar/main.ts|process.env[name]': 'the sidecar\'s own accessor of its LOOM_AUDIT_* variables',
  'src/run/runner.ts|process.env[m[1]!]': 'a workflow variable that names a host variable ($NAME), the user\'s own environment',
  'src/run/secrets.ts|process.env[m[1]!]': 'an env:// secret names a variable of the user\'s environment',
  'src/run/secrets.ts|process.env[`LOOM_KEEPASS_${a}_DB`]': 'a KeePass alias of the user\'s (loom run)',
  'src/run/secrets.ts|process.env[`LOOM_KEEPASS_${a}_PASSWORD`]': 'a KeePass alias of the user\'s (loom run)',
};

// Whole-environment uses that read no LOOM_* value themselves (each with why it is fine).
const ALIASES_OK: Record<string, string> = {
  'src/provisioners/local/util.ts|opts.env ?? process.env': 'child processes inherit the environment',
  'src/run/runner.ts|process.env': 'a host job\'s environment starts from the user\'s (loom run, a CLI command)',
  'src/provisioners/kubernetes/client.ts|src.env ?? process.env': 'in-cluster detection reads KUBERNETES_SERVICE_HOST only',
};

const CONFIG_NAME = /^(LOOM_|KUBECONFIG$|NODE_ENV$)/;

interface Finding {
  file: string;
  line: number;
  what: string;
}

function isProcessEnv(n: ts.Node): boolean {
  if (ts.isPropertyAccessExpression(n)) return ts.isIdentifier(n.expression) && n.expression.text === 'process' && n.name.text === 'env';
  if (ts.isElementAccessExpression(n)) {
    return ts.isIdentifier(n.expression) && n.expression.text === 'process' && ts.isStringLiteralLike(n.argumentExpression) && n.argumentExpression.text === 'env';
  }
  return false;
}

/** Every read of process.env in `text` that is not allowed for a file at `rel`. */
export function envReads(rel: string, text: string): Finding[] {
  const sf = ts.createSourceFile(rel, text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  const cli = rel.startsWith('src/cli/') || rel.startsWith('src/run/');
  const sidecar = rel.startsWith(SIDECAR_DIR);
  const out: Finding[] = [];
  const report = (n: ts.Node, what: string) => out.push({ file: rel, line: sf.getLineAndCharacterOfPosition(n.getStart()).line + 1, what });
  const nameAllowed = (name: string) =>
    cli ? !name.startsWith('LOOM_') || CLI_VARIABLES.has(name) : sidecar ? !CONFIG_NAME.test(name) || name.startsWith('LOOM_AUDIT_') : !CONFIG_NAME.test(name);
  const visit = (n: ts.Node): void => {
    // `const { env } = process` takes the environment out of sight.
    if (ts.isVariableDeclaration(n) && ts.isObjectBindingPattern(n.name) && n.initializer && ts.isIdentifier(n.initializer) && n.initializer.text === 'process') {
      if (n.name.elements.some((e) => (e.propertyName ?? e.name).getText(sf) === 'env')) report(n, 'destructures env from process');
    }
    if (isProcessEnv(n)) {
      const p = n.parent;
      if (ts.isPropertyAccessExpression(p) && p.expression === n) {
        if (!nameAllowed(p.name.text)) report(p, `reads process.env.${p.name.text}`);
      } else if (ts.isElementAccessExpression(p) && p.expression === n) {
        if (!ts.isStringLiteralLike(p.argumentExpression)) {
          if (!COMPUTED_OK[`${rel}|${p.getText(sf)}`]) report(p, `reads process.env[${p.argumentExpression.getText(sf)}] (computed key)`);
        }
        else if (!nameAllowed(p.argumentExpression.text)) report(p, `reads process.env['${p.argumentExpression.text}']`);
      } else if (ts.isSpreadAssignment(p)) {
        // {...process.env, X: y}: the environment handed to a child process; nothing is read here.
      } else if (ts.isVariableDeclaration(p) && ts.isObjectBindingPattern(p.name)) {
        report(p, `destructures process.env (${p.name.getText(sf)})`);
      } else {
        const expr = ts.isBinaryExpression(p) || ts.isConditionalExpression(p) ? p.getText(sf) : n.getText(sf);
        if (!ALIASES_OK[`${rel}|${expr}`]) report(p, `passes process.env on (${expr})`);
      }
    }
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...sourceFiles(p));
    else if (name.endsWith('.ts')) out.push(p);
  }
  return out;
}

t.test('the scanner sees every way of reading a variable', async (t) => {
  const cases: [string, number][] = [
    ['const a = process.env.LOOM_X;', 1],
    ["const a = process.env['LOOM_X'];", 1],
    ['const k = "LOOM_X"; const a = process.env[k];', 1],
    ['const { LOOM_X } = process.env;', 1],
    ['const { LOOM_X: renamed = "d" } = process.env;', 1],
    ['const e = process.env; const a = e.LOOM_X;', 1],
    ['f(process.env);', 1],
    ["const a = process['env'].LOOM_X;", 1],
    ['const { env } = process; const a = env.LOOM_X;', 1],
    ['const a = process.env.PATH;', 0],
    ['spawn("x", [], { env: { ...process.env, FOO: "1" } });', 0],
  ];
  for (const [code, n] of cases) t.equal(envReads('src/server/example.ts', code).length, n, code);
  t.equal(envReads('src/cli/example.ts', 'const a = process.env.LOOM_SERVER_URL;').length, 0, 'the CLI reads its own variables');
  t.equal(envReads('src/cli/example.ts', 'const a = process.env.LOOM_DATA_DIR;').length, 1, 'but not the server\'s');
});

t.test('no file but the config accessor reads a LOOM_* variable from process.env', async (t) => {
  const files = sourceFiles(join(REPO, 'src')).map((p) => relative(REPO, p));
  t.ok(files.includes(ACCESSOR_FILE), 'the accessor file was scanned for');
  const findings = files.filter((f) => f !== ACCESSOR_FILE).flatMap((f) => envReads(f, readFileSync(join(REPO, f), 'utf8')));
  t.same(findings, [], findings.map((f) => `${f.file}:${f.line} ${f.what}`).join('\n') || 'no other reads');
  // The accessor file itself touches process.env only as env()'s default source.
  const own = readFileSync(join(REPO, ACCESSOR_FILE), 'utf8');
  t.equal([...own.matchAll(/process\.env(?![\w])/g)].length, 3, 'load.ts names process.env only as the default source of env(), testKnobs() and loadConfig()');
  t.notMatch(own, /process\.env\s*[.[]/, 'load.ts indexes process.env nowhere; env() does the reading');
});

t.test('env() and loadConfig read the given source', async (t) => {
  t.equal(env('LOOM_SOMETHING', { LOOM_SOMETHING: 'x' }), 'x');
  t.equal(env('LOOM_SOMETHING', {}), undefined);
  t.equal(loadConfig({ LOOM_SERVER_WEAVER_MAX_CONCURRENT: '7' }).weaver.maxConcurrent, 7);
});

t.test('test knobs are honoured only when NODE_ENV=test and are not configuration', async (t) => {
  t.same(testKnobs({ LOOM_TEST_AUTH_CLOCK_FILE: '/tmp/x' }), { authClockFile: null }, 'ignored in production');
  t.same(testKnobs({ NODE_ENV: 'production', LOOM_TEST_AUTH_CLOCK_FILE: '/tmp/x' }), { authClockFile: null });
  t.same(testKnobs({ NODE_ENV: 'test', LOOM_TEST_AUTH_CLOCK_FILE: '/tmp/x' }), { authClockFile: '/tmp/x' });
  for (const v of VARIABLES) t.notMatch(v.name, /^LOOM_TEST_/, `${v.name} is not a test knob in the operator's table`);
});
