// TUN mode: a WgPeer joined to a kernel TUN interface, so the kernel's own TCP/IP stack serves
// what comes through the tunnel (needs CAP_NET_ADMIN in the namespace; the rootless client uses
// a userspace stack instead).
import { closeSync, writeSync } from 'node:fs';
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
  const onPacket = (ip: Buffer) => {
    try {
      writeSync(fd, ip);
    } catch {
      /* interface down: dropped, as a NIC would */
    }
  };
  peer.on('packet', onPacket);
  // A native thread reads the interface and hands over batches: one hop per batch, in order.
  const stop = wgCrypto().tunRead(fd, (packets) => {
    if (closed) return;
    for (const p of packets) {
      try {
        peer.write(p);
      } catch {
        /* not IP, or the peer closed: dropped */
      }
    }
  });
  return {
    fd,
    close() {
      if (closed) return;
      closed = true;
      peer.off('packet', onPacket);
      stop();
      closeSync(fd);
    },
  };
}
