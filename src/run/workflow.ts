/**
 * Workflow v1 (`.loom/workflow.yml`): parse, validate with file:line:column on every problem, and
 * resolve include / extends / default into a flat list of jobs. All problems are collected so
 * `loom check` can show them at once.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { isAbsolute, relative, resolve } from 'node:path';
import { LineCounter, isMap, isScalar, isSeq, parseDocument, type Node, type Pair, type YAMLMap } from 'yaml';
import { parseRuleExpr } from './rules.js';

export interface WorkflowProblem {
  file: string;
  line: number;
  column: number;
  message: string;
}

export interface CacheKeySpec {
  prefix?: string;
  files?: string[];
  template?: string;
}

export interface CacheSpec {
  name?: string;
  disabled: boolean;
  paths: string[];
  key: CacheKeySpec;
  fallback_keys: string[];
  policy: 'pull' | 'push' | 'pull-push';
  when: 'on_success' | 'always';
}

export interface SecretSpec {
  ref: string;
  file: boolean;
  required: boolean;
}

export interface JobSpec {
  name: string;
  stage: string;
  target: 'linux';
  script: string[];
  image?: string;
  variables: Record<string, string>;
  cache: CacheSpec[];
  secrets: Record<string, SecretSpec>;
  artifacts: { paths: string[] };
}

export interface Workflow {
  path: string;
  stages: string[];
  variables: Record<string, string>;
  rules: { if?: string; when: 'always' | 'never' }[];
  jobs: JobSpec[];
}

export class WorkflowError extends Error {
  constructor(readonly problems: WorkflowProblem[]) {
    super(problems.map(formatProblem).join('\n'));
  }
}

export const formatProblem = (p: WorkflowProblem): string => `${p.file}:${p.line}:${p.column}: ${p.message}`;

export const JOB_NAME = /^[a-z][a-z0-9_-]{0,63}$/;
export const TEMPLATE_NAME = /^\.[a-z][a-z0-9_-]{0,63}$/;
export const VARIABLE_NAME = /^[A-Z_][A-Z0-9_]*$/;
const ROOT_KEYS = new Set(['version', 'stages', 'variables', 'default', 'include', 'workflow']);
const JOB_KEYS = new Set(['stage', 'target', 'extends', 'script', 'image', 'variables', 'cache', 'secrets', 'services', 'artifacts']);
const DEFAULT_KEYS = new Set(['target', 'script', 'image', 'variables', 'cache', 'artifacts']);
const CACHE_KEYS = new Set(['name', 'disabled', 'paths', 'key', 'fallback_keys', 'policy', 'when']);
const SECRET_REF = /^(env:\/\/[A-Za-z_][A-Za-z0-9_]*|keepass:\/\/[A-Za-z0-9_-]+#[^:#]+:[^:#]+|op:\/\/[^/]+\/[^/]+\/.+)$/;

/** A raw (unresolved) job or template, with where it was defined. */
interface RawEntry {
  value: Record<string, unknown>;
  at: Loc;
}
type Loc = { file: string; offset: number; lc: LineCounter };

class Collector {
  problems: WorkflowProblem[] = [];
  add(loc: Loc, message: string): void {
    const { line, col } = loc.lc.linePos(loc.offset);
    this.problems.push({ file: loc.file, line, column: col, message });
  }
}

function locOf(node: Node | Pair | null | undefined, file: string, lc: LineCounter): Loc {
  const n = node && 'range' in node ? node : node && 'key' in node ? (node.key as Node) : undefined;
  return { file, offset: n?.range?.[0] ?? 0, lc };
}

/** Validates one YAML node against a shape and converts it to plain data; problems go to `c`. */
class FileReader {
  constructor(readonly file: string, readonly lc: LineCounter, readonly c: Collector) {}
  at(n: Node | Pair | null | undefined): Loc {
    return locOf(n, this.file, this.lc);
  }
  err(n: Node | Pair | null | undefined, msg: string): undefined {
    this.c.add(this.at(n), msg);
    return undefined;
  }
  str(n: unknown, what: string): string | undefined {
    if (isScalar(n) && typeof n.value === 'string') return n.value;
    return this.err(n as Node, `${what} must be a string`);
  }
  bool(n: unknown, what: string): boolean | undefined {
    if (isScalar(n) && typeof n.value === 'boolean') return n.value;
    return this.err(n as Node, `${what} must be true or false`);
  }
  strList(n: unknown, what: string): string[] | undefined {
    if (!isSeq(n)) return this.err(n as Node, `${what} must be a list of strings`);
    const out: string[] = [];
    for (const item of n.items) {
      const s = this.str(item, `each entry of ${what}`);
      if (s !== undefined) out.push(s);
    }
    return out;
  }
  map(n: unknown, what: string): YAMLMap | undefined {
    if (isMap(n)) return n;
    return this.err(n as Node, `${what} must be a mapping`);
  }
  *pairs(m: YAMLMap, what: string): Generator<[string, Pair]> {
    for (const p of m.items) {
      if (!isScalar(p.key) || typeof p.key.value !== 'string') {
        this.err(p.key as Node, `keys of ${what} must be strings`);
        continue;
      }
      yield [p.key.value, p];
    }
  }
  variables(n: unknown, what: string): Record<string, string> | undefined {
    const m = this.map(n, what);
    if (!m) return undefined;
    const out: Record<string, string> = {};
    for (const [k, p] of this.pairs(m, what)) {
      if (!VARIABLE_NAME.test(k)) this.err(p.key as Node, `bad variable name "${k}" in ${what}: must match ${VARIABLE_NAME.source}`);
      const v = this.str(p.value, `variable ${k} (quote numbers and booleans)`);
      if (v !== undefined && VARIABLE_NAME.test(k)) out[k] = v;
    }
    return out;
  }
  cacheKey(n: unknown, what: string): CacheKeySpec | undefined {
    if (isScalar(n) && typeof n.value === 'string') return { template: n.value };
    const m = this.map(n, `${what} (a string, {prefix, files} or {template})`);
    if (!m) return undefined;
    const out: CacheKeySpec = {};
    for (const [k, p] of this.pairs(m, what)) {
      if (k === 'prefix') out.prefix = this.str(p.value, `${what}.prefix`);
      else if (k === 'files') out.files = this.strList(p.value, `${what}.files`);
      else if (k === 'template') out.template = this.str(p.value, `${what}.template`);
      else this.err(p.key as Node, `unknown key "${k}" in ${what}`);
    }
    if (out.files && out.template !== undefined) this.err(m, `${what}: use files or template, not both`);
    if (!out.files && out.template === undefined) this.err(m, `${what} needs files or template`);
    return out;
  }
  cacheOne(n: unknown, what: string): CacheSpec | undefined {
    const m = this.map(n, what);
    if (!m) return undefined;
    const out: CacheSpec = { disabled: false, paths: [], key: { template: 'default' }, fallback_keys: [], policy: 'pull-push', when: 'on_success' };
    let hasKey = false;
    for (const [k, p] of this.pairs(m, what)) {
      const v = p.value;
      if (!CACHE_KEYS.has(k)) this.err(p.key as Node, `unknown key "${k}" in ${what}`);
      else if (k === 'name') out.name = this.str(v, `${what}.name`);
      else if (k === 'disabled') out.disabled = this.bool(v, `${what}.disabled`) ?? false;
      else if (k === 'paths') {
        out.paths = this.strList(v, `${what}.paths`) ?? [];
        for (const path of out.paths) if (!safeRelative(path)) this.err(v as Node, `${what}.paths: "${path}" must be a relative path inside the workspace`);
      } else if (k === 'key') {
        hasKey = true;
        const key = this.cacheKey(v, `${what}.key`);
        if (key) out.key = key;
      } else if (k === 'fallback_keys') out.fallback_keys = this.strList(v, `${what}.fallback_keys`) ?? [];
      else if (k === 'policy') {
        const s = this.str(v, `${what}.policy`);
        if (s !== undefined && s !== 'pull' && s !== 'push' && s !== 'pull-push') this.err(v as Node, `${what}.policy must be pull, push or pull-push`);
        else if (s) out.policy = s as CacheSpec['policy'];
      } else if (k === 'when') {
        const s = this.str(v, `${what}.when`);
        if (s !== undefined && s !== 'on_success' && s !== 'always') this.err(v as Node, `${what}.when must be on_success or always`);
        else if (s) out.when = s as CacheSpec['when'];
      }
    }
    if (!hasKey && !out.disabled) this.err(m, `${what} needs a key`);
    if (out.paths.length === 0 && !out.disabled) this.err(m, `${what} needs paths`);
    return out;
  }
  /** Validates a job/template/default body; returns plain data with only known, well-typed keys. */
  jobBody(m: YAMLMap, what: string, allowed: Set<string>): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [k, p] of this.pairs(m, what)) {
      const v = p.value;
      if (!allowed.has(k)) {
        if (k === 'secrets' && what === 'default') this.err(p.key as Node, 'default.secrets is not allowed: declare secrets per job');
        else this.err(p.key as Node, `unknown key "${k}" in ${what}`);
        continue;
      }
      switch (k) {
        case 'stage': out.stage = this.str(v, `${what}.stage`); break;
        case 'target': {
          const s = this.str(v, `${what}.target`);
          if (s !== undefined && s !== 'linux') this.err(v as Node, `${what}.target must be linux`);
          else out.target = s;
          break;
        }
        case 'extends': {
          const list = isSeq(v) ? this.strList(v, `${what}.extends`) : [this.str(v, `${what}.extends`)].filter((x): x is string => x !== undefined);
          out.extends = list;
          out.extendsAt = this.at(v as Node);
          break;
        }
        case 'script': {
          const list = this.strList(v, `${what}.script`);
          if (list) {
            if (isSeq(v) && v.items.length === 0) this.err(v as Node, `${what}.script must not be empty`);
            if (isSeq(v)) v.items.forEach((item, i) => {
              if (list[i] !== undefined && list[i]!.includes('\n')) this.err(item as Node, `${what}.script entry ${i + 1} spans several lines; give one command per entry`);
            });
            out.script = list;
          }
          break;
        }
        case 'image': {
          if (isScalar(v) && typeof v.value === 'string') out.image = v.value;
          else if (isMap(v)) {
            let name: string | undefined;
            for (const [ik, ip] of this.pairs(v, `${what}.image`)) {
              if (ik === 'name') name = this.str(ip.value, `${what}.image.name`);
              else if (ik === 'build') this.err(ip.key as Node, `${what}.image.build is not supported by loom run --local; import the image with loom image import`);
              else this.err(ip.key as Node, `unknown key "${ik}" in ${what}.image`);
            }
            if (name === undefined) this.err(v, `${what}.image needs a name`);
            else out.image = name;
          } else this.err(v as Node, `${what}.image must be a string or {name}`);
          break;
        }
        case 'variables': out.variables = this.variables(v, `${what}.variables`); break;
        case 'cache': {
          if (isSeq(v)) out.cache = v.items.map((item, i) => this.cacheOne(item, `${what}.cache[${i}]`)).filter(Boolean);
          else {
            const one = this.cacheOne(v, `${what}.cache`);
            out.cache = one ? [one] : [];
          }
          break;
        }
        case 'secrets': {
          const sm = this.map(v, `${what}.secrets`);
          if (!sm) break;
          const secrets: Record<string, SecretSpec> = {};
          for (const [name, sp] of this.pairs(sm, `${what}.secrets`)) {
            if (!VARIABLE_NAME.test(name)) this.err(sp.key as Node, `bad secret name "${name}": must match ${VARIABLE_NAME.source}`);
            const body = this.map(sp.value, `secret ${name}`);
            if (!body) continue;
            const s: Partial<SecretSpec> = { file: true, required: true };
            for (const [sk, skp] of this.pairs(body, `secret ${name}`)) {
              if (sk === 'ref') {
                s.ref = this.str(skp.value, `secret ${name}.ref`);
                if (s.ref !== undefined && !SECRET_REF.test(s.ref)) this.err(skp.value as Node, `SECRETS_REF_INVALID: secret ${name}.ref must be env://VAR, keepass://<alias>#<entry>:<field> or op://<vault>/<item>/<field>`);
              } else if (sk === 'file') s.file = this.bool(skp.value, `secret ${name}.file`);
              else if (sk === 'required') s.required = this.bool(skp.value, `secret ${name}.required`);
              else this.err(skp.key as Node, `unknown key "${sk}" in secret ${name}`);
            }
            if (s.ref === undefined) this.err(body, `secret ${name} needs a ref`);
            else if (VARIABLE_NAME.test(name)) secrets[name] = { ref: s.ref, file: s.file ?? true, required: s.required ?? true };
          }
          out.secrets = secrets;
          out.secretsAt = this.at(v as Node);
          break;
        }
        case 'services': this.err(p.key as Node, `${what}.services is not supported by loom run --local`); break;
        case 'artifacts': {
          const am = this.map(v, `${what}.artifacts`);
          if (!am) break;
          const paths: string[] = [];
          for (const [ak, ap] of this.pairs(am, `${what}.artifacts`)) {
            if (ak !== 'paths') { this.err(ap.key as Node, `unknown key "${ak}" in ${what}.artifacts`); continue; }
            for (const path of this.strList(ap.value, `${what}.artifacts.paths`) ?? []) {
              if (!safeRelative(path)) this.err(ap.value as Node, `${what}.artifacts.paths: "${path}" must be a relative path inside the workspace`);
              else paths.push(path);
            }
          }
          out.artifacts = { paths };
          break;
        }
      }
    }
    return out;
  }
}

/** A relative path that stays inside its root (no absolute, no `..` segment). */
export function safeRelative(p: string): boolean {
  if (p === '' || isAbsolute(p) || p.includes('\0')) return false;
  return !p.split('/').some((s) => s === '..');
}

interface FileContent {
  version?: string;
  stages?: string[];
  stagesAt?: Loc;
  variables?: Record<string, string>;
  default?: Record<string, unknown>;
  includes: { path: string; at: Loc }[];
  rules?: Workflow['rules'];
  entries: Map<string, RawEntry>;
  rootAt: Loc;
}

function readWorkflowFile(file: string, display: string, c: Collector, isInclude: boolean): FileContent | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    c.problems.push({ file: display, line: 1, column: 1, message: `cannot read: ${(e as NodeJS.ErrnoException).code ?? String(e)}` });
    return undefined;
  }
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const r = new FileReader(display, lc, c);
  for (const e of doc.errors) c.add({ file: display, offset: e.pos[0], lc }, `YAML: ${e.message.split('\n')[0]}`);
  if (doc.errors.length) return undefined;
  const root = doc.contents;
  const out: FileContent = { includes: [], entries: new Map(), rootAt: r.at(root) };
  if (!isMap(root)) {
    r.err(root, 'the workflow must be a mapping');
    return out;
  }
  for (const [k, p] of r.pairs(root, 'the workflow')) {
    const v = p.value;
    if (k === 'version') {
      const s = isScalar(v) ? String(v.value) : undefined;
      if (!isScalar(v) || typeof v.value !== 'string' || s !== 'v1') r.err(v as Node, `version must be "v1" (got ${s ?? 'a non-string'})`);
      else out.version = s;
    } else if (k === 'stages') {
      out.stages = r.strList(v, 'stages');
      out.stagesAt = r.at(v as Node);
      const seen = new Set<string>();
      if (isSeq(v)) v.items.forEach((item, i) => {
        const s = out.stages?.[i];
        if (s === undefined) return;
        if (!JOB_NAME.test(s)) r.err(item as Node, `bad stage name "${s}": must match ${JOB_NAME.source}`);
        if (seen.has(s)) r.err(item as Node, `stage "${s}" listed twice`);
        seen.add(s);
      });
    } else if (k === 'variables') out.variables = r.variables(v, 'variables');
    else if (k === 'default') {
      const m = r.map(v, 'default');
      if (m) out.default = r.jobBody(m, 'default', DEFAULT_KEYS);
    } else if (k === 'include') {
      if (isInclude) { r.err(p.key as Node, 'an included file cannot include others'); continue; }
      if (!isSeq(v)) { r.err(v as Node, 'include must be a list of {local: path}'); continue; }
      for (const item of v.items) {
        const m = r.map(item, 'each include');
        if (!m) continue;
        for (const [ik, ip] of r.pairs(m, 'include')) {
          if (ik !== 'local') { r.err(ip.key as Node, `unknown key "${ik}" in include (only local is supported)`); continue; }
          const path = r.str(ip.value, 'include.local');
          if (path !== undefined) out.includes.push({ path, at: r.at(ip.value as Node) });
        }
      }
    } else if (k === 'workflow') {
      const m = r.map(v, 'workflow');
      if (!m) continue;
      for (const [wk, wp] of r.pairs(m, 'workflow')) {
        if (wk !== 'rules') { r.err(wp.key as Node, `unknown key "${wk}" in workflow`); continue; }
        if (!isSeq(wp.value)) { r.err(wp.value as Node, 'workflow.rules must be a list'); continue; }
        out.rules = [];
        for (const item of wp.value.items) {
          const rm = r.map(item, 'each workflow rule');
          if (!rm) continue;
          const rule: Workflow['rules'][number] = { when: 'always' };
          for (const [rk, rp] of r.pairs(rm, 'workflow rule')) {
            if (rk === 'if') {
              const expr = r.str(rp.value, 'rule if');
              if (expr === undefined) continue;
              try {
                parseRuleExpr(expr);
                rule.if = expr;
              } catch (e) {
                r.err(rp.value as Node, `rule if: ${(e as Error).message}`);
              }
            } else if (rk === 'when') {
              const w = r.str(rp.value, 'rule when');
              if (w !== undefined && w !== 'always' && w !== 'never') r.err(rp.value as Node, 'rule when must be always or never');
              else if (w) rule.when = w as 'always' | 'never';
            } else r.err(rp.key as Node, `unknown key "${rk}" in workflow rule`);
          }
          out.rules.push(rule);
        }
      }
    } else if (ROOT_KEYS.has(k)) {
      /* handled above */
    } else if (JOB_NAME.test(k) || TEMPLATE_NAME.test(k)) {
      const m = r.map(v, `job ${k}`);
      if (m) out.entries.set(k, { value: r.jobBody(m, k.startsWith('.') ? `template ${k}` : `job ${k}`, JOB_KEYS), at: r.at(p.key as Node) });
    } else r.err(p.key as Node, `bad job name "${k}": must match ${JOB_NAME.source} (or start with "." for a template)`);
  }
  return out;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Deep merge: mappings merge key by key, anything else (lists included) is replaced by `over`. */
export function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    const b = out[k];
    out[k] = isPlainObject(b) && isPlainObject(v) && !('template' in v || 'files' in v) ? deepMerge(b, v) : v;
  }
  return out;
}

/**
 * Loads and resolves a workflow. `repoRoot` bounds `include: local` paths. Throws WorkflowError
 * with every problem found.
 */
export function loadWorkflow(repoRoot: string, workflowPath: string): Workflow {
  const c = new Collector();
  const abs = resolve(repoRoot, workflowPath);
  const display = relative(repoRoot, abs) || abs;
  const main = readWorkflowFile(abs, display, c, false);
  if (!main) throw new WorkflowError(c.problems);
  const err = (at: Loc, m: string) => c.add(at, m);

  let variables: Record<string, string> = {};
  let dflt: Record<string, unknown> = {};
  const entries = new Map<string, RawEntry>();
  let realRoot: string;
  try { realRoot = realpathSync(repoRoot); } catch { realRoot = resolve(repoRoot); }
  for (const inc of main.includes) {
    if (!safeRelative(inc.path)) { err(inc.at, `include.local "${inc.path}" must be a relative path inside the repository`); continue; }
    let target: string;
    try {
      target = realpathSync(resolve(repoRoot, inc.path));
    } catch {
      err(inc.at, `include.local "${inc.path}": no such file`);
      continue;
    }
    if (relative(realRoot, target).startsWith('..')) { err(inc.at, `include.local "${inc.path}" resolves outside the repository`); continue; }
    const f = readWorkflowFile(target, inc.path, c, true);
    if (!f) continue;
    if (f.version || f.stages) err(inc.at, `included file ${inc.path} must not set version or stages`);
    variables = { ...variables, ...(f.variables ?? {}) };
    dflt = deepMerge(dflt, f.default ?? {});
    for (const [k, e] of f.entries) entries.set(k, e);
  }
  if (main.version === undefined && !c.problems.some((p) => p.message.startsWith('version'))) err(main.rootAt, 'missing required key "version" (must be "v1")');
  if (!main.stages) { if (!c.problems.some((p) => p.message.startsWith('stages'))) err(main.rootAt, 'missing required key "stages"'); }
  else if (main.stages.length === 0) err(main.stagesAt!, 'stages must not be empty');
  variables = { ...variables, ...(main.variables ?? {}) };
  dflt = deepMerge(dflt, main.default ?? {});
  for (const [k, e] of main.entries) entries.set(k, e);

  // extends: depth-first, cycle-checked; later parents override earlier ones, the job overrides all.
  const resolved = new Map<string, Record<string, unknown>>();
  const resolveEntry = (name: string, stack: string[]): Record<string, unknown> | undefined => {
    const done = resolved.get(name);
    if (done) return done;
    const e = entries.get(name)!;
    let base: Record<string, unknown> = {};
    for (const parent of (e.value.extends as string[] | undefined) ?? []) {
      const at = (e.value.extendsAt as Loc | undefined) ?? e.at;
      if (!entries.has(parent)) { err(at, `${name} extends unknown "${parent}"`); continue; }
      if (stack.includes(parent)) { err(at, `${name}: extends cycle ${[...stack, parent].join(' -> ')}`); continue; }
      const pv = resolveEntry(parent, [...stack, parent]);
      if (pv) base = deepMerge(base, pv);
    }
    const { extends: _x, extendsAt: _y, ...own } = e.value;
    const v = deepMerge(base, own);
    resolved.set(name, v);
    return v;
  };

  const stages = main.stages ?? [];
  const jobs: JobSpec[] = [];
  for (const [name, e] of entries) {
    const v = resolveEntry(name, [name]);
    if (name.startsWith('.') || !v) continue;
    const merged = deepMerge(dflt, v);
    const script = merged.script as string[] | undefined;
    const stage = merged.stage as string | undefined;
    if (!script) err(e.at, `job ${name} has no script`);
    if (stage === undefined) err(e.at, `job ${name} has no stage`);
    else if (main.stages && !stages.includes(stage)) err(e.at, `job ${name}: stage "${stage}" is not listed in stages`);
    const jobVars = (merged.variables as Record<string, string> | undefined) ?? {};
    const secrets = (v.secrets as Record<string, SecretSpec> | undefined) ?? {};
    for (const s of Object.keys(secrets)) {
      if (s in jobVars || s in variables) err((v.secretsAt as Loc | undefined) ?? e.at, `job ${name}: "${s}" is both a variable and a secret`);
    }
    jobs.push({
      name,
      stage: stage ?? '',
      target: 'linux',
      script: script ?? [],
      ...(merged.image !== undefined ? { image: merged.image as string } : {}),
      variables: jobVars,
      cache: (merged.cache as CacheSpec[] | undefined) ?? [],
      secrets,
      artifacts: (merged.artifacts as { paths: string[] } | undefined) ?? { paths: [] },
    });
  }
  if (main.stages && jobs.length === 0 && c.problems.length === 0) err(main.rootAt, 'the workflow defines no jobs');
  if (c.problems.length) {
    c.problems.sort((a, b) => (a.file === b.file ? a.line - b.line || a.column - b.column : a.file < b.file ? -1 : 1));
    throw new WorkflowError(c.problems);
  }
  jobs.sort((a, b) => stages.indexOf(a.stage) - stages.indexOf(b.stage));
  return { path: display, stages, variables, rules: main.rules ?? [], jobs };
}
