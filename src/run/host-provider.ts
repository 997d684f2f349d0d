/** The host provider: each script line through `sh -lc` in the workspace, host environment plus variables. */
import { spawn } from 'node:child_process';

export interface StepOutput {
  (stream: 'stdout' | 'stderr', chunk: Buffer): void;
}

export interface JobProvider {
  readonly name: 'host' | 'container';
  /** Where the job's commands see the workspace. */
  readonly projectDir: string;
  prepare(log: (m: string) => void): Promise<void>;
  runStep(line: string, env: Record<string, string>, out: StepOutput): Promise<number>;
  cleanup(log: (m: string) => void): Promise<void>;
}

export function runProcess(cmd: string, args: string[], opts: { cwd: string; env: Record<string, string> }, out: StepOutput): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (c: Buffer) => out('stdout', c));
    child.stderr.on('data', (c: Buffer) => out('stderr', c));
    child.on('error', (e) => {
      out('stderr', Buffer.from(`${cmd}: ${e.message}\n`));
      resolve(127);
    });
    child.on('close', (code, signal) => resolve(code ?? (signal ? 128 + (signalNumber(signal) ?? 1) : 1)));
  });
}

const SIGNALS: Record<string, number> = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGSEGV: 11, SIGPIPE: 13, SIGTERM: 15 };
const signalNumber = (s: string): number | undefined => SIGNALS[s];

export class HostProvider implements JobProvider {
  readonly name = 'host' as const;
  constructor(readonly projectDir: string, private readonly baseEnv: Record<string, string>) {}
  async prepare(log: (m: string) => void): Promise<void> {
    log(`host provider: commands run with sh -lc in ${this.projectDir}`);
  }
  runStep(line: string, env: Record<string, string>, out: StepOutput): Promise<number> {
    return runProcess('sh', ['-lc', line], { cwd: this.projectDir, env: { ...this.baseEnv, ...env } }, out);
  }
  async cleanup(): Promise<void> {}
}
