/**
 * The weaver side of a tunnel on the Kubernetes backend: wireguard-go in a sidecar of the weaver
 * pod (pod-spec.ts, tunnelSidecar), so it shares the pod's network namespace and the weaver's own
 * kernel serves the connections. The ephemeral key is minted here when the pod is created and goes
 * to the pod only in a Secret (the backend writes it and forgets it); the public half is kept in
 * the tunnel store. Peers are set through the pod exec API (`wg set` in the sidecar) as sessions
 * open and end. The gateway sends datagrams to the pod IP's UDP port.
 */
import type { Logger } from '../../common/log.js';
import type { PodTunnelKeys } from '../../provisioners/kubernetes/provisioner.js';
import { TUNNEL_PORT } from '../../provisioners/kubernetes/pod-spec.js';
import type { WeaverEndpoints } from '../endpoint.js';
import type { TunnelStore } from '../store.js';
import { newKeyPair } from '../keys.js';
import { addressOf } from '../ula.js';

/** What this needs of the Kubernetes backend (KubernetesProvisioner implements it). */
export interface TunnelPods {
  tunnelEndpoint(weaverId: string): { host: string; port: number } | null;
  tunnelSet(weaverId: string, args: string[]): Promise<void>;
}

export class KubernetesEndpoints implements WeaverEndpoints, PodTunnelKeys {
  constructor(
    private readonly store: TunnelStore,
    private readonly pods: TunnelPods,
    private readonly log: Logger,
  ) {}

  mint(weaverId: string): { privateKey: Buffer; address: string } {
    const subnet = this.store.subnetFor(weaverId);
    const keys = newKeyPair();
    this.store.setEndpoint(weaverId, { publicKey: keys.publicKey.toString('base64'), listenPort: TUNNEL_PORT, pid: 0 });
    this.log.info({ weaver: weaverId }, 'wireguard key minted for a weaver pod');
    return { privateKey: keys.privateKey, address: addressOf(this.store.ulaPrefix(), subnet, 1) };
  }

  forget(weaverId: string): void {
    if (this.store.weaver(weaverId)) this.store.setEndpoint(weaverId, null);
  }

  /** The endpoint once the pod runs with a ready sidecar: its key and the pod IP's UDP port. */
  live(weaverId: string): { publicKey: string; host: string; port: number } | null {
    const row = this.store.weaver(weaverId);
    if (!row?.public_key) return null;
    const ep = this.pods.tunnelEndpoint(weaverId);
    return ep ? { publicKey: row.public_key, host: ep.host, port: ep.port } : null;
  }

  async addPeer(weaverId: string, publicKey: string, address: string): Promise<void> {
    await this.pods.tunnelSet(weaverId, ['peer', publicKey, 'allowed-ips', `${address}/128`]);
  }

  async removePeer(weaverId: string, publicKey: string): Promise<void> {
    if (!this.live(weaverId)) return;
    await this.pods.tunnelSet(weaverId, ['peer', publicKey, 'remove']);
  }
}
