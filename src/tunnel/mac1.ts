/**
 * Routing a handshake initiation to its weaver without decrypting it: the initiation's mac1 is a
 * keyed BLAKE2s over the message under HASH("mac1----" ‖ responder public key), so whichever
 * weaver key validates it is the one the client is talking to. The crypto is the engine's.
 */
import { INITIATION_LEN, LABEL_MAC1, MSG_INITIATION, mac1Valid } from './engine/noise.js';
import { wgCrypto } from './engine/native.js';

/** The key a responder's mac1 is made with: HASH("mac1----" ‖ its public key). */
export function mac1Key(responderPublicKey: Buffer): Buffer {
  return wgCrypto().hash(Buffer.from(LABEL_MAC1), responderPublicKey);
}

/** Whether a handshake initiation (type 1, 148 bytes) carries a valid mac1 for this responder key. */
export function initiationIsFor(msg: Buffer, key: Buffer): boolean {
  if (msg.length !== INITIATION_LEN || msg[0] !== MSG_INITIATION) return false;
  return mac1Valid(msg, key);
}
