/** `loom run --local` and `loom check`: run or validate `.loom/workflow.yml`; no server involved. */
import type { Command } from 'commander';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { CliError } from './client.js';
import type { MountMode } from '../run/runner.js';

const MODES = ['bind_mount', 'ephemeral_volume'];

function configValue(repoRoot: string | undefined, key: string): string | undefined {
  let v: string | undefined;
  const files = [join(process.env['XDG_CONFIG_HOME'] || join(homedir(), '.config'), 'loom', 'config.yml')];
  if (repoRoot) files.push(join(repoRoot, '.loom', 'config.yml'));
  for (const f of files) {
    try {
      const doc = parse(readFileSync(f, 'utf8')) as Record<string, unknown> | null;
      const x = doc?.[key];
      if (typeof x === 'string') v = x;
    } catch {
      /* a missing or unreadable config layer is skipped */
    }
  }
  return v;
}

function repoRootOf(cwd: string): string | undefined {
  try {
    return execFileSync('git', ['rev-parse', '--show-toplevel'], { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

export function registerRunCommands(program: Command): void {
  program
    .command('run')
    .description('run the repository workflow locally in an isolated workspace (no server needed)')
    .requiredOption('--local', 'run on this machine (the only mode)')
    .option('--workflow <file>', 'workflow file, relative to the repository root', '.loom/workflow.yml')
    .option('--job <name>', 'run only this job (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--stream', 'show job output on the terminal')
    .option('-q, --quiet', 'print only the final status and the receipt path')
    .option('-v, --verbose', 'show system events (provider, cache, cleanup)')
    .option('--docker-workspace-mount <mode>', 'bind_mount | ephemeral_volume (container jobs; default ephemeral_volume)')
    .action(async (opts: { workflow: string; job: string[]; stream?: boolean; quiet?: boolean; verbose?: boolean; dockerWorkspaceMount?: string }) => {
      // Loaded on use: the runner pulls in the image store, KeePass and Argon2, which other commands never need.
      const { EXIT, runLocal } = await import('../run/runner.js');
      await import('../run/container-provider.js');
      const cwd = process.cwd();
      const mount = opts.dockerWorkspaceMount ?? process.env['LOOM_DOCKER_WORKSPACE_MOUNT'] ?? configValue(repoRootOf(cwd), 'docker_workspace_mount') ?? 'ephemeral_volume';
      if (!MODES.includes(mount)) throw new CliError(`--docker-workspace-mount must be bind_mount or ephemeral_volume (got ${JSON.stringify(mount)})`, 2);
      const code = await runLocal({
        cwd,
        workflow: opts.workflow,
        jobs: opts.job,
        stream: opts.stream === true,
        quiet: opts.quiet === true,
        verbose: opts.verbose === true,
        mount: mount as MountMode,
        argv: ['loom', ...process.argv.slice(2)],
        out: (l) => process.stdout.write(l + '\n'),
        err: (l) => process.stderr.write(l + '\n'),
      });
      process.exitCode = code;
    });

  program
    .command('check')
    .description('validate the workflow file; every problem is listed with file:line:column')
    .option('--workflow <file>', 'workflow file, relative to the repository root', '.loom/workflow.yml')
    .option('--json', 'output JSON')
    .action(async (opts: { workflow: string; json?: boolean }, cmd: Command) => {
      const { WorkflowError, formatProblem, loadWorkflow } = await import('../run/workflow.js');
      const json = opts.json === true || cmd.optsWithGlobals<{ json?: boolean }>().json === true;
      const root = repoRootOf(process.cwd()) ?? process.cwd();
      try {
        const wf = loadWorkflow(root, opts.workflow);
        if (json) process.stdout.write(JSON.stringify({ valid: true, workflow: wf.path, stages: wf.stages, jobs: wf.jobs.map((j) => ({ name: j.name, stage: j.stage })) }, null, 2) + '\n');
        else process.stdout.write(`${wf.path}: valid (${wf.jobs.length} job${wf.jobs.length === 1 ? '' : 's'} in ${wf.stages.length} stage${wf.stages.length === 1 ? '' : 's'})\n`);
      } catch (e) {
        if (!(e instanceof WorkflowError)) throw e;
        if (json) process.stdout.write(JSON.stringify({ valid: false, problems: e.problems }, null, 2) + '\n');
        else for (const p of e.problems) process.stderr.write(formatProblem(p) + '\n');
        process.exitCode = 1;
      }
    });
}
