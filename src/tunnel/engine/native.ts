// The WireGuard primitives of the native addon (native/src/wg): all cryptography happens there,
// on the OpenSSL 3 that Node links statically.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { LoomError } from '../../common/errors.js';
import { packageRoot } from '../../common/package-root.js';

export interface WgCrypto {
  generatePrivateKey(): Buffer;
  publicKey(privateKey: Buffer): Buffer;
  /** Throws on a low-order public key (all-zero shared secret). */
  x25519(privateKey: Buffer, publicKey: Buffer): Buffer;
  /** headroom zero bytes, then ChaCha20-Poly1305(plaintext padded with zeros to padTo) ‖ tag. */
  aeadSeal(key: Buffer, counter: number, plaintext: Uint8Array, aad?: Uint8Array | null, headroom?: number, padTo?: number): Buffer;
  aeadOpen(key: Buffer, counter: number, ciphertext: Uint8Array, aad?: Uint8Array | null): Buffer | null;
  aeadSealNonce(key: Buffer, nonce: Buffer, plaintext: Uint8Array, aad?: Uint8Array | null): Buffer;
  aeadOpenNonce(key: Buffer, nonce: Buffer, ciphertext: Uint8Array, aad?: Uint8Array | null): Buffer | null;
  hchacha20(key: Buffer, nonce: Buffer): Buffer;
  xaeadSeal(key: Buffer, nonce: Buffer, plaintext: Uint8Array, aad?: Uint8Array | null): Buffer;
  xaeadOpen(key: Buffer, nonce: Buffer, ciphertext: Uint8Array, aad?: Uint8Array | null): Buffer | null;
  /** Opens (creating) a TUN interface in this process's network namespace; returns its fd. */
  tunOpen(name: string): number;
  /** Reads fd on a native thread; onPackets gets batches of packets on the JS thread. Returns stop(). */
  tunRead(fd: number, onPackets: (packets: Buffer[]) => void): () => void;
  hash(...parts: Uint8Array[]): Buffer;
  hmac(key: Uint8Array, ...parts: Uint8Array[]): Buffer;
  mac(key: Uint8Array, data: Uint8Array, outLen: number): Buffer;
  kdf(key: Buffer, input: Uint8Array, n: 1 | 2 | 3): Buffer[];
}

let addon: WgCrypto | undefined;

export function wgCrypto(): WgCrypto {
  if (addon) return addon;
  const file = join(packageRoot(), 'native', 'build', 'Release', 'loom_wg.node');
  if (!existsSync(file)) {
    throw new LoomError(500, 'native_missing', `native addon not built: ${file} (run: npx node-gyp rebuild --directory native)`);
  }
  addon = createRequire(import.meta.url)(file) as WgCrypto;
  return addon;
}
