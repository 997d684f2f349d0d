/**
 * Our engine in TUN mode for the bench, run inside the client namespace:
 * engine-peer <tun name> <tun addr/prefix> <bind addr> <peer endpoint host:port> <peer public key b64>
 * Prints our public key, then "ready"; carries packets until killed.
 */
import { execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { once } from 'node:events';
import { bridgeTun, generateKeyPair, WgPeer } from '../../src/tunnel/engine/index.js';

const [tun, tunAddr, bindAddr, endpoint, peerKey] = process.argv.slice(2);
const [host, portText] = endpoint!.split(':');
const keys = generateKeyPair();
const sock = createSocket('udp4');
sock.bind(0, bindAddr);
await once(sock, 'listening');
// Room for bursts while the event loop is busy sealing (as wireguard-go sizes its sockets).
sock.setRecvBufferSize(4 << 20);
sock.setSendBufferSize(4 << 20);
const peer = new WgPeer({
  privateKey: keys.privateKey,
  peerPublicKey: Buffer.from(peerKey!, 'base64'),
  persistentKeepaliveSeconds: 0,
  send: (d) => sock.send(d, Number(portText), host),
});
sock.on('message', (m, r) => peer.input(m, `${r.address}:${r.port}`));
bridgeTun(tun!, peer);
execFileSync('ip', ['addr', 'add', tunAddr!, 'dev', tun!, 'nodad']);
execFileSync('ip', ['link', 'set', tun!, 'mtu', '1420', 'up']);
process.stdout.write(`${keys.publicKey.toString('base64')}\nready\n`);
