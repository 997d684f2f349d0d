// Noise_IKpsk2 handshake messages of WireGuard (whitepaper §5.4), built on the addon's primitives.
import { timingSafeEqual } from 'node:crypto';
import { wgCrypto } from './native.js';

export const CONSTRUCTION = 'Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s';
export const IDENTIFIER = 'WireGuard v1 zx2c4 Jason@zx2c4.com';
export const LABEL_MAC1 = 'mac1----';
export const LABEL_COOKIE = 'cookie--';

export const MSG_INITIATION = 1;
export const MSG_RESPONSE = 2;
export const MSG_COOKIE_REPLY = 3;
export const MSG_DATA = 4;
export const INITIATION_LEN = 148;
export const RESPONSE_LEN = 92;
export const COOKIE_REPLY_LEN = 64;
export const DATA_HEADER_LEN = 16;
export const KEEPALIVE_LEN = DATA_HEADER_LEN + 16;

const EMPTY = Buffer.alloc(0);

/** Ci and Hi before any key is mixed in: HASH(construction) and HASH(Ci ‖ identifier). */
export function initialChainingKeyAndHash(): { chainingKey: Buffer; hash: Buffer } {
  const c = wgCrypto();
  const chainingKey = c.hash(Buffer.from(CONSTRUCTION));
  return { chainingKey, hash: c.hash(chainingKey, Buffer.from(IDENTIFIER)) };
}

/** Our static keys and everything derived from them and the peer's public key, computed once. */
export interface Identity {
  privateKey: Buffer;
  publicKey: Buffer;
  peerPublicKey: Buffer;
  presharedKey: Buffer;
  staticStatic: Buffer; // DH(our static, peer static)
  mac1KeyOurs: Buffer; // checks mac1 of messages sent to us
  mac1KeyPeer: Buffer; // mac1 of messages we send
  cookieKeyOurs: Buffer; // encrypts cookie replies we send
  cookieKeyPeer: Buffer; // decrypts cookie replies the peer sends
  hashOurs: Buffer; // HASH(Hi ‖ our public key): a responder's starting hash
  hashPeer: Buffer; // HASH(Hi ‖ peer public key): an initiator's starting hash
}

export function makeIdentity(privateKey: Buffer, peerPublicKey: Buffer, presharedKey?: Buffer): Identity {
  const c = wgCrypto();
  const publicKey = c.publicKey(privateKey);
  const init = initialChainingKeyAndHash();
  return {
    privateKey,
    publicKey,
    peerPublicKey,
    presharedKey: presharedKey ?? Buffer.alloc(32),
    staticStatic: c.x25519(privateKey, peerPublicKey),
    mac1KeyOurs: c.hash(Buffer.from(LABEL_MAC1), publicKey),
    mac1KeyPeer: c.hash(Buffer.from(LABEL_MAC1), peerPublicKey),
    cookieKeyOurs: c.hash(Buffer.from(LABEL_COOKIE), publicKey),
    cookieKeyPeer: c.hash(Buffer.from(LABEL_COOKIE), peerPublicKey),
    hashOurs: c.hash(init.hash, publicKey),
    hashPeer: c.hash(init.hash, peerPublicKey),
  };
}

/** TAI64N now, with the nanoseconds whitened to 2^24 ns as wireguard-go does (no timing leak). */
export function tai64n(nowMs = Date.now()): Buffer {
  const b = Buffer.alloc(12);
  const secs = Math.floor(nowMs / 1000);
  b.writeBigUInt64BE(0x400000000000000an + BigInt(secs), 0);
  const nanos = (nowMs % 1000) * 1_000_000;
  b.writeUInt32BE(nanos - (nanos % 0x1000000), 8);
  return b;
}

export interface InitiatorState {
  localIndex: number;
  ephemeralPrivate: Buffer;
  chainingKey: Buffer;
  hash: Buffer;
}

export interface SessionKeys {
  sendKey: Buffer;
  recvKey: Buffer;
}

/** Handshake initiation without macs (the caller adds mac1/mac2 over the finished bytes). */
export function createInitiation(id: Identity, localIndex: number, nowMs = Date.now()): { message: Buffer; state: InitiatorState } {
  const c = wgCrypto();
  const msg = Buffer.alloc(INITIATION_LEN);
  msg.writeUInt32LE(MSG_INITIATION, 0);
  msg.writeUInt32LE(localIndex, 4);
  const ephemeralPrivate = c.generatePrivateKey();
  const ephemeralPublic = c.publicKey(ephemeralPrivate);
  let ck = initialChainingKeyAndHash().chainingKey;
  let h = id.hashPeer;
  [ck] = c.kdf(ck, ephemeralPublic, 1);
  h = c.hash(h, ephemeralPublic);
  ephemeralPublic.copy(msg, 8);
  let k: Buffer;
  [ck, k] = c.kdf(ck, c.x25519(ephemeralPrivate, id.peerPublicKey), 2);
  const encStatic = c.aeadSeal(k, 0, id.publicKey, h);
  encStatic.copy(msg, 40);
  h = c.hash(h, encStatic);
  [ck, k] = c.kdf(ck, id.staticStatic, 2);
  const encTimestamp = c.aeadSeal(k, 0, tai64n(nowMs), h);
  encTimestamp.copy(msg, 88);
  h = c.hash(h, encTimestamp);
  return { message: msg, state: { localIndex, ephemeralPrivate, chainingKey: ck, hash: h } };
}

export interface ConsumedInitiation {
  remoteIndex: number;
  ephemeralPublic: Buffer;
  timestamp: Buffer;
  chainingKey: Buffer;
  hash: Buffer;
}

/** Checks an initiation addressed to us from the one peer we accept; null when it is not. */
export function consumeInitiation(id: Identity, msg: Buffer): ConsumedInitiation | null {
  if (msg.length !== INITIATION_LEN || msg.readUInt32LE(0) !== MSG_INITIATION) return null;
  const c = wgCrypto();
  const ephemeralPublic = Buffer.from(msg.subarray(8, 40));
  let ck = initialChainingKeyAndHash().chainingKey;
  let h = id.hashOurs;
  [ck] = c.kdf(ck, ephemeralPublic, 1);
  h = c.hash(h, ephemeralPublic);
  let k: Buffer;
  let dh: Buffer;
  try {
    dh = c.x25519(id.privateKey, ephemeralPublic);
  } catch {
    return null; // a low-order ephemeral key
  }
  [ck, k] = c.kdf(ck, dh, 2);
  const encStatic = msg.subarray(40, 88);
  const peerStatic = c.aeadOpen(k, 0, encStatic, h);
  if (!peerStatic || !timingSafeEqual(peerStatic, id.peerPublicKey)) return null;
  h = c.hash(h, encStatic);
  [ck, k] = c.kdf(ck, id.staticStatic, 2);
  const encTimestamp = msg.subarray(88, 116);
  const timestamp = c.aeadOpen(k, 0, encTimestamp, h);
  if (!timestamp) return null;
  h = c.hash(h, encTimestamp);
  return { remoteIndex: msg.readUInt32LE(4), ephemeralPublic, timestamp, chainingKey: ck, hash: h };
}

/** The responder's answer (without macs) and the session keys it derives. */
export function createResponse(id: Identity, init: ConsumedInitiation, localIndex: number): { message: Buffer; keys: SessionKeys } {
  const c = wgCrypto();
  const msg = Buffer.alloc(RESPONSE_LEN);
  msg.writeUInt32LE(MSG_RESPONSE, 0);
  msg.writeUInt32LE(localIndex, 4);
  msg.writeUInt32LE(init.remoteIndex, 8);
  const ephemeralPrivate = c.generatePrivateKey();
  const ephemeralPublic = c.publicKey(ephemeralPrivate);
  ephemeralPublic.copy(msg, 12);
  let ck = init.chainingKey;
  let h = init.hash;
  [ck] = c.kdf(ck, ephemeralPublic, 1);
  h = c.hash(h, ephemeralPublic);
  [ck] = c.kdf(ck, c.x25519(ephemeralPrivate, init.ephemeralPublic), 1);
  [ck] = c.kdf(ck, c.x25519(ephemeralPrivate, id.peerPublicKey), 1);
  const [ck2, tau, k] = c.kdf(ck, id.presharedKey, 3);
  h = c.hash(h, tau);
  const encEmpty = c.aeadSeal(k, 0, EMPTY, h);
  encEmpty.copy(msg, 44);
  const [recvKey, sendKey] = c.kdf(ck2, EMPTY, 2);
  return { message: msg, keys: { sendKey, recvKey } };
}

/** The initiator's side of a response; null unless it answers our initiation with the right keys. */
export function consumeResponse(id: Identity, state: InitiatorState, msg: Buffer): { remoteIndex: number; keys: SessionKeys } | null {
  if (msg.length !== RESPONSE_LEN || msg.readUInt32LE(0) !== MSG_RESPONSE) return null;
  if (msg.readUInt32LE(8) !== state.localIndex) return null;
  const c = wgCrypto();
  const ephemeralPublic = Buffer.from(msg.subarray(12, 44));
  let ck = state.chainingKey;
  let h = state.hash;
  [ck] = c.kdf(ck, ephemeralPublic, 1);
  h = c.hash(h, ephemeralPublic);
  try {
    [ck] = c.kdf(ck, c.x25519(state.ephemeralPrivate, ephemeralPublic), 1);
    [ck] = c.kdf(ck, c.x25519(id.privateKey, ephemeralPublic), 1);
  } catch {
    return null;
  }
  const [ck2, tau, k] = c.kdf(ck, id.presharedKey, 3);
  h = c.hash(h, tau);
  if (!c.aeadOpen(k, 0, msg.subarray(44, 60), h)) return null;
  const [sendKey, recvKey] = c.kdf(ck2, EMPTY, 2);
  return { remoteIndex: msg.readUInt32LE(4), keys: { sendKey, recvKey } };
}

/** Writes mac1 (and mac2 when a cookie is known) into the last 32 bytes of a handshake message. */
export function addMacs(msg: Buffer, mac1Key: Buffer, cookie: Buffer | null): Buffer {
  const c = wgCrypto();
  const n = msg.length;
  const mac1 = c.mac(mac1Key, msg.subarray(0, n - 32), 16);
  mac1.copy(msg, n - 32);
  if (cookie) c.mac(cookie, msg.subarray(0, n - 16), 16).copy(msg, n - 16);
  else msg.fill(0, n - 16);
  return mac1;
}

export function mac1Valid(msg: Buffer, mac1Key: Buffer): boolean {
  const n = msg.length;
  return timingSafeEqual(wgCrypto().mac(mac1Key, msg.subarray(0, n - 32), 16), msg.subarray(n - 32, n - 16));
}

export function mac2Valid(msg: Buffer, cookie: Buffer): boolean {
  const n = msg.length;
  return timingSafeEqual(wgCrypto().mac(cookie, msg.subarray(0, n - 16), 16), msg.subarray(n - 16));
}

/** A cookie reply to a handshake message whose mac1 was valid but whose mac2 was not. */
export function createCookieReply(id: Identity, receiverIndex: number, cookie: Buffer, mac1: Buffer): Buffer {
  const c = wgCrypto();
  const msg = Buffer.alloc(COOKIE_REPLY_LEN);
  msg.writeUInt32LE(MSG_COOKIE_REPLY, 0);
  msg.writeUInt32LE(receiverIndex, 4);
  const nonce = c.generatePrivateKey().subarray(0, 24); // 24 random bytes (clamping touches only byte 0 and 31)
  nonce.copy(msg, 8);
  c.xaeadSeal(id.cookieKeyOurs, Buffer.from(nonce), cookie, mac1).copy(msg, 32);
  return msg;
}

/** The cookie inside a reply to our message whose mac1 was `mac1`; null if it does not decrypt. */
export function consumeCookieReply(id: Identity, msg: Buffer, mac1: Buffer): Buffer | null {
  if (msg.length !== COOKIE_REPLY_LEN) return null;
  return wgCrypto().xaeadOpen(id.cookieKeyPeer, Buffer.from(msg.subarray(8, 32)), msg.subarray(32, 64), mac1);
}
