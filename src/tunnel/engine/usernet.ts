// UserNet: TCP streams over IP packets with no TUN and no privileges, for the rootless client.
// The TCP/IP stack is Debian's lwIP inside the loom_usernet addon; packets go in with input()
// and come out through output(), e.g. to and from a WgPeer.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isIPv6 } from 'node:net';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { LoomError } from '../../common/errors.js';
import { packageRoot } from '../../common/package-root.js';

type Handle = object;
interface UserNetAddon {
  create(address: Buffer, mtu: number, onEvent: (type: number, id: number, err: number, data: Buffer | null) => void): Handle;
  input(h: Handle, ip: Buffer): void;
  connect(h: Handle, address: Buffer, port: number, id: number): Handle;
  write(c: Handle, data: Buffer): number;
  recved(c: Handle, n: number): void;
  shutdown(c: Handle): void;
  close(c: Handle): void;
  destroy(h: Handle): void;
}

const EV_OUTPUT = 0, EV_CONNECTED = 1, EV_DATA = 2, EV_END = 3, EV_SENT = 4, EV_ERROR = 5;
// lwIP's err_t values that a connection can end with.
const LWIP_ERRORS: Record<number, string> = { [-13]: 'connection aborted', [-14]: 'connection refused', [-15]: 'connection closed', [-3]: 'connection timed out', [-4]: 'no route' };

let addon: UserNetAddon | undefined;
function userNetAddon(): UserNetAddon {
  if (addon) return addon;
  const file = join(packageRoot(), 'native', 'build', 'Release', 'loom_usernet.node');
  if (!existsSync(file)) throw new LoomError(500, 'native_missing', `native addon not built: ${file} (needs liblwip-dev; run: npx node-gyp rebuild --directory native)`);
  addon = createRequire(import.meta.url)(file) as UserNetAddon;
  return addon;
}

/** 16 bytes of an IPv6 address in text form (no zone, no embedded IPv4). */
export function ipv6Bytes(text: string): Buffer {
  if (!isIPv6(text) || text.includes('%') || text.includes('.')) throw new TypeError(`not an IPv6 address: ${JSON.stringify(text)}`);
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const tl = tail !== undefined && tail !== '' ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - tl.length).fill('0'), ...tl];
  const b = Buffer.alloc(16);
  groups.forEach((g: string, i: number) => b.writeUInt16BE(parseInt(g, 16), i * 2));
  return b;
}

class TcpStream extends Duplex {
  pendingWrite: { data: Buffer; cb: (e?: Error | null) => void } | null = null;
  private owed = 0; // bytes delivered to the stream buffer but not yet acknowledged to lwIP
  constructor(private readonly net: UserNetAddon, readonly conn: Handle, private readonly forget: () => void) {
    super();
  }
  /** Data from lwIP; its receive window reopens once the reader keeps up (flow control). */
  deliver(data: Buffer): void {
    if (this.push(data)) this.net.recved(this.conn, data.length);
    else this.owed += data.length;
  }
  override _read(): void {
    if (this.owed) {
      this.net.recved(this.conn, this.owed);
      this.owed = 0;
    }
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.pendingWrite = { data: chunk, cb };
    this.pump();
  }
  /** Hands lwIP as much as its send buffer takes; the rest waits for a 'sent' event. */
  pump(): void {
    const p = this.pendingWrite;
    if (!p) return;
    const n = this.net.write(this.conn, p.data);
    p.data = p.data.subarray(n);
    if (p.data.length === 0) {
      this.pendingWrite = null;
      p.cb();
    }
  }
  override _final(cb: (e?: Error | null) => void): void {
    this.net.shutdown(this.conn);
    cb();
  }
  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.net.close(this.conn);
    this.forget();
    const p = this.pendingWrite;
    this.pendingWrite = null;
    p?.cb(err ?? new Error('stream destroyed'));
    cb(err);
  }
}

export interface UserNetOptions {
  /** Our IPv6 address in the tunnel (the client's ULA). */
  address: string;
  mtu?: number;
  /** An IP packet the stack sends (give it to WgPeer.write). */
  output(ip: Buffer): void;
}

export class UserNet {
  private readonly net = userNetAddon();
  private readonly handle: Handle;
  private readonly output: (ip: Buffer) => void;
  private nextId = 1;
  private closed = false;
  /** Packets the output callback threw on (dropped). */
  outputDrops = 0;
  private readonly conns = new Map<number, { stream: TcpStream; connected: boolean; resolve(s: Duplex): void; reject(e: Error): void }>();

  constructor(o: UserNetOptions) {
    const mtu = o.mtu ?? 1420;
    if (!Number.isInteger(mtu) || mtu < 1280 || mtu > 65535) throw new TypeError('mtu must be an integer 1280..65535');
    if (typeof o.output !== 'function') throw new TypeError('output must be a function');
    this.output = o.output;
    this.handle = this.net.create(ipv6Bytes(o.address), mtu, (type, id, err, data) => this.onEvent(type, id, err, data));
  }

  input(ip: Buffer): void {
    if (!Buffer.isBuffer(ip)) throw new TypeError('ip must be a Buffer');
    if (this.closed || ip.length === 0 || ip.length > 65535) return;
    this.net.input(this.handle, ip);
  }

  connect(host: string, port: number): Promise<Duplex> {
    if (this.closed) return Promise.reject(new Error('UserNet is closed'));
    let addr: Buffer;
    try {
      addr = ipv6Bytes(host);
    } catch (e) {
      return Promise.reject(e as Error);
    }
    if (!Number.isInteger(port) || port < 1 || port > 65535) return Promise.reject(new TypeError(`port must be 1..65535, not ${port}`));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const conn = this.net.connect(this.handle, addr, port, id);
      const stream = new TcpStream(this.net, conn, () => this.conns.delete(id));
      this.conns.set(id, { stream, connected: false, resolve, reject });
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const c of [...this.conns.values()]) {
      if (!c.connected) c.reject(new Error('UserNet closed'));
      c.stream.destroy();
    }
    this.net.destroy(this.handle);
  }

  private onEvent(type: number, id: number, err: number, data: Buffer | null): void {
    if (type === EV_OUTPUT) {
      if (!data || this.closed) return;
      try {
        this.output(data);
      } catch {
        this.outputDrops++; // the tunnel refused it (closed, not IP): dropped as a NIC would; TCP retransmits
      }
      return;
    }
    const c = this.conns.get(id);
    if (!c) return;
    switch (type) {
      case EV_CONNECTED:
        c.connected = true;
        c.resolve(c.stream);
        return;
      case EV_DATA:
        if (data) c.stream.deliver(data);
        return;
      case EV_END:
        c.stream.push(null);
        return;
      case EV_SENT:
        c.stream.pump();
        return;
      case EV_ERROR: {
        const e = new Error(LWIP_ERRORS[err] ?? `TCP error ${err}`);
        if (!c.connected) {
          this.conns.delete(id);
          c.reject(e);
        } else c.stream.destroy(e);
        return;
      }
    }
  }
}
