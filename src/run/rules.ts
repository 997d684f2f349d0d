/**
 * `workflow.rules[].if` expressions: `$VAR`, `$VAR == "x"`, `$VAR != "x"`, `$VAR =~ /re/`,
 * `$VAR !~ /re/`, `!expr`, `&&`, `||` and parentheses. An unset variable compares as null; a bare
 * `$VAR` is true when the variable is set and non-empty.
 */
type Tok = { t: 'var' | 'str' | 're' | 'op' | 'lp' | 'rp' | 'null'; v: string };
export type Expr =
  | { k: 'and' | 'or'; a: Expr; b: Expr }
  | { k: 'not'; a: Expr }
  | { k: 'cmp'; op: '==' | '!=' | '=~' | '!~'; a: Operand; b: Operand }
  | { k: 'val'; a: Operand };
type Operand = { k: 'var' | 'str' | 're' | 'null'; v: string };

function tokenize(s: string): Tok[] {
  const out: Tok[] = [];
  let i = 0;
  while (i < s.length) {
    const ch = s[i]!;
    if (/\s/.test(ch)) { i++; continue; }
    const two = s.slice(i, i + 2);
    if (['==', '!=', '=~', '!~', '&&', '||'].includes(two)) { out.push({ t: 'op', v: two }); i += 2; continue; }
    if (ch === '!') { out.push({ t: 'op', v: '!' }); i++; continue; }
    if (ch === '(') { out.push({ t: 'lp', v: ch }); i++; continue; }
    if (ch === ')') { out.push({ t: 'rp', v: ch }); i++; continue; }
    if (ch === '$') {
      const m = /^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/.exec(s.slice(i));
      if (!m) throw new Error(`bad variable reference at column ${i + 1}`);
      out.push({ t: 'var', v: m[1]! });
      i += m[0].length;
      continue;
    }
    if (ch === '"' || ch === "'") {
      const end = s.indexOf(ch, i + 1);
      if (end < 0) throw new Error(`unterminated string at column ${i + 1}`);
      out.push({ t: 'str', v: s.slice(i + 1, end) });
      i = end + 1;
      continue;
    }
    if (ch === '/') {
      let j = i + 1;
      while (j < s.length && s[j] !== '/') j += s[j] === '\\' ? 2 : 1;
      if (j >= s.length) throw new Error(`unterminated regular expression at column ${i + 1}`);
      out.push({ t: 're', v: s.slice(i + 1, j) });
      i = j + 1;
      continue;
    }
    if (s.startsWith('null', i)) { out.push({ t: 'null', v: '' }); i += 4; continue; }
    throw new Error(`unexpected "${ch}" at column ${i + 1}`);
  }
  return out;
}

export function parseRuleExpr(src: string): Expr {
  const toks = tokenize(src);
  let p = 0;
  const peek = () => toks[p];
  const operand = (): Operand => {
    const t = toks[p++];
    if (!t || !['var', 'str', 're', 'null'].includes(t.t)) throw new Error(t ? `unexpected "${t.v}"` : 'unexpected end of expression');
    if (t.t === 're') {
      try { new RegExp(t.v); } catch { throw new Error(`bad regular expression /${t.v}/`); }
    }
    return { k: t.t as Operand['k'], v: t.v };
  };
  const primary = (): Expr => {
    const t = peek();
    if (t?.t === 'op' && t.v === '!') { p++; return { k: 'not', a: primary() }; }
    if (t?.t === 'lp') {
      p++;
      const e = or();
      if (peek()?.t !== 'rp') throw new Error('missing ")"');
      p++;
      return e;
    }
    const a = operand();
    const o = peek();
    if (o?.t === 'op' && ['==', '!=', '=~', '!~'].includes(o.v)) {
      p++;
      const b = operand();
      if ((o.v === '=~' || o.v === '!~') && b.k !== 're') throw new Error(`${o.v} needs a /regular expression/ on its right`);
      return { k: 'cmp', op: o.v as '==', a, b };
    }
    if (a.k !== 'var') throw new Error('a value alone must be a $VARIABLE');
    return { k: 'val', a };
  };
  const and = (): Expr => {
    let e = primary();
    while (peek()?.v === '&&') { p++; e = { k: 'and', a: e, b: primary() }; }
    return e;
  };
  const or = (): Expr => {
    let e = and();
    while (peek()?.v === '||') { p++; e = { k: 'or', a: e, b: and() }; }
    return e;
  };
  if (toks.length === 0) throw new Error('empty expression');
  const e = or();
  if (p < toks.length) throw new Error(`unexpected "${toks[p]!.v}"`);
  return e;
}

export function evalRuleExpr(e: Expr, vars: Record<string, string | undefined>): boolean {
  const val = (o: Operand): string | null => (o.k === 'var' ? vars[o.v] ?? null : o.k === 'null' ? null : o.v);
  switch (e.k) {
    case 'and': return evalRuleExpr(e.a, vars) && evalRuleExpr(e.b, vars);
    case 'or': return evalRuleExpr(e.a, vars) || evalRuleExpr(e.b, vars);
    case 'not': return !evalRuleExpr(e.a, vars);
    case 'val': { const v = val(e.a); return v !== null && v !== ''; }
    case 'cmp': {
      const a = val(e.a);
      if (e.op === '==' || e.op === '!=') return (a === val(e.b)) === (e.op === '==');
      const hit = a !== null && new RegExp(e.b.v).test(a);
      return e.op === '=~' ? hit : !hit;
    }
  }
}

/** First matching rule decides; no rules means run; rules but none matching means skip. */
export function workflowRuns(rules: { if?: string; when: 'always' | 'never' }[], vars: Record<string, string | undefined>): boolean {
  if (rules.length === 0) return true;
  for (const r of rules) {
    if (r.if === undefined || evalRuleExpr(parseRuleExpr(r.if), vars)) return r.when === 'always';
  }
  return false;
}
