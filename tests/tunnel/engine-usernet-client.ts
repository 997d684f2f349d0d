/**
 * The rootless client of engine-usernet.test.ts, run as an unprivileged user: our engine over a
 * plain UDP socket plus UserNet (no TUN), one TCP stream echoed by a server behind wireguard-go.
 * argv: <wg host> <wg port> <wg public key b64> <our private key b64> <our addr> <server addr> <port> <closed port>
 * Prints one JSON line.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { UserNet, WgPeer } from '../../src/tunnel/engine/index.js';

const [host, port, peerKey, ourKey, ours, theirs, tcpPort, closedPort] = process.argv.slice(2) as string[];
const sock = createSocket('udp4');
sock.bind(0);
await once(sock, 'listening');
const peer = new WgPeer({
  privateKey: Buffer.from(ourKey!, 'base64'),
  peerPublicKey: Buffer.from(peerKey!, 'base64'),
  send: (d) => sock.send(d, Number(port), host),
});
const net = new UserNet({ address: ours!, output: (ip) => peer.write(ip) });
peer.on('packet', (ip: Buffer) => net.input(ip));
sock.on('message', (m, r) => peer.input(m, `${r.address}:${r.port}`));

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const payload = randomBytes(1 << 20);
const s = await net.connect(theirs!, Number(tcpPort));
const chunks: Buffer[] = [];
s.on('data', (d: Buffer) => chunks.push(d));
s.end(payload);
await once(s, 'end');
let refused = '';
try {
  await net.connect(theirs!, Number(closedPort));
} catch (e) {
  refused = (e as Error).message;
}
let badHost = '';
try {
  await net.connect('example.com', 80);
} catch (e) {
  badHost = (e as Error).message;
}
const echoed = Buffer.concat(chunks);
process.stdout.write(JSON.stringify({ uid: process.getuid?.(), sent: sha(payload), echoed: sha(echoed), echoedBytes: echoed.length, refused, badHost, stats: peer.stats() }) + '\n');
net.close();
peer.close();
sock.close();
