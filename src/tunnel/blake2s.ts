/**
 * BLAKE2s (RFC 7693), keyed, any digest length: what the gateway needs to check a handshake's
 * mac1 and so learn which weaver it is for (WireGuard: mac1 = MAC(HASH("mac1----" ‖ responder
 * public key), message up to mac1)). Node's crypto has BLAKE2s-256 but no key.
 */
const IV = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
const SIGMA = [
  [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
  [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
  [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
  [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
  [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
  [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
  [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
  [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
  [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
  [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

const rotr = (x: number, n: number) => (x >>> n) | (x << (32 - n));

function compress(h: Uint32Array, block: Uint8Array, t: number, last: boolean): void {
  const v = new Uint32Array(16);
  const m = new Uint32Array(16);
  for (let i = 0; i < 16; i++) m[i] = block[i * 4]! | (block[i * 4 + 1]! << 8) | (block[i * 4 + 2]! << 16) | (block[i * 4 + 3]! << 24);
  v.set(h);
  v.set(IV, 8);
  v[12] ^= t >>> 0;
  v[13] ^= Math.floor(t / 0x100000000);
  if (last) v[14] = ~v[14]!;
  const g = (a: number, b: number, c: number, d: number, x: number, y: number) => {
    v[a] = v[a]! + v[b]! + x;
    v[d] = rotr(v[d]! ^ v[a]!, 16);
    v[c] = v[c]! + v[d]!;
    v[b] = rotr(v[b]! ^ v[c]!, 12);
    v[a] = v[a]! + v[b]! + y;
    v[d] = rotr(v[d]! ^ v[a]!, 8);
    v[c] = v[c]! + v[d]!;
    v[b] = rotr(v[b]! ^ v[c]!, 7);
  };
  for (let r = 0; r < 10; r++) {
    const s = SIGMA[r]!;
    g(0, 4, 8, 12, m[s[0]!]!, m[s[1]!]!);
    g(1, 5, 9, 13, m[s[2]!]!, m[s[3]!]!);
    g(2, 6, 10, 14, m[s[4]!]!, m[s[5]!]!);
    g(3, 7, 11, 15, m[s[6]!]!, m[s[7]!]!);
    g(0, 5, 10, 15, m[s[8]!]!, m[s[9]!]!);
    g(1, 6, 11, 12, m[s[10]!]!, m[s[11]!]!);
    g(2, 7, 8, 13, m[s[12]!]!, m[s[13]!]!);
    g(3, 4, 9, 14, m[s[14]!]!, m[s[15]!]!);
  }
  for (let i = 0; i < 8; i++) h[i] = h[i]! ^ v[i]! ^ v[i + 8]!;
}

export function blake2s(data: Uint8Array, outLen = 32, key: Uint8Array = new Uint8Array(0)): Buffer {
  if (outLen < 1 || outLen > 32 || key.length > 32) throw new RangeError('blake2s: digest 1–32 bytes, key ≤ 32 bytes');
  const h = new Uint32Array(IV);
  h[0] = h[0]! ^ (0x01010000 | (key.length << 8) | outLen);
  const input = key.length ? Buffer.concat([Buffer.concat([key], 64), data]) : Buffer.from(data);
  let t = 0;
  let off = 0;
  while (input.length - off > 64) {
    t += 64;
    compress(h, input.subarray(off, off + 64), t, false);
    off += 64;
  }
  const last = new Uint8Array(64);
  last.set(input.subarray(off));
  t += input.length - off;
  compress(h, last, t, true);
  const out = Buffer.alloc(32);
  for (let i = 0; i < 8; i++) out.writeUInt32LE(h[i]! >>> 0, i * 4);
  return out.subarray(0, outLen);
}

/** The key a responder's mac1 is made with: HASH("mac1----" ‖ its public key). */
export function mac1Key(responderPublicKey: Buffer): Buffer {
  return blake2s(Buffer.concat([Buffer.from('mac1----'), responderPublicKey]));
}

/** Whether a handshake initiation (type 1, 148 bytes) carries a valid mac1 for this responder key. */
export function initiationIsFor(msg: Buffer, key: Buffer): boolean {
  if (msg.length !== 148 || msg[0] !== 1) return false;
  return blake2s(msg.subarray(0, 116), 16, key).equals(msg.subarray(116, 132));
}
