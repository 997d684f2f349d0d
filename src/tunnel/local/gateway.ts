/**
 * loom-server as the UDP gateway of the local backend: one host UDP port for every weaver.
 * A handshake initiation is routed to the weaver whose public key its mac1 was made for (so the
 * gateway learns the route without decrypting anything); later datagrams from the same client
 * address follow that route. Each weaver gets one forwarder process inside its network namespace
 * (inner-forwarder.ts) holding a UDP socket per client towards wireguard-go on its loopback.
 * The same routing serves relayed clients (a relay connection is a client like an address).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../../common/log.js';
import { initiationIsFor, mac1Key } from '../mac1.js';
import { deframer, frame } from './frames.js';
import { netnsOf } from './wg-tools.js';
import { PROBE_LEN, PROBE_TYPE } from '../probe.js';

export interface LiveEndpoint {
  weaverId: string;
  publicKey: string;
  /** A process inside the weaver's network namespace (wireguard-go itself); unused when `host` is set. */
  pid: number;
  port: number;
  /** A routable address of the endpoint (a Kubernetes pod IP): datagrams go there straight from loom-server, not through a netns forwarder. */
  host?: string;
}

interface Binding {
  weaverId: string;
  id: number;
  reply: (datagram: Buffer) => void;
}

interface Forwarder {
  /** What it forwards to (a changed endpoint needs a new forwarder). */
  target: string;
  clients: Map<number, Binding>;
  send(id: number, datagram: Buffer): void;
  /** A client went away. */
  drop(id: number): void;
  stop(): void;
}

const MAX_BINDINGS = 4096;
const INNER = fileURLToPath(new URL('./inner-forwarder.js', import.meta.url));

export class Gateway {
  private socket: Socket | null = null;
  private readonly bindings = new Map<string, Binding>();
  private readonly forwarders = new Map<string, Forwarder>();
  private readonly keys = new Map<string, Buffer>();
  private nextId = 1;
  /** Datagrams counted per direction (for metrics and tests). */
  readonly counters = { toWeavers: 0, toClients: 0, unroutable: 0 };

  constructor(
    private readonly endpoints: { all(): LiveEndpoint[]; get(weaverId: string): LiveEndpoint | null },
    private readonly log: Logger,
  ) {}

  async listen(host: string, port: number): Promise<number> {
    const s = createSocket({ type: host.includes(':') ? 'udp6' : 'udp4', reuseAddr: false });
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(port, host, () => {
        s.off('error', reject);
        resolve();
      });
    });
    s.on('error', (e) => this.log.warn({ err: e }, 'tunnel gateway socket error'));
    s.on('message', (msg, rinfo) => {
      if (msg.length === PROBE_LEN && msg[0] === PROBE_TYPE) return void s.send(msg, rinfo.port, rinfo.address);
      const key = `udp:${rinfo.address}:${rinfo.port}`;
      this.route(key, msg, (d) => s.send(d, rinfo.port, rinfo.address));
    });
    this.socket = s;
    return s.address().port;
  }

  /** Routes one datagram from a client (an address, or a relay connection) towards its weaver. */
  route(clientKey: string, datagram: Buffer, reply: (datagram: Buffer) => void, only?: string): void {
    if (datagram.length === 0 || datagram.length > 65535) return;
    let b = this.bindings.get(clientKey);
    if (datagram[0] === 1) {
      // `only`: a relay connection belongs to one session, so to one weaver.
      const candidates = only ? [this.endpoints.get(only)].filter((e): e is LiveEndpoint => e !== null) : this.endpoints.all();
      const target = candidates.find((e) => initiationIsFor(datagram, this.macKey(e.publicKey)));
      if (!target) {
        this.counters.unroutable++;
        return;
      }
      if (!b || b.weaverId !== target.weaverId) {
        if (b) this.unbind(clientKey);
        b = this.bind(clientKey, target.weaverId, reply);
      }
    }
    // A relay connection has one weaver: its packets need no handshake to be routed (the client
    // may move to the relay in the middle of a session, sending transport data first).
    if (!b && only && this.endpoints.get(only)) b = this.bind(clientKey, only, reply);
    if (!b) {
      this.counters.unroutable++;
      return;
    }
    b.reply = reply;
    const f = this.forwarder(b.weaverId);
    if (!f) {
      this.unbind(clientKey);
      this.counters.unroutable++;
      return;
    }
    f.clients.set(b.id, b);
    this.counters.toWeavers++;
    f.send(b.id, datagram);
  }

  /** A client (relay connection) went away. */
  forget(clientKey: string): void {
    this.unbind(clientKey);
  }

  /** The weaver's endpoint is gone: its forwarder and routes go. */
  dropWeaver(weaverId: string): void {
    const f = this.forwarders.get(weaverId);
    if (f) {
      this.forwarders.delete(weaverId);
      f.stop();
    }
    for (const [k, b] of this.bindings) if (b.weaverId === weaverId) this.bindings.delete(k);
  }

  async stop(): Promise<void> {
    for (const id of [...this.forwarders.keys()]) this.dropWeaver(id);
    const s = this.socket;
    this.socket = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  private macKey(publicKey: string): Buffer {
    let k = this.keys.get(publicKey);
    if (!k) {
      k = mac1Key(Buffer.from(publicKey, 'base64'));
      if (this.keys.size > 4096) this.keys.clear();
      this.keys.set(publicKey, k);
    }
    return k;
  }

  private bind(clientKey: string, weaverId: string, reply: (d: Buffer) => void): Binding {
    if (this.bindings.size >= MAX_BINDINGS) this.unbind(this.bindings.keys().next().value as string);
    const b: Binding = { weaverId, id: this.nextId++ >>> 0, reply };
    this.bindings.set(clientKey, b);
    return b;
  }

  private unbind(clientKey: string): void {
    const b = this.bindings.get(clientKey);
    if (!b) return;
    this.bindings.delete(clientKey);
    const f = this.forwarders.get(b.weaverId);
    if (f) {
      f.clients.delete(b.id);
      f.drop(b.id);
    }
  }

  private forwarder(weaverId: string): Forwarder | null {
    const ep = this.endpoints.get(weaverId);
    if (!ep) {
      this.dropWeaver(weaverId);
      return null;
    }
    const target = ep.host ? `udp:${ep.host}:${ep.port}` : `netns:${ep.pid}:${ep.port}`;
    const have = this.forwarders.get(weaverId);
    if (have && have.target === target) return have;
    if (have) this.dropWeaverForwarder(weaverId);
    const f = ep.host ? this.directForwarder(weaverId, target, ep.host, ep.port) : this.netnsForwarder(weaverId, target, ep);
    this.forwarders.set(weaverId, f);
    return f;
  }

  private dropWeaverForwarder(weaverId: string): void {
    const f = this.forwarders.get(weaverId);
    if (!f) return;
    this.forwarders.delete(weaverId);
    f.stop();
  }

  /**
   * Straight to a routable endpoint (a pod IP): one UDP socket per client, so the endpoint sees
   * each client as its own address; only datagrams from the endpoint's address and port go back.
   */
  private directForwarder(weaverId: string, target: string, host: string, port: number): Forwarder {
    const sockets = new Map<number, Socket>();
    const clients = new Map<number, Binding>();
    const type = host.includes(':') ? 'udp6' : 'udp4';
    const unmapped = (a: string) => a.replace(/^::ffff:/, '');
    return {
      target,
      clients,
      send: (id, datagram) => {
        let s = sockets.get(id);
        if (!s) {
          const sock = createSocket(type);
          s = sock;
          sockets.set(id, sock);
          sock.on('error', (e) => this.log.warn({ weaver: weaverId, err: e }, 'tunnel forwarder socket error'));
          sock.on('message', (msg, rinfo) => {
            if (unmapped(rinfo.address) !== unmapped(host) || rinfo.port !== port) return;
            const b = clients.get(id);
            if (!b) return;
            this.counters.toClients++;
            b.reply(msg);
          });
        }
        s.send(datagram, port, host);
      },
      drop: (id) => {
        sockets.get(id)?.close();
        sockets.delete(id);
      },
      stop: () => {
        for (const s of sockets.values()) s.close();
        sockets.clear();
        clients.clear();
      },
    };
  }

  private netnsForwarder(weaverId: string, target: string, ep: LiveEndpoint): Forwarder {
    const proc = spawn('nsenter', [`--net=${netnsOf(ep.pid)}`, '--', process.execPath, INNER, String(ep.port)], { stdio: ['pipe', 'pipe', 'pipe'] });
    const f: Forwarder = {
      target,
      clients: new Map(),
      send: (id, datagram) => void proc.stdin!.write(frame(id, datagram)),
      drop: (id) => void proc.stdin!.write(frame(id, Buffer.alloc(0))),
      stop: () => {
        proc.stdin!.end();
        proc.kill();
      },
    };
    proc.stdout!.on(
      'data',
      deframer((id, d) => {
        const b = f.clients.get(id);
        if (!b) return;
        this.counters.toClients++;
        b.reply(d);
      }),
    );
    proc.stderr!.on('data', (d: Buffer) => this.log.warn({ weaver: weaverId, stderr: d.toString().trim() }, 'tunnel forwarder'));
    proc.stdin!.on('error', () => undefined);
    proc.once('exit', () => {
      if (this.forwarders.get(weaverId) === f) this.forwarders.delete(weaverId);
    });
    return f;
  }
}
