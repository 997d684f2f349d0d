/**
 * Network namespaces for tunnel tests: a client namespace linked to the host by a veth pair, with
 * random names and a random /30, torn down by the test's teardown (registered before creation).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';

export const sh = (cmd: string, args: string[], input?: string): string => execFileSync(cmd, args, { encoding: 'utf8', input: input ?? '', stdio: ['pipe', 'pipe', 'pipe'] });

export interface ClientNetns {
  name: string;
  hostIp: string;
  clientIp: string;
  exec(cmd: string, args: string[], input?: string): string;
  /** Starts a process inside; killed (by pid) at teardown. */
  spawn(cmd: string, args: string[], env?: Record<string, string>): ChildProcess;
}

export function prerequisites(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, veth, TUN)';
  for (const tool of ['ip', 'wg', 'wireguard-go', 'ping', 'nsenter']) {
    try {
      sh('sh', ['-c', `command -v ${tool}`]);
    } catch {
      return `${tool} is not installed (scripts/apt-packages.txt)`;
    }
  }
  return null;
}

export function clientNetns(t: { teardown(fn: () => void | Promise<void>): void }): ClientNetns {
  const tag = randomBytes(3).toString('hex');
  const name = `loomwg-${tag}`;
  const hostIf = `lwh${tag}`;
  const nsIf = `lwc${tag}`;
  const octet = 16 + (randomBytes(1)[0]! % 200);
  const third = randomBytes(1)[0]! & 0xfc;
  const hostIp = `10.${octet}.${randomBytes(1)[0]!}.${third + 1}`;
  const clientIp = hostIp.replace(/\d+$/, String(third + 2));
  const procs: ChildProcess[] = [];
  t.teardown(() => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    try {
      sh('ip', ['link', 'del', hostIf]);
    } catch {
      /* gone with the namespace or never made */
    }
    try {
      sh('ip', ['netns', 'del', name]);
    } catch {
      /* never made */
    }
  });
  sh('ip', ['netns', 'add', name]);
  sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf]);
  sh('ip', ['link', 'set', nsIf, 'netns', name]);
  sh('ip', ['addr', 'add', `${hostIp}/30`, 'dev', hostIf]);
  sh('ip', ['link', 'set', hostIf, 'up']);
  sh('ip', ['-n', name, 'addr', 'add', `${clientIp}/30`, 'dev', nsIf]);
  sh('ip', ['-n', name, 'link', 'set', nsIf, 'up']);
  sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return {
    name,
    hostIp,
    clientIp,
    exec: (cmd, args, input) => sh('ip', ['netns', 'exec', name, cmd, ...args], input),
    spawn(cmd, args, env = {}) {
      const p = spawn('ip', ['netns', 'exec', name, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
      procs.push(p);
      return p;
    },
  };
}
