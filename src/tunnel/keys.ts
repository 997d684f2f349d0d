/** WireGuard keys as exchanged on the wire and in `wg` configuration: 32 bytes, canonical base64. */
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { badRequest } from '../common/errors.js';

export const KEY_B64 = '^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$';

/** Parses a base64 WireGuard public key; anything but 32 canonical bytes is a 400. */
export function parsePublicKey(b64: string, what = 'public_key'): Buffer {
  const buf = Buffer.from(b64, 'base64');
  if (!new RegExp(KEY_B64).test(b64) || buf.length !== 32 || buf.toString('base64') !== b64) {
    throw badRequest(`${what} must be a WireGuard public key (32 bytes, base64)`, 'invalid_public_key');
  }
  // The all-zero key (and other low-order points) would give a known shared secret.
  if (buf.every((b) => b === 0)) throw badRequest(`${what} is the all-zero key`, 'invalid_public_key');
  return buf;
}

const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex');

/** A fresh X25519 key pair (node's OpenSSL), raw 32-byte halves. */
export function newKeyPair(): { privateKey: Buffer; publicKey: Buffer } {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  const priv = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32);
  const pub = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
  return { privateKey: Buffer.from(priv), publicKey: pub };
}

export function publicKeyFor(privateKey: Buffer): Buffer {
  const k = createPrivateKey({ key: Buffer.concat([PKCS8_X25519, privateKey]), format: 'der', type: 'pkcs8' });
  return Buffer.from(createPublicKey(k).export({ format: 'jwk' }).x!, 'base64url');
}
