// Applies each deliberate breakage of scripts/mutations.json in turn, rebuilds what it touches,
// runs the test file that should catch it, and restores the file whatever happens. Prints a
// table (mutation, test file, caught) and exits non-zero when a mutation survives.
// Run through scripts/mutate.sh; not part of `npm test` (it edits src/ and rebuilds dist/).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const { mutations } = JSON.parse(readFileSync(join(ROOT, 'scripts/mutations.json'), 'utf8'));
const only = process.argv.slice(2);
const chosen = only.length ? mutations.filter((m) => only.includes(m.name)) : mutations;
if (only.length && chosen.length !== only.length) {
  console.error(`unknown mutation(s): ${only.filter((n) => !mutations.some((m) => m.name === n)).join(', ')}`);
  process.exit(2);
}

const backupOf = (file) => join(ROOT, `${file}.mutate-orig`);

/** Puts back a file a previous (interrupted) run left mutated. */
function restore(file) {
  const b = backupOf(file);
  if (existsSync(b)) renameSync(b, join(ROOT, file));
}
for (const m of mutations) restore(m.file);

function sh(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: opts.quiet ? 'pipe' : 'inherit', encoding: 'utf8', timeout: opts.timeoutMs });
  return r.status ?? 1;
}

function rebuild(file) {
  if (file.startsWith('native/')) {
    if (sh('npx', ['node-gyp', 'rebuild', '--directory', 'native'], { quiet: true }) !== 0) throw new Error('native rebuild failed');
  } else if (file.startsWith('src/')) {
    if (sh('npx', ['tsc', '-p', 'tsconfig.json'], { quiet: true }) !== 0) throw new Error('tsc failed');
  }
}

let current = null;
const bail = (sig) => {
  if (current) {
    restore(current.file);
    rebuild(current.file);
  }
  process.exit(sig === 'SIGINT' ? 130 : 143);
};
process.on('SIGINT', () => bail('SIGINT'));
process.on('SIGTERM', () => bail('SIGTERM'));

const rows = [];
for (const m of chosen) {
  const path = join(ROOT, m.file);
  const original = readFileSync(path, 'utf8');
  let text = original;
  for (const [from, to] of m.replace) {
    const n = text.split(from).length - 1;
    if (n !== 1) {
      console.error(`mutate: ${m.name}: expected the text exactly once in ${m.file}, found it ${n} times:\n${from}`);
      process.exit(2);
    }
    text = text.replace(from, () => to);
  }
  console.error(`\n=== ${m.name}: ${m.what} (${m.file}) → ${m.test}${m.grep ? ` --grep "${m.grep}"` : ''}`);
  writeFileSync(backupOf(m.file), original);
  current = m;
  let status;
  try {
    writeFileSync(path, text);
    rebuild(m.file);
    const args = ['tap', m.test, '--reporter=terse', ...(m.grep ? [`--grep=${m.grep}`] : [])];
    status = sh('npx', args, { timeoutMs: 15 * 60_000 });
  } finally {
    restore(m.file);
    rebuild(m.file);
    current = null;
  }
  if (readFileSync(path, 'utf8') !== original) throw new Error(`${m.file} was not restored`);
  rows.push({ name: m.name, test: m.test + (m.grep ? ` (--grep "${m.grep}")` : ''), caught: status !== 0 });
}

const w1 = Math.max(8, ...rows.map((r) => r.name.length));
const w2 = Math.max(9, ...rows.map((r) => r.test.length));
const line = (a, b, c) => `| ${a.padEnd(w1)} | ${b.padEnd(w2)} | ${c.padEnd(6)} |`;
console.log('\n' + line('mutation', 'test file', 'caught'));
console.log(`|${'-'.repeat(w1 + 2)}|${'-'.repeat(w2 + 2)}|--------|`);
for (const r of rows) console.log(line(r.name, r.test, r.caught ? 'yes' : 'NO'));
const survived = rows.filter((r) => !r.caught);
if (survived.length) {
  console.log(`\n${survived.length} mutation(s) survived: ${survived.map((r) => r.name).join(', ')}`);
  process.exit(1);
}
console.log(`\nall ${rows.length} mutations caught`);
