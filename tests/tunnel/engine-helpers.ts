/**
 * Test (and bench) support for the WireGuard engine: a network namespace joined to ours by a veth
 * pair, with Debian's wireguard-go serving a TUN interface inside it, so the namespace's kernel
 * answers what comes through the tunnel. Everything is torn down by t.teardown, registered
 * before it is created.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { waitUntil } from '../support/attach.js';

export interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

/** Why the wireguard-go interop tests cannot run here, or null. */
export function interopUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, TUN)';
  for (const bin of ['ip', 'wireguard-go', 'wg']) {
    try {
      execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    } catch {
      return `${bin} not installed (apt-get install iproute2 wireguard-go wireguard-tools)`;
    }
  }
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun missing';
  return null;
}

export function skipOrFail(t: Test, why: string): void {
  if (process.env.CI === 'true') t.fail(`prerequisite missing in CI: ${why}`);
  else t.pass('wireguard-go interop', { skip: why });
}

export function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** An IPv6 address as 16 bytes and as text. */
export interface Addr6 {
  bytes: Buffer;
  text: string;
}

export function addr6(bytes: Buffer): Addr6 {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return { bytes, text: groups.join(':') };
}

/** A random ULA /64 and the two tunnel addresses in it (::1 ours, ::2 wireguard-go's). */
export function randomUla(): { ours: Addr6; theirs: Addr6 } {
  const prefix = Buffer.concat([Buffer.from([0xfd]), randomBytes(7)]);
  const a = Buffer.concat([prefix, Buffer.from('0000000000000001', 'hex')]);
  const b = Buffer.concat([prefix, Buffer.from('0000000000000002', 'hex')]);
  return { ours: addr6(a), theirs: addr6(b) };
}

export interface WgGoNamespace {
  ns: string;
  iface: string;
  hostAddr: string; // our end of the veth (IPv4)
  nsAddr: string; // the namespace's end
  hostVeth: string;
  listenPort: number;
  publicKey: Buffer;
  tunnel: { ours: Addr6; theirs: Addr6 };
  wg(args: string[]): string;
  exec(cmd: string, args: string[]): string;
  spawnIn(cmd: string, args: string[]): ChildProcess;
}

export interface WgGoOptions {
  peerPublicKey: Buffer;
  presharedKey?: Buffer;
  /** wireguard-go's peer endpoint (our UDP socket) so it can initiate; omitted → it learns it. */
  endpoint?: string;
}

/** Creates a namespace, a veth pair and a running wireguard-go with us as its one peer. */
export async function wireguardGoNamespace(t: Teardown, o: WgGoOptions): Promise<WgGoNamespace> {
  const suf = randomBytes(3).toString('hex');
  const ns = `loomwge-${suf}`;
  const hostVeth = `lwgh${suf}`;
  const nsVeth = `lwgp${suf}`;
  const iface = `lwg${suf}`;
  const net = `10.${200 + (randomBytes(1)[0]! % 50)}.${randomBytes(1)[0]}.${(randomBytes(1)[0]! % 64) * 4}`;
  const base = net.split('.').map(Number);
  const hostAddr = `${base[0]}.${base[1]}.${base[2]}.${base[3]! + 1}`;
  const nsAddr = `${base[0]}.${base[1]}.${base[2]}.${base[3]! + 2}`;
  const dir = mkdtempSync(join(tmpdir(), 'loom-wge-'));
  const children: ChildProcess[] = [];
  t.teardown(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' }); } catch { /* not created */ }
    try { execFileSync('ip', ['link', 'del', hostVeth], { stdio: 'ignore' }); } catch { /* gone with the netns */ }
    rmSync(`/var/run/wireguard/${iface}.sock`, { force: true });
    rmSync(dir, { recursive: true, force: true });
  });
  const exec = (cmd: string, args: string[]) => sh('ip', ['netns', 'exec', ns, cmd, ...args]);
  sh('ip', ['netns', 'add', ns]);
  sh('ip', ['link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', nsVeth, 'netns', ns]);
  sh('ip', ['addr', 'add', `${hostAddr}/30`, 'dev', hostVeth]);
  sh('ip', ['link', 'set', hostVeth, 'up']);
  sh('ip', ['-n', ns, 'addr', 'add', `${nsAddr}/30`, 'dev', nsVeth]);
  sh('ip', ['-n', ns, 'link', 'set', nsVeth, 'up']);
  sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);

  const spawnIn = (cmd: string, args: string[]) => {
    const c = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(c);
    return c;
  };
  const wgGo = spawnIn('wireguard-go', ['-f', iface]);
  let wgGoLog = '';
  wgGo.stdout?.on('data', (d: Buffer) => (wgGoLog += d.toString()));
  wgGo.stderr?.on('data', (d: Buffer) => (wgGoLog += d.toString()));
  await waitUntil(async () => {
    if (wgGo.exitCode !== null) throw new Error(`wireguard-go exited: ${wgGoLog}`);
    return existsSync(`/var/run/wireguard/${iface}.sock`);
  }, 'wireguard-go to start', 15_000, 50);

  const privateKey = sh('wg', ['genkey']).trim();
  const publicKey = Buffer.from(sh('wg', ['pubkey'], privateKey + '\n').trim(), 'base64');
  writeFileSync(join(dir, 'key'), privateKey + '\n', { mode: 0o600 });
  const tunnel = randomUla();
  const wg = (args: string[]) => exec('wg', args);
  const peerArgs = ['peer', o.peerPublicKey.toString('base64'), 'allowed-ips', `${tunnel.ours.text}/128`];
  if (o.presharedKey) {
    writeFileSync(join(dir, 'psk'), o.presharedKey.toString('base64') + '\n', { mode: 0o600 });
    peerArgs.push('preshared-key', join(dir, 'psk'));
  }
  if (o.endpoint) peerArgs.push('endpoint', o.endpoint);
  wg(['set', iface, 'private-key', join(dir, 'key'), 'listen-port', '0', ...peerArgs]);
  const listenPort = Number(wg(['show', iface, 'listen-port']).trim());
  sh('ip', ['-n', ns, 'addr', 'add', `${tunnel.theirs.text}/64`, 'dev', iface, 'nodad']);
  sh('ip', ['-n', ns, 'link', 'set', iface, 'mtu', '1420', 'up']);
  return { ns, iface, hostAddr, nsAddr, hostVeth, listenPort, publicKey, tunnel, wg, exec, spawnIn };
}

/** The namespace kernel's count of ICMPv6 echo requests received. */
export function icmp6InEchos(w: WgGoNamespace): number {
  const m = /Icmp6InEchos\s+(\d+)/.exec(w.exec('cat', ['/proc/net/snmp6']));
  return m ? Number(m[1]) : NaN;
}

function checksum(parts: Buffer[]): number {
  let sum = 0;
  for (const b of parts) {
    for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
    if (b.length % 2) sum += b[b.length - 1]! << 8;
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** An IPv6 packet carrying ICMPv6 echo (type 128 request, 129 reply) with a correct checksum. */
export function icmp6Echo(src: Buffer, dst: Buffer, type: 128 | 129, id: number, seq: number, data: Buffer): Buffer {
  const icmp = Buffer.alloc(8 + data.length);
  icmp[0] = type;
  icmp.writeUInt16BE(id, 4);
  icmp.writeUInt16BE(seq, 6);
  data.copy(icmp, 8);
  const pseudo = Buffer.alloc(40);
  src.copy(pseudo, 0);
  dst.copy(pseudo, 16);
  pseudo.writeUInt32BE(icmp.length, 32);
  pseudo[39] = 58;
  icmp.writeUInt16BE(checksum([pseudo, icmp]), 2);
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(icmp.length, 4);
  ip[6] = 58;
  ip[7] = 64;
  src.copy(ip, 8);
  dst.copy(ip, 24);
  return Buffer.concat([ip, icmp]);
}

export interface ParsedEcho {
  src: Buffer;
  dst: Buffer;
  type: number;
  id: number;
  seq: number;
  data: Buffer;
  checksumOk: boolean;
}

export function parseIcmp6Echo(p: Buffer): ParsedEcho | null {
  if (p.length < 48 || p[0]! >> 4 !== 6 || p[6] !== 58) return null;
  const icmp = p.subarray(40, 40 + p.readUInt16BE(4));
  const pseudo = Buffer.alloc(40);
  p.copy(pseudo, 0, 8, 40);
  pseudo.writeUInt32BE(icmp.length, 32);
  pseudo[39] = 58;
  return {
    src: Buffer.from(p.subarray(8, 24)),
    dst: Buffer.from(p.subarray(24, 40)),
    type: icmp[0]!,
    id: icmp.readUInt16BE(4),
    seq: icmp.readUInt16BE(6),
    data: Buffer.from(icmp.subarray(8)),
    checksumOk: checksum([pseudo, icmp]) === 0,
  };
}
