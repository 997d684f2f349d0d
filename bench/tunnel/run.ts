/**
 * bench/tunnel: 256 MiB TCP throughput and 2000 sequential 1-byte echo round trips between two
 * network namespaces joined by a veth pair, for
 *   plain    TCP over the veth (baseline),
 *   wg-go    wireguard-go ↔ wireguard-go,
 *   engine   our engine (TUN mode, tunnel/engine) ↔ wireguard-go,
 *   usernet  our engine + UserNet (lwIP; the rootless client, no TUN) ↔ wireguard-go.
 * Prints each figure and our figures as ratios to the baselines. Needs root, wireguard-go, wg.
 * Usage: node --import tsx bench/tunnel/run.ts [MiB=256] [round trips=2000]
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const MIB = Number(process.argv[2] ?? 256);
const RTTS = Number(process.argv[3] ?? 2000);
const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..', '..');
const suf = randomBytes(3).toString('hex');
const nsS = `loomwgbs-${suf}`;
const nsC = `loomwgbc-${suf}`;
const vS = `lwbs${suf}`;
const vC = `lwbc${suf}`;
const dir = mkdtempSync(join(tmpdir(), 'loom-wg-bench-'));
const children: ChildProcess[] = [];
const ifaces: string[] = [];

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
}
const inNs = (ns: string, cmd: string, args: string[]) => sh('ip', ['netns', 'exec', ns, cmd, ...args]);

function cleanup(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const ns of [nsS, nsC]) {
    try { execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' }); } catch { /* not created */ }
  }
  for (const i of ifaces) rmSync(`/var/run/wireguard/${i}.sock`, { force: true });
  rmSync(dir, { recursive: true, force: true });
}
process.on('SIGINT', () => { cleanup(); process.exit(130); });
process.on('SIGTERM', () => { cleanup(); process.exit(143); });

/** Starts a process in a namespace and resolves once its stdout has printed `marker`. */
function start(ns: string, cmd: string, args: string[], marker: string): Promise<{ child: ChildProcess; out: string }> {
  const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes(marker)) resolve({ child, out });
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => reject(new Error(`${cmd} exited ${code}: ${err}`)));
  });
}

const node = (file: string, args: string[]): [string, string[]] => [process.execPath, ['--import', 'tsx', join(HERE, file), ...args]];

async function wireguardGo(ns: string, iface: string): Promise<{ publicKey: string; port: number; keyFile: string }> {
  ifaces.push(iface);
  const child = spawn('ip', ['netns', 'exec', ns, 'wireguard-go', '-f', iface], { stdio: 'ignore' });
  children.push(child);
  for (let i = 0; i < 200 && !existsSync(`/var/run/wireguard/${iface}.sock`); i++) await new Promise((r) => setTimeout(r, 50));
  const priv = sh('wg', ['genkey']).trim();
  const keyFile = join(dir, `${iface}.key`);
  writeFileSync(keyFile, priv + '\n', { mode: 0o600 });
  inNs(ns, 'wg', ['set', iface, 'private-key', keyFile, 'listen-port', '0']);
  const port = Number(inNs(ns, 'wg', ['show', iface, 'listen-port']).trim());
  return { publicKey: sh('wg', ['pubkey'], priv + '\n').trim(), port, keyFile };
}

interface Figures { mbit: number; p50: number; p99: number; max: number }

type Result = { seconds: number; bytes: number; rttsUs: number[] };

async function measure(name: string, serverAddr: string, client?: (port: number) => Promise<Result>): Promise<Figures> {
  const port = 20000 + Math.floor(Math.random() * 20000);
  const server = await start(nsS, ...node('tcp-tool.ts', ['server', serverAddr, String(port)]), 'listening');
  const [cmd, args] = node('tcp-tool.ts', ['client', serverAddr, String(port), String(MIB * 1024 * 1024), String(RTTS)]);
  process.stderr.write(`${name}: ${MIB} MiB and ${RTTS} round trips…\n`);
  const r = client ? await client(port) : (JSON.parse(inNs(nsC, cmd, [...args])) as Result);
  server.child.kill('SIGKILL');
  const sorted = [...r.rttsUs].sort((a, b) => a - b);
  const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
  return { mbit: (r.bytes * 8) / r.seconds / 1e6, p50: q(0.5), p99: q(0.99), max: sorted[sorted.length - 1]! };
}

try {
  for (const b of ['ip', 'wireguard-go', 'wg']) sh('sh', ['-c', `command -v ${b}`]);
  const o = randomBytes(2);
  const hostS = `10.${200 + (o[0]! % 50)}.${o[1]}.1`;
  const hostC = `10.${200 + (o[0]! % 50)}.${o[1]}.2`;
  sh('ip', ['netns', 'add', nsS]);
  sh('ip', ['netns', 'add', nsC]);
  sh('ip', ['link', 'add', vS, 'netns', nsS, 'type', 'veth', 'peer', 'name', vC, 'netns', nsC]);
  sh('ip', ['-n', nsS, 'addr', 'add', `${hostS}/30`, 'dev', vS]);
  sh('ip', ['-n', nsC, 'addr', 'add', `${hostC}/30`, 'dev', vC]);
  for (const [ns, v] of [[nsS, vS], [nsC, vC]] as const) {
    sh('ip', ['-n', ns, 'link', 'set', v, 'up']);
    sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  }
  const ula = () => `fd${randomBytes(1).toString('hex')}:${randomBytes(2).toString('hex')}:${randomBytes(2).toString('hex')}::`;

  const plain = await measure('plain TCP over the veth', hostS);

  // wireguard-go ↔ wireguard-go
  const p1 = ula();
  const s1 = await wireguardGo(nsS, `wgs${suf}`);
  const c1 = await wireguardGo(nsC, `wgc${suf}`);
  inNs(nsS, 'wg', ['set', `wgs${suf}`, 'peer', c1.publicKey, 'allowed-ips', `${p1}1/128`]);
  inNs(nsC, 'wg', ['set', `wgc${suf}`, 'peer', s1.publicKey, 'allowed-ips', `${p1}2/128`, 'endpoint', `${hostS}:${s1.port}`]);
  sh('ip', ['-n', nsS, 'addr', 'add', `${p1}2/64`, 'dev', `wgs${suf}`, 'nodad']);
  sh('ip', ['-n', nsC, 'addr', 'add', `${p1}1/64`, 'dev', `wgc${suf}`, 'nodad']);
  for (const [ns, i] of [[nsS, `wgs${suf}`], [nsC, `wgc${suf}`]] as const) sh('ip', ['-n', ns, 'link', 'set', i, 'mtu', '1420', 'up']);
  const wggo = await measure('wireguard-go ↔ wireguard-go', `${p1}2`);

  // our engine (TUN mode in the client namespace) ↔ wireguard-go
  const p2 = ula();
  const s2 = await wireguardGo(nsS, `wge${suf}`);
  sh('ip', ['-n', nsS, 'addr', 'add', `${p2}2/64`, 'dev', `wge${suf}`, 'nodad']);
  sh('ip', ['-n', nsS, 'link', 'set', `wge${suf}`, 'mtu', '1420', 'up']);
  const eng = await start(nsC, ...node('engine-peer.ts', [`lwt${suf}`, `${p2}1/64`, hostC, `${hostS}:${s2.port}`, s2.publicKey]), 'ready');
  const enginePub = eng.out.split('\n')[0]!;
  inNs(nsS, 'wg', ['set', `wge${suf}`, 'peer', enginePub, 'allowed-ips', `${p2}1/128`]);
  const ours = await measure('our engine ↔ wireguard-go', `${p2}2`);

  // our engine + UserNet in the client namespace (no TUN) ↔ wireguard-go
  const p3 = ula();
  const s3 = await wireguardGo(nsS, `wgu${suf}`);
  sh('ip', ['-n', nsS, 'addr', 'add', `${p3}2/64`, 'dev', `wgu${suf}`, 'nodad']);
  sh('ip', ['-n', nsS, 'link', 'set', `wgu${suf}`, 'mtu', '1420', 'up']);
  const usernet = await measure('our engine + UserNet ↔ wireguard-go', `${p3}2`, async (port) => {
    const [cmd, args] = node('usernet-client.ts', [`${hostS}:${s3.port}`, s3.publicKey, `${p3}1`, `${p3}2`, String(port), String(MIB * 1024 * 1024), String(RTTS)]);
    const child = spawn('ip', ['netns', 'exec', nsC, cmd, ...args], { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(child);
    let out = '';
    const lines = new Promise<string[]>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const l = out.split('\n');
        if (l.length === 2 && l[0]) {
          inNs(nsS, 'wg', ['set', `wgu${suf}`, 'peer', l[0], 'allowed-ips', `${p3}1/128`]);
          child.stdin!.write('go\n');
        }
        if (l.length >= 3) resolve(l);
      });
      child.on('exit', (c) => reject(new Error(`usernet client exited ${c}`)));
    });
    return JSON.parse((await lines)[1]!) as Result;
  });

  const row = (n: string, f: Figures) =>
    `${n.padEnd(30)} ${f.mbit.toFixed(0).padStart(8)} Mbit/s   p50 ${f.p50.toFixed(0).padStart(6)} µs   p99 ${f.p99.toFixed(0).padStart(6)} µs   max ${f.max.toFixed(0).padStart(7)} µs`;
  console.log(`bench/tunnel: ${MIB} MiB bulk TCP, ${RTTS} sequential 1-byte echo round trips (node ${process.version})`);
  console.log(row('plain TCP over veth', plain));
  console.log(row('wireguard-go ↔ wireguard-go', wggo));
  console.log(row('our engine ↔ wireguard-go', ours));
  console.log(row('engine+UserNet ↔ wireguard-go', usernet));
  console.log(`throughput ratio  engine / wg-go ${(ours.mbit / wggo.mbit).toFixed(2)}x   wg-go / plain ${(wggo.mbit / plain.mbit).toFixed(2)}x   engine / plain ${(ours.mbit / plain.mbit).toFixed(2)}x`);
  console.log(`UserNet (rootless) ratio  throughput / wg-go ${(usernet.mbit / wggo.mbit).toFixed(2)}x   echo p50 / wg-go ${(usernet.p50 / wggo.p50).toFixed(2)}x   p99 / wg-go ${(usernet.p99 / wggo.p99).toFixed(2)}x`);
  console.log(`echo p50 ratio   engine / wg-go ${(ours.p50 / wggo.p50).toFixed(2)}x   p99 ratio engine / wg-go ${(ours.p99 / wggo.p99).toFixed(2)}x`);
} finally {
  cleanup();
}
