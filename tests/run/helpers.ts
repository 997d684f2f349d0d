/** Fixture repositories and a runner for `loom run --local` / `loom check` through the real CLI binary. */
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { CLI_BIN } from '../support/server.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function loom(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI_BIN, ...args], { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

export const sh = (cwd: string, cmd: string) => execFileSync('sh', ['-c', cmd], { cwd, encoding: 'utf8' });

/** A git repository in a fresh temp dir with `files` committed; returns its path. */
export function makeRepo(files: Record<string, string>, tmpRoots: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'loom-run-fixture-'));
  tmpRoots.push(dir);
  sh(dir, 'git init -q -b main && git config user.email t@example.com && git config user.name t && git config commit.gpgsign false');
  writeFiles(dir, files);
  sh(dir, 'git add -A && git commit -qm init');
  return dir;
}

export function writeFiles(dir: string, files: Record<string, string>): void {
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, p)), { recursive: true });
    writeFileSync(join(dir, p), c);
  }
}

export const workspaceOf = (r: CliResult): string => {
  const m = /^isolated workspace: (.+)$/m.exec(r.stdout);
  if (!m) throw new Error(`no workspace line in: ${r.stdout}\n${r.stderr}`);
  return m[1]!;
};

export const receiptOf = (r: CliResult): Record<string, unknown> & { logs_dir: string; snapshot_path: string } => {
  const lines = r.stdout.trim().split('\n');
  const m = /^receipt: (.+)$/.exec(lines[lines.length - 1]!);
  if (!m) throw new Error(`last line is not the receipt: ${r.stdout}\n${r.stderr}`);
  return JSON.parse(readFileSync(m[1]!, 'utf8')) as Record<string, unknown> & { logs_dir: string; snapshot_path: string };
};

export const readJson = <T = Record<string, unknown>>(p: string): T => JSON.parse(readFileSync(p, 'utf8')) as T;
export const readEvents = (p: string): Record<string, unknown>[] =>
  readFileSync(p, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

export function cleanup(dirs: string[]): void {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
