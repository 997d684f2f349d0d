/**
 * The seam between coordination (devices, sessions) and whatever serves WireGuard for a weaver:
 * on the local backend wireguard-go inside the weaver's network namespace (local/endpoint-hook.ts).
 */
export interface WeaverEndpoints {
  /** The weaver's live endpoint, or null when it has none (not running, or the backend has no tunnels). */
  live(weaverId: string): { publicKey: string } | null;
  /** Lets a client key in, with exactly one tunnel address. */
  addPeer(weaverId: string, publicKey: string, address: string): Promise<void>;
  /** Cuts a client key off; a weaver or peer that is already gone is not an error. */
  removePeer(weaverId: string, publicKey: string): Promise<void>;
}
