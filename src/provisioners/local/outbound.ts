/**
 * Outbound network for local weavers (a RuntimeHook): after `runc create`, before the weaver's
 * first process runs, slirp4netns gives the weaver's network namespace a tap0 with user-mode NAT
 * (10.0.2.0/24, gateway 10.0.2.2, DNS 10.0.2.3), and an nftables table in that namespace rejects
 * what a weaver must not reach:
 *   - the host's loopback (slirp's 10.0.2.2; also --disable-host-loopback),
 *   - private (RFC 1918), CGNAT, link-local (incl. the 169.254.169.254 metadata service), ULA,
 *     IPv6 link-local, multicast and reserved ranges,
 *   - every address the host itself has when the weaver starts (services on the host's public
 *     address are the host's services too),
 * except DNS to slirp's resolver and the ranges the operator allows. The weaver has no
 * CAP_NET_ADMIN, so it cannot change the table. Inbound stays closed: slirp forwards no ports.
 * Fails closed: when slirp4netns or nft cannot be set up, the weaver does not start.
 */
import { spawn } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { isIP } from 'node:net';
import type { CreatedContext, HookContext, RuntimeHook } from './hooks.js';
import { run } from './util.js';
import { which } from './runtime.js';

export const SLIRP_DNS = '10.0.2.3';
const SLIRP_HOST = '10.0.2.2';

/** What a weaver may not reach unless allowed (the weaver's own loopback is never filtered). */
export const BLOCKED_V4 = ['0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12', '192.0.0.0/24', '192.168.0.0/16', '198.18.0.0/15', '224.0.0.0/4', '240.0.0.0/4'];
export const BLOCKED_V6 = ['::/128', '::1/128', '::ffff:0:0/96', '64:ff9b::/96', 'fc00::/7', 'fe80::/10', 'ff00::/8'];

export interface OutboundOptions {
  /** CIDRs the operator allows although they are in the blocked ranges (LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS). */
  allowed: string[];
  /** How long slirp4netns may take to configure the namespace (default 10 s). */
  readyTimeoutMs?: number;
}

/** The host's own addresses (every interface, loopback excluded), as /32 and /128 CIDRs. */
export async function hostAddresses(): Promise<{ v4: string[]; v6: string[] }> {
  const r = await run('ip', ['-j', 'addr', 'show'], { timeoutMs: 10_000 });
  const v4: string[] = [];
  const v6: string[] = [];
  if (r.code !== 0) throw new Error(`ip addr: ${r.stderr.trim()}`);
  for (const link of JSON.parse(r.stdout) as { addr_info?: { family: string; local: string }[] }[]) {
    for (const a of link.addr_info ?? []) {
      if (a.family === 'inet' && !a.local.startsWith('127.')) v4.push(`${a.local}/32`);
      if (a.family === 'inet6' && a.local !== '::1') v6.push(`${a.local}/128`);
    }
  }
  return { v4, v6 };
}

/** The nftables ruleset loaded into a weaver's network namespace. */
export function outboundRuleset(o: { allowed: string[]; host: { v4: string[]; v6: string[] } }): string {
  const allowed4 = o.allowed.filter((c) => isIP(c.split('/')[0]!) === 4);
  const allowed6 = o.allowed.filter((c) => isIP(c.split('/')[0]!) === 6);
  const set = (name: string, type: string, items: string[]) =>
    items.length ? `  set ${name} { type ${type}; flags interval; auto-merge; elements = { ${items.join(', ')} } }\n` : '';
  return [
    'table inet loom_outbound {',
    set('blocked4', 'ipv4_addr', [...BLOCKED_V4, ...o.host.v4]) +
      set('blocked6', 'ipv6_addr', [...BLOCKED_V6, ...o.host.v6]) +
      set('allowed4', 'ipv4_addr', allowed4) +
      set('allowed6', 'ipv6_addr', allowed6),
    '  chain output {',
    '    type filter hook output priority 0; policy accept;',
    // Only what leaves through slirp is filtered: the weaver's own loopback and interfaces other
    // features add (a tunnel endpoint's ULA) are not the way to the host or the internet.
    '    oifname != "tap0" accept',
    `    ip daddr ${SLIRP_DNS} udp dport 53 accept`,
    `    ip daddr ${SLIRP_DNS} tcp dport 53 accept`,
    // slirp's gateway is the host's loopback: never, whatever is allowed
    `    ip daddr ${SLIRP_HOST} reject with icmp type admin-prohibited`,
    ...(allowed4.length ? ['    ip daddr @allowed4 accept'] : []),
    ...(allowed6.length ? ['    ip6 daddr @allowed6 accept'] : []),
    '    ip daddr @blocked4 reject with icmp type admin-prohibited',
    '    ip6 daddr @blocked6 reject with icmpv6 type admin-prohibited',
    '  }',
    '}',
    '',
  ].join('\n');
}

export class OutboundNetwork implements RuntimeHook {
  readonly name = 'outbound';
  private readonly opts: OutboundOptions;

  constructor(opts: OutboundOptions) {
    this.opts = opts;
  }

  async created(ctx: CreatedContext): Promise<void> {
    if (ctx.kind !== 'weaver') return; // branching containers keep loopback only
    const slirp = which('slirp4netns');
    const nft = which('nft');
    const nsenter = which('nsenter');
    if (!slirp || !nft || !nsenter) throw new Error('outbound network needs slirp4netns, nft and nsenter (scripts/apt-packages.txt), or LOOM_SERVER_WEAVER_NETWORK=loopback');
    await fsp.mkdir(ctx.stateDir, { recursive: true });
    // Rules first: nothing leaves the namespace before the table is in place.
    const rules = outboundRuleset({ allowed: this.opts.allowed, host: await hostAddresses() });
    const r = await run(nsenter, [`--target=${ctx.pid}`, '--net', '--', nft, '-f', '-'], { input: rules, timeoutMs: 10_000 });
    if (r.code !== 0) throw new Error(`loading the weaver's firewall failed: ${r.stderr.trim()}`);
    await startSlirp(slirp, ctx.pid, join(ctx.stateDir, 'slirp.pid'), this.opts.readyTimeoutMs ?? 10_000);
  }

  async removed(ctx: HookContext): Promise<void> {
    await stopSlirp(join(ctx.stateDir, 'slirp.pid'));
  }
}

/** Starts slirp4netns for a netns (detached: it outlives loom-server like the weaver does) and waits until tap0 is configured. */
async function startSlirp(bin: string, pid: number, pidFile: string, timeoutMs: number): Promise<void> {
  // Its messages go to a file beside the pid file: a pipe would outlive us and SIGPIPE it.
  const logPath = pidFile.replace(/\.pid$/, '.log');
  const log = await fsp.open(logPath, 'a');
  const child = spawn(bin, ['--configure', '--mtu=65520', '--disable-host-loopback', '--enable-seccomp', '--ready-fd=3', String(pid), 'tap0'], {
    stdio: ['ignore', 'ignore', log.fd, 'pipe'],
    detached: true,
  });
  await log.close();
  if (!child.pid) throw new Error('slirp4netns did not start');
  await fsp.writeFile(pidFile, String(child.pid));
  const ready = child.stdio[3] as NodeJS.ReadableStream;
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`slirp4netns did not configure the weaver's network within ${timeoutMs} ms`)), timeoutMs);
      ready.on('data', () => {
        clearTimeout(timer);
        resolve();
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        void fsp.readFile(logPath, 'utf8').catch(() => '').then((t) => reject(new Error(`slirp4netns exited (${code}): ${t.trim().split('\n').pop() ?? ''}`)));
      });
      child.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  // From here slirp lives on its own; our ends of its pipes must not keep it (or us) waiting.
  (ready as unknown as { destroy(): void }).destroy();
  child.removeAllListeners('exit');
  child.unref();
  // slirp4netns outlives its namespace's processes (its tap keeps the netns); a watchdog ends it
  // when the weaver's init goes, even if loom-server is down then (tail --pid polls once a second).
  const watch = spawn('sh', ['-c', 'tail --pid="$1" -f /dev/null; [ "$(cat /proc/$2/comm 2>/dev/null)" = slirp4netns ] && kill "$2"', 'loom-slirp-watch', String(pid), String(child.pid)], {
    stdio: 'ignore',
    detached: true,
  });
  watch.unref();
  if (watch.pid) await fsp.writeFile(pidFile.replace(/\.pid$/, '.watch.pid'), String(watch.pid));
}

async function stopSlirp(pidFile: string): Promise<void> {
  await killIf(pidFile.replace(/\.pid$/, '.watch.pid'), 'sh');
  await killIf(pidFile, 'slirp4netns');
}

/** SIGTERM to the pid in a file if that process is still the one we started (its comm), then the file goes. */
async function killIf(pidFile: string, comm: string): Promise<void> {
  let pid: number;
  try {
    pid = Number((await fsp.readFile(pidFile, 'utf8')).trim());
  } catch {
    return;
  }
  if (!(pid > 0)) return;
  try {
    // Only ever what we started (the pid may have been reused since).
    if ((await fsp.readFile(`/proc/${pid}/comm`, 'utf8')).trim() === comm) process.kill(pid, 'SIGTERM');
  } catch {
    /* gone */
  }
  await fsp.rm(pidFile, { force: true });
}
