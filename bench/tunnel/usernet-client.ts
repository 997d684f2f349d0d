/**
 * The bench's rootless client: our engine over a UDP socket plus UserNet (lwIP), no TUN.
 * usernet-client <wg host:port> <wg public key b64> <our addr> <server addr> <port> <bytes> <round trips>
 * Prints our public key, then (after "go" on stdin) one JSON line like tcp-tool's client.
 */
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { generateKeyPair, UserNet, WgPeer } from '../../src/tunnel/engine/index.js';

const [endpoint, peerKey, ours, server, portText, bytesText, rttText] = process.argv.slice(2) as string[];
const [host, wgPort] = endpoint!.split(':');
const keys = generateKeyPair();
const sock = createSocket('udp4');
sock.bind(0);
await once(sock, 'listening');
sock.setRecvBufferSize(4 << 20);
sock.setSendBufferSize(4 << 20);
const peer = new WgPeer({
  privateKey: keys.privateKey,
  peerPublicKey: Buffer.from(peerKey!, 'base64'),
  persistentKeepaliveSeconds: 0,
  send: (d) => sock.send(d, Number(wgPort), host),
});
const net = new UserNet({ address: ours!, output: (ip) => peer.write(ip) });
peer.on('packet', (ip: Buffer) => net.input(ip));
sock.on('message', (m, r) => peer.input(m, `${r.address}:${r.port}`));
process.stdout.write(keys.publicKey.toString('base64') + '\n');
await once(process.stdin, 'data');

const total = Number(bytesText);
const bulk = await net.connect(server!, Number(portText));
const reply: Buffer[] = [];
bulk.on('data', (d: Buffer) => reply.push(d));
const chunk = Buffer.alloc(64 * 1024, 0x5a);
const started = process.hrtime.bigint();
bulk.write('S');
for (let sent = 0; sent < total; sent += chunk.length) {
  if (!bulk.write(chunk.subarray(0, Math.min(chunk.length, total - sent)))) await once(bulk, 'drain');
}
bulk.end();
await once(bulk, 'end');
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
const received = Number(Buffer.concat(reply).readBigUInt64BE(0));
if (received !== total) throw new Error(`server received ${received} of ${total} bytes`);

const echo = await net.connect(server!, Number(portText));
echo.write('E');
const rttsUs: number[] = [];
for (let i = 0; i < Number(rttText); i++) {
  const t0 = process.hrtime.bigint();
  const got = once(echo, 'data');
  echo.write('x');
  await got;
  rttsUs.push(Number(process.hrtime.bigint() - t0) / 1000);
}
process.stdout.write(JSON.stringify({ seconds, bytes: total, rttsUs }) + '\n');
process.exit(0);
