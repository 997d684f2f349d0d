// One WireGuard peer: handshakes (either role), transport data, replay window and the timers of
// whitepaper §6, over any datagram transport the caller provides.
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { wgCrypto } from './native.js';
import {
  addMacs, consumeCookieReply, consumeInitiation, consumeResponse, createCookieReply, createInitiation,
  createResponse, type Identity, type InitiatorState, makeIdentity, mac1Valid, mac2Valid,
  COOKIE_REPLY_LEN, DATA_HEADER_LEN, INITIATION_LEN, KEEPALIVE_LEN, MSG_COOKIE_REPLY, MSG_DATA, MSG_INITIATION,
  MSG_RESPONSE, RESPONSE_LEN,
} from './noise.js';
import { ReplayWindow } from './replay.js';
import {
  COOKIE_SECRET_MAX_AGE_MS, INITIATIONS_PER_SECOND, KEEPALIVE_TIMEOUT_MS, MAX_STAGED_PACKETS, MAX_TIMER_HANDSHAKES,
  REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME_MS, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME_MS, REKEY_TIMEOUT_MS, Timer, jitterMs,
} from './timers.js';

export interface WgPeerOptions {
  privateKey: Buffer;
  peerPublicKey: Buffer;
  presharedKey?: Buffer;
  /** Seconds between keepalives when nothing else is sent; 0 turns them off. Default 25. */
  persistentKeepaliveSeconds?: number;
  /** Carries a datagram to the peer (UDP socket, relay, …). */
  send(datagram: Buffer): void;
  /** When it returns true, handshake messages need a valid mac2 and get a cookie reply otherwise. */
  underLoad?(): boolean;
}

export interface WgPeerStats {
  lastHandshakeAt: number | null;
  txBytes: number;
  rxBytes: number;
}

interface Keypair {
  sendKey: Buffer;
  recvKey: Buffer;
  localIndex: number;
  remoteIndex: number;
  sendCounter: number;
  replay: ReplayWindow;
  createdAt: number;
  isInitiator: boolean;
}

const EMPTY = Buffer.alloc(0);

function newIndex(): number {
  return randomBytes(4).readUInt32LE(0);
}

/** The IP packet inside a decrypted payload, without WireGuard's padding; null if malformed. */
function ipPacket(p: Buffer): Buffer | null {
  if (p.length < 1) return null;
  const version = p[0]! >> 4;
  let len: number;
  if (version === 4 && p.length >= 20) len = p.readUInt16BE(2);
  else if (version === 6 && p.length >= 40) len = 40 + p.readUInt16BE(4);
  else return null;
  return len <= p.length && len >= (version === 4 ? 20 : 40) ? p.subarray(0, len) : null;
}

export class WgPeer extends EventEmitter {
  private readonly id: Identity;
  private readonly sendDatagram: (d: Buffer) => void;
  private readonly underLoad: () => boolean;
  private readonly keepaliveMs: number;
  private current: Keypair | null = null;
  private previous: Keypair | null = null;
  private next: Keypair | null = null;
  private handshake: InitiatorState | null = null;
  private lastMac1: { index: number; mac1: Buffer } | null = null;
  private cookie: { value: Buffer; at: number } | null = null;
  private cookieSecret: { value: Buffer; at: number } | null = null;
  private lastInitiationSentAt = -Infinity;
  private lastInitiationConsumedAt = -Infinity;
  private greatestTimestamp: Buffer | null = null;
  private handshakeAttempts = 0;
  private sentLastMinuteHandshake = false;
  private needAnotherKeepalive = false;
  private staged: Buffer[] = [];
  private lastHandshakeAt: number | null = null;
  private txBytes = 0;
  private rxBytes = 0;
  private closed = false;
  private readonly retransmitHandshake = new Timer(() => this.onRetransmitHandshake());
  private readonly sendKeepaliveTimer = new Timer(() => this.onSendKeepalive());
  private readonly newHandshakeTimer = new Timer(() => this.initiateHandshake(false));
  private readonly zeroKeysTimer = new Timer(() => this.zeroKeys());
  private readonly persistentKeepaliveTimer = new Timer(() => this.sendKeepalive());

  constructor(o: WgPeerOptions) {
    super();
    for (const [name, v, len] of [['privateKey', o.privateKey, 32], ['peerPublicKey', o.peerPublicKey, 32], ['presharedKey', o.presharedKey ?? Buffer.alloc(32), 32]] as const) {
      if (!Buffer.isBuffer(v) || v.length !== len) throw new TypeError(`${name} must be a ${len}-byte Buffer`);
    }
    const ka = o.persistentKeepaliveSeconds ?? 25;
    if (!Number.isInteger(ka) || ka < 0 || ka > 65535) throw new TypeError('persistentKeepaliveSeconds must be an integer 0..65535');
    if (typeof o.send !== 'function') throw new TypeError('send must be a function');
    this.id = makeIdentity(Buffer.from(o.privateKey), Buffer.from(o.peerPublicKey), o.presharedKey && Buffer.from(o.presharedKey));
    this.sendDatagram = o.send;
    this.underLoad = o.underLoad ?? (() => false);
    this.keepaliveMs = ka * 1000;
  }

  /** A datagram from the transport. `source` (e.g. "ip:port") binds cookies to the sender. */
  input(datagram: Buffer, source = ''): void {
    if (!Buffer.isBuffer(datagram)) throw new TypeError('datagram must be a Buffer');
    if (this.closed || datagram.length < 4) return;
    switch (datagram.readUInt32LE(0)) {
      case MSG_INITIATION:
        if (datagram.length === INITIATION_LEN) this.onInitiation(datagram, source);
        return;
      case MSG_RESPONSE:
        if (datagram.length === RESPONSE_LEN) this.onResponse(datagram, source);
        return;
      case MSG_COOKIE_REPLY:
        if (datagram.length === COOKIE_REPLY_LEN) this.onCookieReply(datagram);
        return;
      case MSG_DATA:
        if (datagram.length >= KEEPALIVE_LEN) this.onData(datagram);
        return;
      default:
        return; // not WireGuard: dropped
    }
  }

  /** An IP packet to carry to the peer; starts a handshake (and queues the packet) when needed. */
  write(ip: Buffer): void {
    if (!Buffer.isBuffer(ip)) throw new TypeError('ipPacket must be a Buffer');
    if (this.closed) throw new Error('WireGuard peer is closed');
    if (!ipPacket(ip)) throw new TypeError('not an IPv4 or IPv6 packet');
    const kp = this.current;
    if (!kp || !this.usableForSending(kp)) {
      this.stage(ip);
      this.initiateHandshake(false);
      return;
    }
    this.sendData(kp, ip);
  }

  stats(): WgPeerStats {
    return { lastHandshakeAt: this.lastHandshakeAt, txBytes: this.txBytes, rxBytes: this.rxBytes };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of [this.retransmitHandshake, this.sendKeepaliveTimer, this.newHandshakeTimer, this.zeroKeysTimer, this.persistentKeepaliveTimer]) t.del();
    this.zeroKeys();
    this.id.privateKey.fill(0);
    this.id.staticStatic.fill(0);
    this.id.presharedKey.fill(0);
  }

  // --- handshake ---------------------------------------------------------------------------

  private initiateHandshake(isRetry: boolean): void {
    if (this.closed) return;
    const now = Date.now();
    if (!isRetry) {
      // One initiation per REKEY_TIMEOUT; the retransmit timer takes it from there.
      if (now - this.lastInitiationSentAt < REKEY_TIMEOUT_MS) return;
      this.handshakeAttempts = 0;
    }
    this.lastInitiationSentAt = now;
    const { message, state } = createInitiation(this.id, newIndex(), now);
    this.handshake = state;
    this.lastMac1 = { index: state.localIndex, mac1: addMacs(message, this.id.mac1KeyPeer, this.validCookie()) };
    this.transmit(message);
    this.anyAuthenticatedPacketSent();
    this.retransmitHandshake.mod(REKEY_TIMEOUT_MS + jitterMs());
  }

  private onRetransmitHandshake(): void {
    if (this.handshakeAttempts >= MAX_TIMER_HANDSHAKES) {
      // REKEY_ATTEMPT_TIME passed without an answer: give up until there is something to send.
      this.staged = [];
      this.handshake = null;
      this.lastInitiationSentAt = -Infinity;
      if (!this.zeroKeysTimer.pending) this.zeroKeysTimer.mod(REJECT_AFTER_TIME_MS * 3);
      this.fail(new Error(`handshake did not complete after ${MAX_TIMER_HANDSHAKES + 1} attempts`));
      return;
    }
    this.handshakeAttempts++;
    this.initiateHandshake(true);
  }

  /** mac1 must be right; under load mac2 must be too, or the sender gets a cookie reply. */
  private handshakeMacsOk(msg: Buffer, source: string): boolean {
    if (!mac1Valid(msg, this.id.mac1KeyOurs)) return false;
    if (!this.underLoad()) return true;
    const cookie = this.cookieFor(source);
    if (mac2Valid(msg, cookie)) return true;
    const n = msg.length;
    const reply = createCookieReply(this.id, msg.readUInt32LE(4), cookie, msg.subarray(n - 32, n - 16));
    this.transmit(reply);
    return false;
  }

  /** The cookie for a sender: keyed BLAKE2s of its address under a secret rotated every 2 minutes. */
  private cookieFor(source: string): Buffer {
    const now = Date.now();
    if (!this.cookieSecret || now - this.cookieSecret.at > COOKIE_SECRET_MAX_AGE_MS) {
      this.cookieSecret = { value: randomBytes(32), at: now };
    }
    return wgCrypto().mac(this.cookieSecret.value, Buffer.from(source), 16);
  }

  private validCookie(): Buffer | null {
    return this.cookie && Date.now() - this.cookie.at < COOKIE_SECRET_MAX_AGE_MS ? this.cookie.value : null;
  }

  private onInitiation(msg: Buffer, source: string): void {
    if (!this.handshakeMacsOk(msg, source)) return;
    const init = consumeInitiation(this.id, msg);
    if (!init) return;
    const now = Date.now();
    // A replayed initiation carries an old timestamp; a flood comes faster than 50 a second.
    if (this.greatestTimestamp && Buffer.compare(init.timestamp, this.greatestTimestamp) <= 0) return;
    if (now - this.lastInitiationConsumedAt < 1000 / INITIATIONS_PER_SECOND) return;
    this.greatestTimestamp = init.timestamp;
    this.lastInitiationConsumedAt = now;
    const localIndex = newIndex();
    const { message, keys } = createResponse(this.id, init, localIndex);
    this.lastMac1 = { index: localIndex, mac1: addMacs(message, this.id.mac1KeyPeer, this.validCookie()) };
    // The responder may not send with these keys until the initiator has used them (key confirmation).
    this.next = { ...keys, localIndex, remoteIndex: init.remoteIndex, sendCounter: 0, replay: new ReplayWindow(), createdAt: now, isInitiator: false };
    this.previous = null;
    this.sessionDerived();
    this.rxBytes += msg.length;
    this.transmit(message);
    this.anyAuthenticatedPacketSent();
  }

  private onResponse(msg: Buffer, source: string): void {
    if (!this.handshake || !this.handshakeMacsOk(msg, source)) return;
    const r = consumeResponse(this.id, this.handshake, msg);
    if (!r) return;
    const now = Date.now();
    const kp: Keypair = { ...r.keys, localIndex: this.handshake.localIndex, remoteIndex: r.remoteIndex, sendCounter: 0, replay: new ReplayWindow(), createdAt: now, isInitiator: true };
    this.handshake = null;
    if (this.next) {
      this.previous = this.next;
      this.next = null;
    } else {
      this.previous = this.current;
    }
    this.current = kp;
    this.rxBytes += msg.length;
    this.sessionDerived();
    this.handshakeComplete();
    this.anyAuthenticatedPacketReceived();
    // Confirm the keys to the responder: the queued packets, or else a keepalive.
    if (this.staged.length) this.flushStaged();
    else this.sendData(kp, EMPTY);
  }

  private onCookieReply(msg: Buffer): void {
    const last = this.lastMac1;
    if (!last || msg.readUInt32LE(4) !== last.index) return;
    const cookie = consumeCookieReply(this.id, msg, last.mac1);
    if (cookie) this.cookie = { value: cookie, at: Date.now() };
  }

  // --- transport data ----------------------------------------------------------------------

  private onData(msg: Buffer): void {
    const index = msg.readUInt32LE(4);
    const kp = [this.current, this.previous, this.next].find((k) => k && k.localIndex === index);
    if (!kp) return;
    const now = Date.now();
    if (now - kp.createdAt > REJECT_AFTER_TIME_MS) return;
    const hi = msg.readUInt32LE(12);
    if (hi >= 0x200000) return; // beyond 2^53: never reached within REJECT_AFTER_TIME
    const counter = hi * 0x100000000 + msg.readUInt32LE(8);
    const plain = wgCrypto().aeadOpen(kp.recvKey, counter, msg.subarray(DATA_HEADER_LEN));
    if (!plain) return; // wrong key or tampered: dropped
    if (!kp.replay.accept(counter, REJECT_AFTER_MESSAGES)) return; // replayed: dropped
    this.rxBytes += msg.length;
    if (kp === this.next) {
      this.previous = this.current;
      this.current = kp;
      this.next = null;
      this.handshakeComplete();
      if (this.staged.length) this.flushStaged();
    }
    this.anyAuthenticatedPacketReceived();
    this.keepKeyFreshReceiving();
    if (plain.length === 0) return; // a keepalive
    if (!this.sendKeepaliveTimer.pending) this.sendKeepaliveTimer.mod(KEEPALIVE_TIMEOUT_MS);
    else this.needAnotherKeepalive = true;
    const ip = ipPacket(plain);
    if (ip) this.emit('packet', ip);
  }

  private usableForSending(kp: Keypair): boolean {
    return Date.now() - kp.createdAt < REJECT_AFTER_TIME_MS && kp.sendCounter < REJECT_AFTER_MESSAGES;
  }

  private sendData(kp: Keypair, payload: Buffer): void {
    const counter = kp.sendCounter++;
    const msg = wgCrypto().aeadSeal(kp.sendKey, counter, payload, null, DATA_HEADER_LEN, 16);
    msg.writeUInt32LE(MSG_DATA, 0);
    msg.writeUInt32LE(kp.remoteIndex, 4);
    msg.writeUInt32LE(counter % 0x100000000, 8);
    msg.writeUInt32LE(Math.floor(counter / 0x100000000), 12);
    this.transmit(msg);
    if (payload.length && !this.newHandshakeTimer.pending) {
      // No authenticated answer within KEEPALIVE + REKEY_TIMEOUT: the session is presumed dead.
      this.newHandshakeTimer.mod(KEEPALIVE_TIMEOUT_MS + REKEY_TIMEOUT_MS + jitterMs());
    }
    this.anyAuthenticatedPacketSent();
    // Keep the key fresh: the initiator rekeys after REKEY_AFTER_TIME, anyone after REKEY_AFTER_MESSAGES.
    if (kp.sendCounter > REKEY_AFTER_MESSAGES || (kp.isInitiator && Date.now() - kp.createdAt > REKEY_AFTER_TIME_MS)) {
      this.initiateHandshake(false);
    }
  }

  private keepKeyFreshReceiving(): void {
    const kp = this.current;
    if (!kp || !kp.isInitiator || this.sentLastMinuteHandshake) return;
    if (Date.now() - kp.createdAt > REJECT_AFTER_TIME_MS - KEEPALIVE_TIMEOUT_MS - REKEY_TIMEOUT_MS) {
      this.sentLastMinuteHandshake = true;
      this.initiateHandshake(false);
    }
  }

  private stage(ip: Buffer): void {
    this.staged.push(Buffer.from(ip));
    if (this.staged.length > MAX_STAGED_PACKETS) this.staged.shift();
  }

  private flushStaged(): void {
    const kp = this.current;
    if (!kp) return;
    const packets = this.staged;
    this.staged = [];
    for (const p of packets) this.sendData(kp, p);
  }

  private sendKeepalive(): void {
    if (this.closed) return;
    const kp = this.current;
    if (kp && this.usableForSending(kp)) this.sendData(kp, EMPTY);
    else this.initiateHandshake(false);
  }

  private onSendKeepalive(): void {
    this.sendKeepalive();
    if (this.needAnotherKeepalive) {
      this.needAnotherKeepalive = false;
      this.sendKeepaliveTimer.mod(KEEPALIVE_TIMEOUT_MS);
    }
  }

  // --- timer events (wireguard-go's timers.go) ------------------------------------------------

  private handshakeComplete(): void {
    this.retransmitHandshake.del();
    this.handshakeAttempts = 0;
    this.sentLastMinuteHandshake = false;
    this.lastHandshakeAt = Date.now();
    this.emit('handshake');
  }

  private sessionDerived(): void {
    this.zeroKeysTimer.mod(REJECT_AFTER_TIME_MS * 3);
  }

  private anyAuthenticatedPacketSent(): void {
    this.sendKeepaliveTimer.del();
    this.traversal();
  }

  private anyAuthenticatedPacketReceived(): void {
    this.newHandshakeTimer.del();
    this.traversal();
  }

  private traversal(): void {
    if (this.keepaliveMs > 0) this.persistentKeepaliveTimer.mod(this.keepaliveMs);
  }

  private zeroKeys(): void {
    for (const kp of [this.current, this.previous, this.next]) {
      kp?.sendKey.fill(0);
      kp?.recvKey.fill(0);
    }
    this.current = this.previous = this.next = null;
    if (this.handshake) this.handshake.ephemeralPrivate.fill(0);
    this.handshake = null;
  }

  private transmit(datagram: Buffer): void {
    this.txBytes += datagram.length;
    try {
      this.sendDatagram(datagram);
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  /** 'error' only reaches listeners: a missing listener must not crash a long-lived client. */
  private fail(e: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', e);
  }
}
