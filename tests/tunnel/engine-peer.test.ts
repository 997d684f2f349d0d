/**
 * Two of our engines back to back over an in-memory transport: cookie replies under load,
 * keepalives, bad input refused, close. (Interop with wireguard-go is engine-interop.test.ts.)
 */
import t from 'tap';
import { once } from 'node:events';
import { generateKeyPair, WgPeer, type WgPeerOptions } from '../../src/tunnel/engine/index.js';
import { icmp6Echo, randomUla } from './engine-helpers.js';
import { tai64n } from '../../src/tunnel/engine/noise.js';

interface Pair {
  a: WgPeer;
  b: WgPeer;
  aSent: Buffer[];
  bSent: Buffer[];
}

/** a ⇄ b, each datagram delivered on a later tick (as a socket would), from sources "a" and "b". */
function pair(t: { teardown(fn: () => void): void }, a: Partial<WgPeerOptions> = {}, b: Partial<WgPeerOptions> = {}): Pair {
  const ka = generateKeyPair();
  const kb = generateKeyPair();
  const aSent: Buffer[] = [];
  const bSent: Buffer[] = [];
  const pa: WgPeer = new WgPeer({
    privateKey: ka.privateKey, peerPublicKey: kb.publicKey, persistentKeepaliveSeconds: 0, ...a,
    send: (d) => { aSent.push(d); setImmediate(() => pb.input(d, 'a')); },
  });
  const pb: WgPeer = new WgPeer({
    privateKey: kb.privateKey, peerPublicKey: ka.publicKey, persistentKeepaliveSeconds: 0, ...b,
    send: (d) => { bSent.push(d); setImmediate(() => pa.input(d, 'b')); },
  });
  t.teardown(() => { pa.close(); pb.close(); });
  return { a: pa, b: pb, aSent, bSent };
}

const { ours, theirs } = randomUla();
const echo = (seq: number) => icmp6Echo(ours.bytes, theirs.bytes, 128, 1, seq, Buffer.from(`payload ${seq}`));

t.test('engine to engine: handshake, data both ways, responder waits for key confirmation', async (t) => {
  const p = pair(t);
  const got = once(p.b, 'packet');
  p.a.write(echo(1));
  const [ip] = (await got) as [Buffer];
  t.same(ip, echo(1), 'the exact packet, padding removed');
  t.same(p.aSent.map((d) => d[0]), [1, 4], 'initiation, then the queued packet');
  t.same(p.bSent.map((d) => d[0]), [2], 'response');
  const back = once(p.a, 'packet');
  p.b.write(echo(2));
  t.same(((await back) as [Buffer])[0], echo(2));
  t.ok(p.a.stats().lastHandshakeAt && p.b.stats().lastHandshakeAt);
});

t.test('under load the responder answers with a cookie; the retry carries mac2 and succeeds', async (t) => {
  const p = pair(t, {}, { underLoad: () => true });
  const handshake = once(p.a, 'handshake');
  // The engine's timers never hold the process open (its transport does); stand in for that here.
  const alive = setInterval(() => {}, 1000);
  t.teardown(() => clearInterval(alive));
  p.a.write(echo(1));
  await handshake; // after REKEY_TIMEOUT the initiator retries with the cookie's mac2
  t.equal(p.bSent[0]![0], 3, 'first answer was a cookie reply');
  t.equal(p.bSent[0]!.length, 64);
  t.same(p.aSent[0]!.subarray(132), Buffer.alloc(16), 'first initiation: no mac2');
  const retry = p.aSent[1]!;
  t.equal(retry[0], 1);
  t.notSame(retry.subarray(132), Buffer.alloc(16), 'the retry carries mac2');
  t.equal(p.bSent[1]![0], 2, 'and gets a response');
});

t.test('persistent keepalive: an idle initiator sends empty data messages', async (t) => {
  const p = pair(t, { persistentKeepaliveSeconds: 1 });
  const got = once(p.b, 'packet');
  p.a.write(echo(1));
  await got;
  const n = p.aSent.length;
  await new Promise<void>((resolve) => {
    const check = setInterval(() => {
      if (p.aSent.length > n) { clearInterval(check); resolve(); }
    }, 50);
  });
  const ka = p.aSent[n]!;
  t.equal(ka[0], 4);
  t.equal(ka.length, 32, 'a keepalive is a 16-byte header and an empty sealed payload');
});

t.test('bad input is refused with a clear error and changes nothing', async (t) => {
  const k = generateKeyPair();
  const send = () => {};
  t.throws(() => new WgPeer({ privateKey: Buffer.alloc(31), peerPublicKey: k.publicKey, send }), /privateKey must be a 32-byte Buffer/);
  t.throws(() => new WgPeer({ privateKey: k.privateKey, peerPublicKey: Buffer.alloc(32), send }), /X25519 failed/, 'low-order peer key');
  t.throws(() => new WgPeer({ privateKey: k.privateKey, peerPublicKey: k.publicKey, presharedKey: Buffer.alloc(8), send }), /presharedKey/);
  t.throws(() => new WgPeer({ privateKey: k.privateKey, peerPublicKey: k.publicKey, persistentKeepaliveSeconds: -1, send }), /persistentKeepaliveSeconds/);
  const sent: Buffer[] = [];
  const p = new WgPeer({ privateKey: k.privateKey, peerPublicKey: generateKeyPair().publicKey, send: (d) => sent.push(d) });
  t.throws(() => p.write(Buffer.from('hello, not IP')), /not an IPv4 or IPv6 packet/);
  const short = echo(1).subarray(0, 50);
  t.throws(() => p.write(short), /not an IPv4 or IPv6 packet/, 'length field beyond the buffer');
  for (const junk of [Buffer.alloc(0), Buffer.alloc(148, 1), Buffer.from([1, 0, 0, 0]), Buffer.alloc(200)]) p.input(junk);
  t.equal(sent.length, 0, 'nothing answered junk');
  t.same(p.stats(), { lastHandshakeAt: null, txBytes: 0, rxBytes: 0 });
  p.close();
  t.throws(() => p.write(echo(1)), /closed/);
  p.input(echo(1)); // ignored after close
});

t.test('a replayed initiation (old timestamp) is not answered again', async (t) => {
  const p = pair(t);
  const got = once(p.b, 'packet');
  p.a.write(echo(1));
  await got;
  const responses = p.bSent.filter((d) => d[0] === 2).length;
  // Past the 50-a-second flood limit, so only the timestamp check can refuse it.
  await new Promise((r) => setTimeout(r, 25));
  p.b.input(p.aSent[0]!, 'a'); // the same initiation again
  t.equal(p.bSent.filter((d) => d[0] === 2).length, responses);
});

/** White-box: ages a peer's session and handshake state as if `ms` had passed since the handshake. */
function age(p: WgPeer, ms: number): void {
  const s = p as unknown as {
    current: { createdAt: number } | null; lastInitiationSentAt: number; lastInitiationConsumedAt: number; greatestTimestamp: Buffer | null;
  };
  if (s.current) s.current.createdAt -= ms;
  s.lastInitiationSentAt -= ms;
  s.lastInitiationConsumedAt -= ms;
  if (s.greatestTimestamp) s.greatestTimestamp = tai64n(Date.now() - ms);
}

t.test('REKEY_AFTER_TIME: the initiator starts a new handshake when sending on a 120 s old session', async (t) => {
  const p = pair(t);
  const first = once(p.b, 'packet');
  p.a.write(echo(1));
  await first;
  age(p.a, 121_000);
  age(p.b, 121_000);
  const rekeyed = once(p.a, 'handshake');
  const got = once(p.b, 'packet');
  p.a.write(echo(2)); // still sent on the old session, then a rekey starts
  await got;
  await rekeyed;
  t.same(p.aSent.map((d) => d[0]), [1, 4, 4, 1, 4], 'data on the old keys, a new initiation, keepalive on the new keys');
  const back = once(p.a, 'packet');
  p.b.write(echo(3));
  t.same(((await back) as [Buffer])[0], echo(3), 'the responder sends on the new session');
});

t.test('REJECT_AFTER_TIME: a 180 s old session is neither used nor accepted', async (t) => {
  const p = pair(t);
  const first = once(p.b, 'packet');
  p.a.write(echo(1));
  await first;
  // b's session is older than REJECT_AFTER_TIME: a's next data on it is dropped by b.
  age(p.b, 181_000);
  let delivered = 0;
  p.b.on('packet', () => delivered++);
  const sent = p.aSent.length;
  p.a.write(echo(2));
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  t.equal(p.aSent.length, sent + 1, 'a sent it');
  t.equal(delivered, 0, 'b dropped it');
  // b will not send on it either: its packet is queued and a handshake starts.
  const got = once(p.a, 'packet');
  p.b.write(echo(3));
  t.equal(p.bSent[p.bSent.length - 1]![0], 1, 'b initiated instead of sending data');
  t.same(((await got) as [Buffer])[0], echo(3), 'and delivered the queued packet on the new session');
});
