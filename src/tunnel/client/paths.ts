/**
 * Path selection for one tunnel: WireGuard datagrams go straight to the gateway's UDP port when
 * that works and through the relay when it does not, and come back to direct when it works again.
 * It sees datagrams only (the engine or any WireGuard peer sits above `send`/'datagram'):
 * - on direct, a datagram sent with nothing received on direct for `failAfterMs` → relay;
 * - on relay, every `probeMs` a probe goes to the gateway's UDP port, which echoes it; an echo →
 *   direct again (the next WireGuard packet sent directly moves the weaver's answers too).
 */
import { EventEmitter } from 'node:events';
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { DerpClient } from './derp-client.js';
import { PROBE_LEN, PROBE_TYPE } from '../probe.js';

export type PathName = 'direct' | 'relay' | 'none';

export interface PathStats {
  path: PathName;
  txBytes: { direct: number; relay: number };
  rxBytes: { direct: number; relay: number };
  switches: number;
  relayRttMs: number | null;
}

export interface MultipathOptions {
  /** host:port of the gateway, when there is one. */
  endpoint: string | null;
  relayUrl: string | null;
  token: string;
  privateKey: Buffer;
  weaverPublicKey: Buffer;
  failAfterMs?: number;
  probeMs?: number;
}

function splitHostPort(ep: string): { host: string; port: number } {
  const i = ep.lastIndexOf(':');
  return { host: ep.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(ep.slice(i + 1)) };
}

/** Events: 'datagram' (Buffer), 'path' (PathName), 'error' (Error). */
export class MultipathTransport extends EventEmitter {
  private path: PathName;
  private udp: Socket | null = null;
  private relay: DerpClient | null = null;
  private lastDirectRx = 0;
  private directPendingSince = 0;
  private lastProbe = 0;
  private lastPing = 0;
  private probeNonce: Buffer | null = null;
  private closed = false;
  private relayRtt: number | null = null;
  private readonly timer: NodeJS.Timeout;
  private readonly stats = { txBytes: { direct: 0, relay: 0 }, rxBytes: { direct: 0, relay: 0 }, switches: 0 };

  constructor(private readonly o: MultipathOptions) {
    super();
    if (!o.endpoint && !o.relayUrl) throw new Error('the session offers neither a UDP endpoint nor a relay');
    this.path = o.endpoint ? 'direct' : 'relay';
    if (o.endpoint) {
      const { host } = splitHostPort(o.endpoint);
      this.udp = createSocket(host.includes(':') ? 'udp6' : 'udp4');
      this.udp.on('message', (m) => {
        if (m.length === PROBE_LEN && m[0] === PROBE_TYPE) {
          if (this.probeNonce && m.subarray(1).equals(this.probeNonce) && this.path !== 'direct') this.switchTo('direct');
          return;
        }
        this.lastDirectRx = Date.now();
        this.directPendingSince = 0;
        this.stats.rxBytes.direct += m.length;
        // Receiving directly does not prove sending directly works (a one-way block): only a
        // probe's echo brings the path back to direct.
        this.emit('datagram', m);
      });
      this.udp.on('error', () => undefined);
      // Bound now: answers may arrive before we send again, and the socket keeps the process alive.
      this.udp.bind(0);
    }
    if (this.path === 'relay') this.ensureRelay();
    this.timer = setInterval(() => this.tick(), 250);
    this.timer.unref();
  }

  status(): PathStats {
    return { path: this.path, txBytes: { ...this.stats.txBytes }, rxBytes: { ...this.stats.rxBytes }, switches: this.stats.switches, relayRttMs: this.relayRtt };
  }

  send(datagram: Buffer): void {
    if (this.closed) return;
    const now = Date.now();
    if (this.path === 'direct') {
      this.sendDirect(datagram);
      if (!this.directPendingSince) this.directPendingSince = now;
      return;
    }
    this.sendRelay(datagram);
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.udp?.close();
    this.relay?.removeAllListeners();
    this.relay?.close();
  }

  private sendDirect(d: Buffer): void {
    const { host, port } = splitHostPort(this.o.endpoint!);
    this.stats.txBytes.direct += d.length;
    this.udp!.send(d, port, host);
  }

  private sendRelay(d: Buffer): void {
    const r = this.ensureRelay();
    if (!r) return;
    this.stats.txBytes.relay += d.length;
    r.send(this.o.weaverPublicKey, d);
  }

  private tick(): void {
    const now = Date.now();
    // On the relay, ask the gateway itself whether UDP gets through (it echoes probes; WireGuard
    // is not involved, so nothing is duplicated or lost).
    if (this.path === 'relay' && this.udp && now - this.lastProbe >= (this.o.probeMs ?? 5000)) {
      this.lastProbe = now;
      this.probeNonce = randomBytes(PROBE_LEN - 1);
      const { host, port } = splitHostPort(this.o.endpoint!);
      this.udp.send(Buffer.concat([Buffer.from([PROBE_TYPE]), this.probeNonce]), port, host);
    }
    if (this.path === 'direct' && this.directPendingSince && now - this.directPendingSince > (this.o.failAfterMs ?? 3000) && this.o.relayUrl) {
      this.directPendingSince = 0;
      this.switchTo('relay');
    }
    if (this.relay?.isReady && now - this.lastPing >= 1000) {
      this.lastPing = now;
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(BigInt(now));
      this.relay.ping(b);
    }
  }

  private switchTo(p: PathName): void {
    if (this.path === p) return;
    this.path = p;
    this.stats.switches++;
    if (p === 'relay') this.ensureRelay();
    this.emit('path', p);
  }

  private ensureRelay(): DerpClient | null {
    if (this.relay) return this.relay;
    if (!this.o.relayUrl) return null;
    const r = new DerpClient({ url: this.o.relayUrl, token: this.o.token, privateKey: this.o.privateKey });
    r.on('packet', (src: Buffer, pkt: Buffer) => {
      if (!src.equals(this.o.weaverPublicKey)) return;
      this.stats.rxBytes.relay += pkt.length;
      this.emit('datagram', pkt);
    });
    r.on('pong', (data: Buffer) => {
      if (data.length === 8) this.relayRtt = Date.now() - Number(data.readBigUInt64BE());
    });
    r.on('close', (code: number, reason: string) => {
      if (this.relay === r) this.relay = null;
      // 4xxx: the server refused or cut us (revoked, session ended): no point retrying.
      if (code >= 4000 && code < 5000) this.emit('error', new Error(`relay closed: ${reason || code}`));
    });
    this.relay = r;
    return r;
  }
}
