// Helpers for the Nix tests: run Debian's nix-instantiate (nix-bin) on pure expressions.
// No nixpkgs, no daemon, no store: `--store dummy://` and a private state dir, so it works on a
// fresh machine where /nix does not exist.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const CANNOT_RUN_HERE =
  'No nixpkgs on this machine: `nix build` cannot run here. `nix flake check --no-build` (nix 2.8) runs against a ' +
  'STAND-IN nixpkgs (tests/nix/fixtures/standin-nixpkgs: a port of the module system, NixOS option stubs with ' +
  "24.11's types, derivations that are never built); the pure Nix functions and the modules are evaluated " +
  'with nix-instantiate through that port.';

/** The stand-in nixpkgs (tests/nix/fixtures/standin-nixpkgs), as a Nix expression. */
export const STANDIN = '(import (REPO + "/tests/nix/fixtures/standin-nixpkgs") { })';

/** A JSON value as a Nix expression. */
export const nixJson = (x: unknown): string => `(builtins.fromJSON ${JSON.stringify(JSON.stringify(x))})`;

let sandbox: string | undefined;
function nixEnv(): NodeJS.ProcessEnv {
  if (!sandbox) {
    const dir = mkdtempSync(join(tmpdir(), 'loom-nix-'));
    process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
    sandbox = dir;
  }
  return {
    PATH: process.env.PATH,
    HOME: join(sandbox, 'home'),
    NIX_STATE_DIR: join(sandbox, 'state'),
    NIX_LOG_DIR: join(sandbox, 'log'),
    XDG_CACHE_HOME: join(sandbox, 'cache'),
  };
}

/** Throws a clear error when nix-instantiate is missing (CI installs Debian's nix-bin). */
export function requireNix(): string {
  try {
    return execFileSync('nix-instantiate', ['--version'], { env: nixEnv(), encoding: 'utf8' }).trim();
  } catch (err) {
    throw new Error(
      'nix-instantiate is not installed: `apt-get install -y nix-bin` (Debian) is needed for the Nix tests. ' +
        String((err as Error).message),
    );
  }
}

/** The isolated environment nix runs with (private state, cache and home). */
export function nixProcessEnv(): NodeJS.ProcessEnv {
  return nixEnv();
}

function run(args: string[]): string {
  try {
    return execFileSync('nix-instantiate', ['--store', 'dummy://', ...args], {
      env: nixEnv(),
      cwd: REPO,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`nix-instantiate ${args.join(' ')} failed:\n${e.stderr ?? e.message}`);
  }
}

/** Parses a .nix file; throws with nix's message on a syntax error. */
export function nixParse(file: string): void {
  run(['--parse', file]);
}

/** Evaluates an expression (with REPO bound to the repository path) strictly, returns its JSON. */
export function nixEval<T = unknown>(expr: string): T {
  const wrapped = `let REPO = ${REPO}; in ${expr}`;
  return JSON.parse(run(['--eval', '--strict', '--json', '-E', wrapped])) as T;
}

/** Evaluates an expression that must fail; returns nix's error output. */
export function nixEvalError(expr: string): string {
  try {
    nixEval(expr);
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error(`expected evaluation to fail: ${expr}`);
}

/** Every .nix file of the repository (outside node_modules and .git). */
export function nixFiles(dir = REPO): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name === '.git' || name === 'dist' || name === 'data') continue;
    const p = join(dir, name);
    const st = statSync(p);
    if (st.isDirectory()) out.push(...nixFiles(p));
    else if (name.endsWith('.nix')) out.push(p);
  }
  return out.sort();
}
