// Isolated-workspace preparation for `loom run --local` on a repository of ≥ 50k files with a
// few dirty files, beside `cp -a` of the checkout and a fresh `git clone` of it, same run, same
// (warm) caches. Target: ours ≤ 0.3× cp -a.
//   npm run build && npx tsx bench/run-local/workspace.ts [--files 50000] [--reps 3]
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { prepareWorkspace } from '../../src/run/workspace.js';

const { values } = parseArgs({ options: { files: { type: 'string', default: '50000' }, reps: { type: 'string', default: '3' } } });
const files = Number(values.files);
const reps = Number(values.reps);
const sh = (cwd: string, cmd: string) => execFileSync('sh', ['-c', cmd], { cwd, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 28 });

const root = mkdtempSync(join(tmpdir(), 'loom-bench-run-local-'));
const repo = join(root, 'repo');
try {
  process.stderr.write(`building a ${files}-file repository…\n`);
  mkdirSync(repo);
  for (let i = 0; i < files; i++) {
    const dir = join(repo, `src/m${Math.floor(i / 500)}`);
    if (i % 500 === 0) mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `f${i}.ts`), `export const v${i} = ${i}; // ${'x'.repeat(150)}\n`);
  }
  writeFileSync(join(repo, '.gitignore'), 'node_modules/\n');
  sh(repo, 'git init -q && git config user.email b@example.com && git config user.name b && git add -A && git commit -qm fixture && git repack -adq && git prune-packed');
  // Ignored dependencies (cp -a copies them, the workspace does not) and a few dirty files.
  for (let i = 0; i < 2000; i++) {
    const dir = join(repo, `node_modules/p${Math.floor(i / 100)}`);
    if (i % 100 === 0) mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `i${i}.js`), 'module.exports = 1;\n');
  }
  writeFileSync(join(repo, 'src/m0/f0.ts'), 'modified\n');
  writeFileSync(join(repo, 'src/m1/f500.ts'), 'staged\n');
  sh(repo, 'git add src/m1/f500.ts && git mv src/m2/f1000.ts src/m2/renamed.ts');
  unlinkSync(join(repo, 'src/m3/f1500.ts'));
  writeFileSync(join(repo, 'src/untracked.ts'), 'new\n');

  // Samples are interleaved (ours, cp -a, clone, ours, …) and each starts after a `sync`, so none
  // pays for the previous one's writeback or for a burst of load on the shared machine alone.
  const samples: Record<'ours' | 'cpa' | 'clone', number[]> = { ours: [], cpa: [], clone: [] };
  let wsDir = '';
  const runs: Record<'ours' | 'cpa' | 'clone', (dest: string) => Promise<string>> = {
    ours: async () => (wsDir = (await prepareWorkspace(repo, String(Date.now()), () => undefined)).path),
    cpa: async (dest) => (sh(root, `cp -a ${repo} ${dest}`), dest),
    clone: async (dest) => (sh(root, `git clone -q ${repo} ${dest}`), dest),
  };
  for (let r = 0; r < reps; r++) {
    for (const k of ['ours', 'cpa', 'clone'] as const) {
      sh(root, 'sync');
      const t0 = performance.now();
      const out = await runs[k](join(root, `out-${k}-${r}`));
      samples[k].push(performance.now() - t0);
      rmSync(out, { recursive: true, force: true });
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const ours = median(samples.ours);
  const cpa = median(samples.cpa);
  const clone = median(samples.clone);
  const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  console.log(`workspace preparation, ${files} tracked files + 2000 ignored, 5 dirty paths, median of ${reps} (${wsDir ? 'ok' : '?'})`);
  console.log(`  loom run --local workspace  ${fmt(ours)}`);
  console.log(`  cp -a checkout              ${fmt(cpa)}   ours/cp -a = ${(ours / cpa).toFixed(2)}x (target ≤ 0.30x)`);
  console.log(`  git clone (fresh)           ${fmt(clone)}   ours/clone = ${(ours / clone).toFixed(2)}x`);
} finally {
  rmSync(root, { recursive: true, force: true });
}
