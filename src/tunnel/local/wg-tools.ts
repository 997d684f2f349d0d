/** Small wrappers over `wg`, `ip` and `nsenter`, run with argv arrays (never a shell). */
import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

export function runTool(cmd: string, args: string[], input?: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: 15_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
    child.stdin?.end(input);
  });
}

export const netnsOf = (pid: number) => `/proc/${pid}/ns/net`;

/** Runs a command inside the network namespace of `pid` (only the network namespace). */
export function inNetns(pid: number, cmd: string, args: string[], input?: string | Buffer): Promise<string> {
  return runTool('nsenter', [`--net=${netnsOf(pid)}`, '--', cmd, ...args], input);
}

/** The interface name for a weaver: unique per weaver (wireguard-go's control socket is named after it), ≤ 15 bytes. */
export function ifaceFor(weaverId: string): string {
  return `lw${weaverId.replace(/[^0-9a-f]/gi, '').slice(0, 12).toLowerCase()}`;
}

/** Starts wireguard-go in the network namespace of `pid`, detached so it outlives loom-server; resolves with its pid once its control socket answers. */
export async function startWireguardGo(pid: number, iface: string, logFile: number): Promise<number> {
  const child = spawn('nsenter', [`--net=${netnsOf(pid)}`, '--', 'wireguard-go', '-f', iface], {
    detached: true,
    stdio: ['ignore', logFile, logFile],
    env: { PATH: process.env['PATH'] ?? '/usr/sbin:/usr/bin:/sbin:/bin', LOG_LEVEL: 'error' },
  });
  const exited = new Promise<never>((_, reject) => child.once('exit', (code) => reject(new Error(`wireguard-go exited with ${code} before its interface was up`))));
  exited.catch(() => undefined);
  child.unref();
  // nsenter execs wireguard-go in place: the child pid is wireguard-go's.
  for (;;) {
    const ok = await Promise.race([runTool('wg', ['show', iface, 'public-key']).then(() => true, () => false), exited]);
    if (ok) return child.pid!;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** True when `pid` is the wireguard-go serving `iface` (pids are reused). */
export function isWireguardGo(pid: number, iface: string): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.some((a) => a.endsWith('wireguard-go')) && argv.includes(iface);
  } catch {
    return false;
  }
}
