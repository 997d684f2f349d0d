/**
 * Test support, run inside the client's network namespace: hands the datagrams of a local
 * wireguard-go (the stand-in for our engine until it lands) to the CLI's MultipathTransport,
 * which sends them directly or through the relay. Prints {"port":N} once listening and
 * {"path":"direct"|"relay"} on every change, one JSON line each; {"status":…} on SIGUSR1.
 */
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { MultipathTransport } from '../../src/tunnel/client/paths.js';

const [endpoint, relayUrl, keyFile, weaverKey] = process.argv.slice(2) as [string, string, string, string];
const token = process.env['LOOM_TEST_TOKEN']!;
const out = (o: unknown) => process.stdout.write(JSON.stringify(o) + '\n');
const t = new MultipathTransport({
  endpoint: endpoint === '-' ? null : endpoint,
  relayUrl,
  token,
  privateKey: Buffer.from(readFileSync(keyFile, 'utf8').trim(), 'base64'),
  weaverPublicKey: Buffer.from(weaverKey, 'base64'),
  failAfterMs: 1500,
  probeMs: 1000,
});
const local = createSocket('udp4');
let peer: { address: string; port: number } | null = null;
local.on('message', (m, r) => {
  peer = { address: r.address, port: r.port };
  t.send(m);
});
t.on('datagram', (d: Buffer) => peer && local.send(d, peer.port, peer.address));
t.on('path', (p) => out({ path: p }));
t.on('error', (e: Error) => out({ error: e.message }));
process.on('SIGUSR1', () => out({ status: t.status() }));
local.bind(0, '127.0.0.1', () => out({ port: local.address().port, path: t.status().path }));
