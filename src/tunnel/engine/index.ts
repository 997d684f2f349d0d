// The WireGuard engine: keys and one peer over a caller-provided datagram transport.
import { wgCrypto } from './native.js';

export { WgPeer, type WgPeerOptions, type WgPeerStats } from './peer.js';

/** A new X25519 key pair (the private key clamped, as `wg genkey` writes it). */
export function generateKeyPair(): { privateKey: Buffer; publicKey: Buffer } {
  const c = wgCrypto();
  const privateKey = c.generatePrivateKey();
  return { privateKey, publicKey: c.publicKey(privateKey) };
}

export function publicKeyOf(privateKey: Buffer): Buffer {
  if (!Buffer.isBuffer(privateKey) || privateKey.length !== 32) throw new TypeError('privateKey must be a 32-byte Buffer');
  return wgCrypto().publicKey(privateKey);
}
export { bridgeTun, type TunBridge } from './tun.js';
export { UserNet, type UserNetOptions } from './usernet.js';
