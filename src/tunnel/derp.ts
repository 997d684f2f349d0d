/**
 * DERP framing (Tailscale's relay protocol): a 1-byte type, a 4-byte big-endian length, then the
 * payload (at most 64 KiB). Carried here as binary WebSocket messages (subprotocol `derp`), one
 * or more frames per message. ClientInfo proves the client holds its key: a NaCl box from the
 * client's key to the server's (per-process) key.
 */
import nacl from 'tweetnacl';

export const FrameType = {
  ServerKey: 0x01,
  ClientInfo: 0x02,
  ServerInfo: 0x03,
  SendPacket: 0x04,
  RecvPacket: 0x05,
  KeepAlive: 0x06,
  PeerGone: 0x08,
  PeerPresent: 0x09,
  Ping: 0x12,
  Pong: 0x13,
} as const;

/** "DERP🔑" */
export const MAGIC = Buffer.from([0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91]);
export const MAX_PAYLOAD = 64 * 1024;
export const SUBPROTOCOL = 'derp';

export class DerpError extends Error {}

export function encode(type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new DerpError(`frame payload ${payload.length} bytes is over ${MAX_PAYLOAD}`);
  const h = Buffer.allocUnsafe(5);
  h[0] = type;
  h.writeUInt32BE(payload.length, 1);
  return Buffer.concat([h, payload]);
}

/** Splits one message into frames; a truncated or oversized frame is an error (the connection closes). */
export function decode(msg: Buffer): { type: number; payload: Buffer }[] {
  const out: { type: number; payload: Buffer }[] = [];
  let off = 0;
  while (off < msg.length) {
    if (msg.length - off < 5) throw new DerpError('truncated frame header');
    const len = msg.readUInt32BE(off + 1);
    if (len > MAX_PAYLOAD) throw new DerpError(`frame of ${len} bytes is over ${MAX_PAYLOAD}`);
    if (msg.length - off - 5 < len) throw new DerpError('truncated frame');
    out.push({ type: msg[off]!, payload: msg.subarray(off + 5, off + 5 + len) });
    off += 5 + len;
  }
  return out;
}

export function serverKeyFrame(serverPublicKey: Buffer): Buffer {
  return encode(FrameType.ServerKey, Buffer.concat([MAGIC, serverPublicKey]));
}

export function parseServerKey(payload: Buffer): Buffer {
  if (payload.length < 40 || !payload.subarray(0, 8).equals(MAGIC)) throw new DerpError('not a DERP server key frame');
  return Buffer.from(payload.subarray(8, 40));
}

/** ClientInfo: client public key ‖ 24-byte nonce ‖ box(JSON, nonce, server key, client private key). */
export function clientInfoFrame(clientPrivateKey: Buffer, clientPublicKey: Buffer, serverPublicKey: Buffer, info: Record<string, unknown>): Buffer {
  const nonce = nacl.randomBytes(24);
  const box = nacl.box(Buffer.from(JSON.stringify(info)), nonce, serverPublicKey, clientPrivateKey);
  return encode(FrameType.ClientInfo, Buffer.concat([clientPublicKey, nonce, box]));
}

/** Opens a ClientInfo with the server's private key; null when the box does not open (the client does not hold its key). */
export function openClientInfo(payload: Buffer, serverPrivateKey: Buffer): { clientKey: Buffer; info: unknown } | null {
  if (payload.length < 32 + 24 + 16) return null;
  const clientKey = Buffer.from(payload.subarray(0, 32));
  const opened = nacl.box.open(payload.subarray(56), payload.subarray(32, 56), clientKey, serverPrivateKey);
  if (!opened) return null;
  try {
    return { clientKey, info: JSON.parse(Buffer.from(opened).toString('utf8')) as unknown };
  } catch {
    return null;
  }
}

export function keyed(type: number, key: Buffer, packet: Buffer): Buffer {
  return encode(type, Buffer.concat([key, packet]));
}
