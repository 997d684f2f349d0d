// TUN mode: a WgPeer joined to a kernel TUN interface, so the kernel's own TCP/IP stack serves
// what comes through the tunnel (needs CAP_NET_ADMIN in the namespace; the rootless client uses
// a userspace stack instead).
import { closeSync, read, writeSync } from 'node:fs';
import { wgCrypto } from './native.js';
import type { WgPeer } from './peer.js';

export interface TunBridge {
  fd: number;
  close(): void;
}

/** Carries packets between TUN interface `name` and `peer` until close(). */
export function bridgeTun(name: string, peer: WgPeer): TunBridge {
  const fd = wgCrypto().tunOpen(name);
  let closed = false;
  const buf = Buffer.alloc(65536);
  const onPacket = (ip: Buffer) => {
    try {
      writeSync(fd, ip);
    } catch {
      /* interface down: dropped, as a NIC would */
    }
  };
  peer.on('packet', onPacket);
  // One read at a time keeps the packets in order (each read returns one packet).
  const pump = () => {
    read(fd, buf, 0, buf.length, null, (err, n) => {
      if (closed || err) return;
      try {
        peer.write(Buffer.from(buf.subarray(0, n)));
      } catch {
        /* not IP, or the peer closed: dropped */
      }
      pump();
    });
  };
  pump();
  return {
    fd,
    close() {
      if (closed) return;
      closed = true;
      peer.off('packet', onPacket);
      closeSync(fd);
    },
  };
}
