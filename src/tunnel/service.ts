/**
 * Coordination: devices (public keys of users' machines), sessions (a device let into one
 * weaver's endpoint with one address), and their teardown. A session is a long-lived credential,
 * so it is registered with the stream registry like any stream: it dies with the token that opened
 * it, the membership or role that allowed it, its device, or its weaver.
 */
import type { Logger } from '../common/log.js';
import { LoomError, badRequest, conflict, notFound } from '../common/errors.js';
import { authorize, notVisible, type Resource } from '../server/orgs/access.js';
import type { OrgService } from '../server/orgs/orgs.js';
import type { StreamRegistry } from '../server/streams.js';
import type { WeaverDirectory } from '../weaver/component.js';
import type { WeaverEndpoints } from './endpoint.js';
import type { DeviceRow, SessionRow, TunnelStore } from './store.js';
import { parsePublicKey } from './keys.js';
import { addressOf } from './ula.js';

export const DEVICE_NAME = '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$';
export const KEEPALIVE_SECONDS = 25;

export interface DeviceView {
  id: string;
  name: string;
  public_key: string;
  created_at: string;
}

export interface SessionView {
  id: string;
  weaver_id: string;
  device_id: string;
  client_address: string;
  weaver_address: string;
  weaver_public_key: string;
  endpoints: string[];
  relay_url: string | null;
  keepalive_seconds: number;
  created_at: string;
}

export interface Caller {
  user: { id: string };
  tokenId: string;
}

export interface TunnelServiceDeps {
  store: TunnelStore;
  orgs: OrgService;
  streams: StreamRegistry;
  weavers: WeaverDirectory | null;
  endpoints: WeaverEndpoints | null;
  /** host:port strings clients send UDP to (empty when the gateway is off). */
  udpEndpoints: () => string[];
  /** The relay URL of a session, or null when there is no relay. */
  relayUrl: (sessionId: string) => string | null;
  log: Logger;
}

const deviceView = (d: DeviceRow): DeviceView => ({ id: d.id, name: d.name, public_key: d.public_key, created_at: d.created_at });

export class TunnelService {
  private readonly live = new Map<string, () => void>();
  private readonly endedListeners = new Map<string, Set<() => void>>();

  constructor(private readonly d: TunnelServiceDeps) {}

  /** After a restart: stored sessions are streams again (and those whose access went are torn down). */
  adopt(): void {
    for (const s of this.d.store.sessions()) this.watch(s);
  }

  stop(): void {
    for (const u of this.live.values()) u();
    this.live.clear();
  }

  registerDevice(c: Caller, name: string, publicKey: string): DeviceView {
    if (!new RegExp(DEVICE_NAME).test(name)) throw badRequest('device name: 1–63 letters, digits, ".", "_" or "-", starting with a letter or digit', 'invalid_device_name');
    parsePublicKey(publicKey);
    if (this.d.store.deviceByKey(publicKey)) throw conflict('this public key is already registered', 'device_key_exists');
    if (this.d.store.deviceOf(c.user.id, name)) throw conflict(`you already have a device named ${name}`, 'device_name_exists');
    return deviceView(this.d.store.addDevice(c.user.id, name, publicKey));
  }

  listDevices(c: Caller): DeviceView[] {
    return this.d.store.devicesOf(c.user.id).map(deviceView);
  }

  /** Another user's device is 404 like an unknown one. Its sessions go first. */
  async revokeDevice(c: Caller, idOrName: string): Promise<void> {
    const dev = this.d.store.deviceOf(c.user.id, idOrName);
    if (!dev) throw notFound('device', 'device_not_found');
    for (const s of this.d.store.sessionsOfDevice(dev.id)) await this.end(s, 'device revoked');
    this.d.store.deleteDevice(dev.id);
    this.d.log.info({ user: c.user.id, device: dev.id }, 'wireguard device revoked');
  }

  private weaverResource(weaverId: string): Resource {
    const w = this.d.weavers?.get(weaverId);
    if (!w) throw notVisible({ kind: 'weaver', id: weaverId });
    return { kind: 'weaver', id: w.id, orgId: w.org_id, ownerUserId: w.owner_user_id };
  }

  /** A tunnel into a weaver is a shell's worth of access: the 'exec' right of the role matrix. */
  async openSession(c: Caller, weaverId: string, device: string): Promise<SessionView> {
    const resource = this.weaverResource(weaverId);
    authorize(this.d.orgs, c.user, 'exec', resource);
    const dev = this.d.store.deviceOf(c.user.id, device);
    if (!dev) throw notFound(`device ${device}`, 'device_not_found');
    const ep = this.d.endpoints?.live(weaverId) ?? null;
    if (!ep) throw new LoomError(409, 'tunnel_unavailable', 'this weaver has no WireGuard endpoint (it is not running, or its backend has no tunnels)');
    const subnet = this.d.store.subnetFor(weaverId);
    const s = this.d.store.addSession({ device_id: dev.id, weaver_id: weaverId, org_id: resource.orgId, owner_user_id: resource.ownerUserId ?? '', user_id: c.user.id, token_id: c.tokenId });
    try {
      await this.d.endpoints!.addPeer(weaverId, dev.public_key, addressOf(this.d.store.ulaPrefix(), subnet, s.host));
    } catch (e) {
      this.d.store.deleteSession(s.id);
      throw e;
    }
    this.live.get(s.id)?.();
    this.watch(s);
    // The registry may have ended it at once (a credential revoked meanwhile).
    if (!this.d.store.session(s.id)) throw notVisible(resource);
    return this.view(s, ep.publicKey, subnet);
  }

  /**
   * What a relay connection for this session may carry, checked now: the caller's own session,
   * the 'exec' right on its weaver (404 for another org, 403 for a plain member), a live endpoint.
   */
  relayTarget(c: Caller, sessionId: string): { sessionId: string; weaverId: string; resource: Resource; deviceKey: Buffer; weaverKey: Buffer } {
    const s = this.d.store.session(sessionId);
    if (!s || s.user_id !== c.user.id) throw notFound('session', 'session_not_found');
    const resource = this.weaverResource(s.weaver_id);
    authorize(this.d.orgs, c.user, 'exec', resource);
    const ep = this.d.endpoints?.live(s.weaver_id) ?? null;
    const dev = this.d.store.device(s.device_id);
    if (!ep || !dev) throw new LoomError(409, 'tunnel_unavailable', 'this weaver has no WireGuard endpoint now');
    return { sessionId: s.id, weaverId: s.weaver_id, resource, deviceKey: Buffer.from(dev.public_key, 'base64'), weaverKey: Buffer.from(ep.publicKey, 'base64') };
  }

  /** Calls back once when the session ends (for the relay connections carrying it). */
  onSessionEnded(sessionId: string, cb: () => void): () => void {
    if (!this.d.store.session(sessionId)) {
      cb();
      return () => undefined;
    }
    let set = this.endedListeners.get(sessionId);
    if (!set) this.endedListeners.set(sessionId, (set = new Set()));
    set.add(cb);
    return () => set.delete(cb);
  }

  private ended(sessionId: string): void {
    const set = this.endedListeners.get(sessionId);
    this.endedListeners.delete(sessionId);
    for (const cb of set ?? []) cb();
  }

  listSessions(c: Caller): SessionView[] {
    const out: SessionView[] = [];
    for (const s of this.d.store.sessionsOfUser(c.user.id)) {
      const w = this.d.store.weaver(s.weaver_id);
      if (w?.public_key) out.push(this.view(s, w.public_key, w.subnet));
    }
    return out;
  }

  async closeSession(c: Caller, id: string): Promise<void> {
    const s = this.d.store.session(id);
    if (!s || s.user_id !== c.user.id) throw notFound('session', 'session_not_found');
    await this.end(s, 'closed by the user');
  }

  /** The weaver is gone: its endpoint went with it, its sessions and subnet go now. */
  forgetWeaver(weaverId: string): void {
    for (const s of this.d.store.forgetWeaver(weaverId)) {
      this.live.get(s.id)?.();
      this.live.delete(s.id);
      this.ended(s.id);
    }
  }

  /** The sessions of a weaver (for its endpoint when it is set up again after a restart). */
  peersOf(weaverId: string): { publicKey: string; address: string }[] {
    const w = this.d.store.weaver(weaverId);
    if (!w) return [];
    const prefix = this.d.store.ulaPrefix();
    return this.d.store.sessionsOfWeaver(weaverId).flatMap((s) => {
      const dev = this.d.store.device(s.device_id);
      return dev ? [{ publicKey: dev.public_key, address: addressOf(prefix, w.subnet, s.host) }] : [];
    });
  }

  private view(s: SessionRow, weaverPublicKey: string, subnet: number): SessionView {
    const prefix = this.d.store.ulaPrefix();
    return {
      id: s.id,
      weaver_id: s.weaver_id,
      device_id: s.device_id,
      client_address: addressOf(prefix, subnet, s.host),
      weaver_address: addressOf(prefix, subnet, 1),
      weaver_public_key: weaverPublicKey,
      endpoints: this.d.udpEndpoints(),
      relay_url: this.d.relayUrl(s.id),
      keepalive_seconds: KEEPALIVE_SECONDS,
      created_at: s.created_at,
    };
  }

  private watch(s: SessionRow): void {
    const unregister = this.d.streams.register(
      { close: (reason) => void this.end(s, reason.message) },
      { tokenId: s.token_id, userId: s.user_id, need: { action: 'exec', resource: { kind: 'weaver', id: s.weaver_id, orgId: s.org_id, ownerUserId: s.owner_user_id || null } } },
    );
    if (this.d.store.session(s.id)) this.live.set(s.id, unregister);
    else unregister();
  }

  private async end(s: SessionRow, why: string): Promise<void> {
    this.live.get(s.id)?.();
    this.live.delete(s.id);
    if (!this.d.store.deleteSession(s.id)) return;
    this.ended(s.id);
    const dev = this.d.store.device(s.device_id);
    this.d.log.info({ session: s.id, weaver: s.weaver_id, user: s.user_id, why }, 'wireguard session ended');
    if (dev && this.d.endpoints) {
      await this.d.endpoints.removePeer(s.weaver_id, dev.public_key).catch((e: unknown) => this.d.log.warn({ err: e, weaver: s.weaver_id }, 'removing a wireguard peer failed'));
    }
  }
}
