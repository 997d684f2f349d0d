/**
 * The weaver side of a tunnel on the local backend: wireguard-go inside the weaver's network
 * namespace, set up in RuntimeHooks.created() before the user's process runs, with an ephemeral
 * key (the private half only ever goes to wireguard-go over its control socket). The namespace
 * keeps only `lo` and the WireGuard interface; the weaver's own kernel serves the connections.
 * loom-server reaches wireguard-go's UDP port through the gateway (gateway.ts).
 */
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../../common/log.js';
import type { CreatedContext, HookContext, RuntimeHook } from '../../provisioners/local/hooks.js';
import type { WeaverEndpoints } from '../endpoint.js';
import type { TunnelStore } from '../store.js';
import { newKeyPair } from '../keys.js';
import { addressOf } from '../ula.js';
import { ifaceFor, inNetns, isWireguardGo, runTool, startWireguardGo } from './wg-tools.js';

/** wireguard-go's port inside the weaver's namespace (each namespace has its own ports). */
export const INNER_PORT = 51820;

export class LocalEndpoints implements RuntimeHook, WeaverEndpoints {
  readonly name = 'tunnel';

  constructor(
    private readonly store: TunnelStore,
    private readonly log: Logger,
    /** Sessions already granted for this weaver (re-added when its endpoint is set up again). */
    private readonly peersOf: (weaverId: string) => { publicKey: string; address: string }[] = () => [],
  ) {}

  /** A weaver whose endpoint cannot start (no /dev/net/tun, no wireguard-go) still runs, without tunnels (sessions answer 409). */
  async created(ctx: CreatedContext): Promise<void> {
    if (ctx.kind !== 'weaver') return;
    try {
      await this.setUp(ctx);
    } catch (e) {
      this.log.warn({ weaver: ctx.id, err: e }, 'wireguard endpoint could not start; the weaver runs without tunnels');
    }
  }

  private async setUp(ctx: CreatedContext): Promise<void> {
    const iface = ifaceFor(ctx.id);
    const subnet = this.store.subnetFor(ctx.id);
    mkdirSync(ctx.stateDir, { recursive: true, mode: 0o700 });
    const logFd = openSync(join(ctx.stateDir, 'wireguard-go.log'), 'a', 0o600);
    let wgPid: number;
    try {
      wgPid = await startWireguardGo(ctx.pid, iface, logFd);
    } finally {
      closeSync(logFd);
    }
    // removed() finds the process through this file even when the server's records are gone.
    writeFileSync(join(ctx.stateDir, 'wireguard-go.pid'), String(wgPid), { mode: 0o600 });
    try {
      const keys = newKeyPair();
      // wg reads the key from a file (stdin here is a socket it cannot fopen): a 0600 file in the
      // hook's private directory, gone as soon as wireguard-go has it.
      const keyFile = join(ctx.stateDir, 'private.key');
      writeFileSync(keyFile, keys.privateKey.toString('base64'), { mode: 0o600 });
      keys.privateKey.fill(0);
      try {
        await runTool('wg', ['set', iface, 'listen-port', String(INNER_PORT), 'private-key', keyFile]);
      } finally {
        rmSync(keyFile, { force: true });
      }
      const address = addressOf(this.store.ulaPrefix(), subnet, 1);
      await inNetns(ctx.pid, 'ip', ['-6', 'addr', 'add', `${address}/64`, 'dev', iface, 'nodad']);
      await inNetns(ctx.pid, 'ip', ['link', 'set', iface, 'up']);
      await inNetns(ctx.pid, 'ip', ['link', 'set', 'lo', 'up']);
      this.store.setEndpoint(ctx.id, { publicKey: keys.publicKey.toString('base64'), listenPort: INNER_PORT, pid: wgPid });
      for (const p of this.peersOf(ctx.id)) await this.addPeer(ctx.id, p.publicKey, p.address);
      this.log.info({ weaver: ctx.id, iface, address }, 'wireguard endpoint up in the weaver namespace');
    } catch (e) {
      this.kill(wgPid, iface);
      throw e;
    }
  }

  /** Idempotent: kills this weaver's wireguard-go if it still runs and forgets the endpoint. */
  removed(ctx: HookContext): void {
    if (ctx.kind !== 'weaver') return;
    const iface = ifaceFor(ctx.id);
    let pid = NaN;
    try {
      pid = Number(readFileSync(join(ctx.stateDir, 'wireguard-go.pid'), 'utf8'));
    } catch {
      /* never started, or already cleaned */
    }
    if (Number.isInteger(pid) && pid > 0) this.kill(pid, iface);
    const row = this.store.weaver(ctx.id);
    if (row?.endpoint_pid && row.endpoint_pid !== pid) this.kill(row.endpoint_pid, iface);
    if (row) this.store.setEndpoint(ctx.id, null);
  }

  private kill(pid: number, iface: string): void {
    if (!isWireguardGo(pid, iface)) return;
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
  }

  /** The endpoint when its wireguard-go is still the process we started. */
  live(weaverId: string): { publicKey: string; pid: number; port: number } | null {
    const row = this.store.weaver(weaverId);
    if (!row?.public_key || !row.endpoint_pid || !row.listen_port) return null;
    if (!isWireguardGo(row.endpoint_pid, ifaceFor(weaverId))) return null;
    return { publicKey: row.public_key, pid: row.endpoint_pid, port: row.listen_port };
  }

  async addPeer(weaverId: string, publicKey: string, address: string): Promise<void> {
    await runTool('wg', ['set', ifaceFor(weaverId), 'peer', publicKey, 'allowed-ips', `${address}/128`]);
  }

  async removePeer(weaverId: string, publicKey: string): Promise<void> {
    if (!this.live(weaverId)) return;
    await runTool('wg', ['set', ifaceFor(weaverId), 'peer', publicKey, 'remove']);
  }
}
