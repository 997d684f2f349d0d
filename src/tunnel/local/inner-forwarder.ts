/**
 * Runs inside a weaver's network namespace (started by the gateway through nsenter): one UDP
 * socket per client, connected to wireguard-go on the namespace's loopback, so wireguard-go sees
 * each client as its own endpoint. Datagrams travel framed over stdin/stdout; it exits when the
 * gateway closes its stdin.
 */
import { createSocket, type Socket } from 'node:dgram';
import { deframer, frame } from './frames.js';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  process.stderr.write('usage: inner-forwarder <port>\n');
  process.exit(2);
}
interface Client {
  socket: Socket;
  /** Datagrams that arrived before connect() completed. */
  pending: Buffer[] | null;
}
const clients = new Map<number, Client>();
const clientFor = (id: number): Client => {
  let c = clients.get(id);
  if (c) return c;
  const socket = createSocket('udp4');
  const made: Client = { socket, pending: [] };
  socket.on('message', (msg) => process.stdout.write(frame(id, msg)));
  socket.on('error', () => undefined);
  socket.connect(port, '127.0.0.1', () => {
    for (const d of made.pending ?? []) socket.send(d);
    made.pending = null;
  });
  clients.set(id, made);
  return made;
};
process.stdin.on(
  'data',
  deframer((id, datagram) => {
    if (datagram.length === 0) {
      // an empty datagram means: this client is gone
      clients.get(id)?.socket.close();
      clients.delete(id);
      return;
    }
    const c = clientFor(id);
    if (c.pending) c.pending.push(datagram);
    else c.socket.send(datagram);
  }),
);
process.stdin.on('end', () => process.exit(0));
process.stdout.on('error', () => process.exit(0));
