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

  const time = async (fn: (dest: string) => Promise<void> | void): Promise<number> => {
    const samples: number[] = [];
    for (let r = 0; r < reps; r++) {
      const dest = join(root, `out-${r}-${Date.now()}`);
      const t0 = performance.now();
      await fn(dest);
      samples.push(performance.now() - t0);
      rmSync(dest, { recursive: true, force: true });
    }
    return samples.sort((a, b) => a - b)[Math.floor(samples.length / 2)]!;
  };
  let wsDir = '';
  const ours = await time(async () => {
    const r = await prepareWorkspace(repo, String(Date.now()), () => undefined);
    wsDir = r.path;
    rmSync(r.path, { recursive: true, force: true });
  });
  const cpa = await time((dest) => void sh(root, `cp -a ${repo} ${dest}`));
  const clone = await time((dest) => void sh(root, `git clone -q ${repo} ${dest}`));
  const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  console.log(`workspace preparation, ${files} tracked files + 2000 ignored, 5 dirty paths, median of ${reps} (${wsDir ? 'ok' : '?'})`);
  console.log(`  loom run --local workspace  ${fmt(ours)}`);
  console.log(`  cp -a checkout              ${fmt(cpa)}   ours/cp -a = ${(ours / cpa).toFixed(2)}x (target ≤ 0.30x)`);
  console.log(`  git clone (fresh)           ${fmt(clone)}   ours/clone = ${(ours / clone).toFixed(2)}x`);
} finally {
  rmSync(root, { recursive: true, force: true });
}
