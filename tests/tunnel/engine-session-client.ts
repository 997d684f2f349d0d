/**
 * The rootless client of session.test.ts, run unprivileged in the client namespace: our engine
 * (WgPeer) over the CLI's MultipathTransport (direct UDP to the gateway, or the DERP relay),
 * UserNet for TCP, one TCP stream echoed by a server in the weaver's namespace.
 * argv: <endpoint> <relay url> <weaver key b64> <our private key b64> <our addr> <weaver addr> <port>; env LOOM_TEST_TOKEN.
 * Prints one JSON line.
 */
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { UserNet, WgPeer } from '../../src/tunnel/engine/index.js';
import { MultipathTransport } from '../../src/tunnel/client/paths.js';

const [endpoint, relayUrl, weaverKey, ourKey, ours, theirs, tcpPort] = process.argv.slice(2) as string[];
const transport = new MultipathTransport({
  endpoint: endpoint!,
  relayUrl: relayUrl!,
  token: process.env['LOOM_TEST_TOKEN']!,
  privateKey: Buffer.from(ourKey!, 'base64'),
  weaverPublicKey: Buffer.from(weaverKey!, 'base64'),
  failAfterMs: 1500,
  probeMs: 1000,
});
const peer = new WgPeer({ privateKey: Buffer.from(ourKey!, 'base64'), peerPublicKey: Buffer.from(weaverKey!, 'base64'), send: (d) => transport.send(d) });
const net = new UserNet({ address: ours!, output: (ip) => peer.write(ip) });
peer.on('packet', (ip: Buffer) => net.input(ip));
transport.on('datagram', (d: Buffer) => peer.input(d));
const paths: string[] = [transport.status().path];
transport.on('path', (p: string) => paths.push(p));

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const payload = randomBytes(256 * 1024);
const s = await net.connect(theirs!, Number(tcpPort));
const chunks: Buffer[] = [];
s.on('data', (d: Buffer) => chunks.push(d));
s.end(payload);
await once(s, 'end');
const echoed = Buffer.concat(chunks);
process.stdout.write(JSON.stringify({ uid: process.getuid?.(), sent: sha(payload), echoed: sha(echoed), echoedBytes: echoed.length, paths, status: transport.status() }) + '\n');
net.close();
peer.close();
transport.close();
