/**
 * Live interop of our WireGuard engine with Debian's wireguard-go, which serves a TUN interface in
 * a network namespace linked to ours by a veth pair: the namespace's kernel answers ICMPv6 echo
 * through the tunnel. Our peer as initiator and as responder (with a preshared key); data both
 * ways; replayed, tampered and wrong-key packets dropped on both sides; an impostor gets no answer.
 */
import t from 'tap';
import { once } from 'node:events';
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { generateKeyPair, WgPeer } from '../../src/tunnel/engine/index.js';
import { wgCrypto } from '../../src/tunnel/engine/native.js';
import {
  icmp6Echo, icmp6InEchos, interopUnavailable, parseIcmp6Echo, skipOrFail, wireguardGoNamespace,
  type ParsedEcho, type Teardown,
} from './engine-helpers.js';

async function udpSocket(t: Teardown, address: string): Promise<Socket> {
  const s = createSocket('udp4');
  t.teardown(() => new Promise<void>((r) => s.close(() => r())));
  s.bind(0, address);
  await once(s, 'listening');
  return s;
}

/** Resolves with the first echo packet from the peer that matches. */
function nextEcho(peer: WgPeer, match: (e: ParsedEcho) => boolean): Promise<ParsedEcho> {
  return new Promise((resolve) => {
    const on = (ip: Buffer) => {
      const e = parseIcmp6Echo(ip);
      if (e && match(e)) {
        peer.off('packet', on);
        resolve(e);
      }
    };
    peer.on('packet', on);
  });
}

const why = interopUnavailable();
if (why) skipOrFail(t, why);
else {
  t.test('our engine initiates to wireguard-go: data both ways, replays and wrong keys dropped', async (t) => {
    const me = generateKeyPair();
    const w = await wireguardGoNamespace(t, { peerPublicKey: me.publicKey });
    const sock = await udpSocket(t, w.hostAddr);
    const sent: Buffer[] = [];
    const received: Buffer[] = [];
    const peer = new WgPeer({
      privateKey: me.privateKey,
      peerPublicKey: w.publicKey,
      persistentKeepaliveSeconds: 0,
      send: (d) => {
        sent.push(Buffer.from(d));
        sock.send(d, w.listenPort, w.nsAddr);
      },
    });
    t.teardown(() => peer.close());
    sock.on('message', (m, r) => {
      received.push(Buffer.from(m));
      peer.input(m, `${r.address}:${r.port}`);
    });
    const { ours, theirs } = w.tunnel;
    const id = randomBytes(2).readUInt16BE(0);
    const ping = (seq: number, data: Buffer) => icmp6Echo(ours.bytes, theirs.bytes, 128, id, seq, data);
    const replyTo = (seq: number) => nextEcho(peer, (e) => e.type === 129 && e.id === id && e.seq === seq);

    t.equal(peer.stats().lastHandshakeAt, null);
    const handshake = once(peer, 'handshake');
    const data1 = randomBytes(1200);
    const r1 = replyTo(1);
    peer.write(ping(1, data1)); // no session yet: queued, a handshake starts
    await handshake;
    const e1 = await r1;
    t.same(e1.src, theirs.bytes, 'answered by the namespace kernel behind wireguard-go');
    t.same(e1.dst, ours.bytes);
    t.same(e1.data, data1, '1200 bytes came back intact');
    t.ok(e1.checksumOk, 'ICMPv6 checksum verifies');
    t.equal(sent[0]!.readUInt32LE(0), 1, 'we sent the handshake initiation');
    t.equal(received[0]!.readUInt32LE(0), 2, 'wireguard-go answered with a response');
    const st = peer.stats();
    t.ok(st.lastHandshakeAt !== null && st.lastHandshakeAt <= Date.now());
    t.ok(st.txBytes > 148 + 1200 && st.rxBytes > 92 + 1200, `bytes counted: ${JSON.stringify(st)}`);
    const hs = w.wg(['show', w.iface, 'latest-handshakes']).trim().split(/\s+/);
    t.equal(hs[0], me.publicKey.toString('base64'));
    t.ok(Number(hs[1]) > 0, 'wireguard-go records the handshake');

    // A replayed data packet is dropped by wireguard-go: the kernel sees exactly two echo requests.
    const before = icmp6InEchos(w);
    const r2 = replyTo(2);
    peer.write(ping(2, Buffer.from('two')));
    await r2;
    const captured = sent[sent.length - 1]!;
    t.equal(captured.readUInt32LE(0), 4, 'captured a transport data message');
    sock.send(captured, w.listenPort, w.nsAddr); // the replay
    const r3 = replyTo(3);
    peer.write(ping(3, Buffer.from('three')));
    await r3;
    t.equal(icmp6InEchos(w) - before, 2, 'the replayed echo request never reached the kernel');

    // Under a wrong key (right index, fresh counter) wireguard-go drops it too.
    const forged = wgCrypto().aeadSeal(randomBytes(32), 1_000_000, ping(4, Buffer.from('forged')), null, 16, 16);
    captured.copy(forged, 0, 0, 8);
    forged.writeUInt32LE(1_000_000, 8);
    sock.send(forged, w.listenPort, w.nsAddr);
    const r5 = replyTo(5);
    peer.write(ping(5, Buffer.from('five')));
    await r5;
    t.equal(icmp6InEchos(w) - before, 3, 'the forged echo request never reached the kernel');

    // Our side: a replayed, a tampered and a wrong-key datagram from "wireguard-go" are dropped.
    const lastIn = received.filter((d) => d.readUInt32LE(0) === 4 && d.length > 32).pop()!;
    let delivered = 0;
    const count = () => delivered++;
    peer.on('packet', count);
    const rx = peer.stats().rxBytes;
    peer.input(Buffer.from(lastIn));
    const tampered = Buffer.from(lastIn);
    tampered[tampered.length - 20]! ^= 0x40;
    tampered.writeUInt32LE(tampered.readUInt32LE(8) + 1000, 8);
    peer.input(tampered);
    const wrongKey = wgCrypto().aeadSeal(randomBytes(32), 5000, ping(9, Buffer.from('x')), null, 16, 16);
    lastIn.copy(wrongKey, 0, 0, 8);
    wrongKey.writeUInt32LE(5000, 8);
    peer.input(wrongKey);
    peer.input(Buffer.from('not wireguard at all'));
    t.equal(delivered, 0, 'nothing delivered');
    t.equal(peer.stats().rxBytes, rx, 'nothing counted');
    // …while the genuine next packet still is.
    const r6 = replyTo(6);
    peer.write(ping(6, Buffer.from('six')));
    await r6;
    t.equal(delivered, 1);
    peer.off('packet', count);
  });

  t.test('an impostor with an unknown key gets no handshake response (until it retries)', async (t) => {
    const me = generateKeyPair();
    const w = await wireguardGoNamespace(t, { peerPublicKey: me.publicKey });
    const sock = await udpSocket(t, w.hostAddr);
    const impostor = generateKeyPair();
    let answers = 0;
    sock.on('message', () => answers++);
    const initiations: Buffer[] = [];
    let second: () => void = () => {};
    const retried = new Promise<void>((r) => (second = r));
    const peer = new WgPeer({
      privateKey: impostor.privateKey,
      peerPublicKey: w.publicKey,
      persistentKeepaliveSeconds: 0,
      send: (d) => {
        initiations.push(d);
        sock.send(d, w.listenPort, w.nsAddr);
        if (initiations.length === 2) second();
      },
    });
    t.teardown(() => peer.close());
    peer.write(icmp6Echo(w.tunnel.ours.bytes, w.tunnel.theirs.bytes, 128, 1, 1, Buffer.from('hi')));
    await retried; // REKEY_TIMEOUT (5 s + jitter) later the engine retransmits
    t.equal(initiations[1]!.readUInt32LE(0), 1, 'the retransmission is a new initiation');
    t.notSame(initiations[0]!.subarray(8, 40), initiations[1]!.subarray(8, 40), 'with a fresh ephemeral key');
    t.equal(answers, 0, 'wireguard-go never answered the unknown key');
    t.equal(peer.stats().lastHandshakeAt, null);
  });

  t.test('wireguard-go initiates, our engine responds (preshared key): ping from the namespace', async (t) => {
    const me = generateKeyPair();
    const psk = randomBytes(32);
    // Our socket first: wireguard-go needs its address as the peer endpoint to initiate.
    const probe = await wireguardGoNamespace(t, { peerPublicKey: me.publicKey, presharedKey: psk });
    const sock = await udpSocket(t, probe.hostAddr);
    const port = sock.address().port;
    probe.wg(['set', probe.iface, 'peer', me.publicKey.toString('base64'), 'endpoint', `${probe.hostAddr}:${port}`]);
    const w = probe;
    const received: number[] = [];
    const peer = new WgPeer({
      privateKey: me.privateKey,
      peerPublicKey: w.publicKey,
      presharedKey: psk,
      persistentKeepaliveSeconds: 0,
      send: (d) => sock.send(d, w.listenPort, w.nsAddr),
    });
    t.teardown(() => peer.close());
    sock.on('message', (m, r) => {
      received.push(m.readUInt32LE(0));
      peer.input(m, `${r.address}:${r.port}`);
    });
    let requests = 0;
    peer.on('packet', (ip: Buffer) => {
      const e = parseIcmp6Echo(ip);
      if (!e || e.type !== 128) return;
      requests++;
      t.ok(e.checksumOk, `echo request ${e.seq} checksum verifies`);
      peer.write(icmp6Echo(e.dst, e.src, 129, e.id, e.seq, e.data));
    });
    const handshake = once(peer, 'handshake');
    const ping = w.spawnIn('ping', ['-6', '-n', '-c', '3', '-i', '0.2', '-W', '10', '-s', '1000', w.tunnel.ours.text]);
    let out = '';
    ping.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const [code] = (await once(ping, 'exit')) as [number | null];
    t.equal(code, 0, `ping through the tunnel succeeded:\n${out}`);
    t.match(out, /3 packets transmitted, 3 received/);
    await handshake;
    t.equal(received[0], 1, 'wireguard-go sent the initiation');
    t.equal(requests, 3, 'three echo requests reached us through the tunnel');

    // And the other way on the same (responder-derived) session.
    const reply = nextEcho(peer, (e) => e.type === 129 && e.seq === 42);
    peer.write(icmp6Echo(w.tunnel.ours.bytes, w.tunnel.theirs.bytes, 128, 7, 42, Buffer.from('from the responder')));
    const e = await reply;
    t.same(e.data, Buffer.from('from the responder'));
  });

  t.test('a wrong preshared key never completes a handshake with wireguard-go', async (t) => {
    const me = generateKeyPair();
    const w = await wireguardGoNamespace(t, { peerPublicKey: me.publicKey, presharedKey: randomBytes(32) });
    const sock = await udpSocket(t, w.hostAddr);
    const types: number[] = [];
    let retried: () => void = () => {};
    const done = new Promise<void>((r) => (retried = r));
    let initiations = 0;
    const peer = new WgPeer({
      privateKey: me.privateKey,
      peerPublicKey: w.publicKey,
      presharedKey: randomBytes(32),
      persistentKeepaliveSeconds: 0,
      send: (d) => {
        sock.send(d, w.listenPort, w.nsAddr);
        if (d.readUInt32LE(0) === 1 && ++initiations === 2) retried();
      },
    });
    t.teardown(() => peer.close());
    sock.on('message', (m) => {
      types.push(m.readUInt32LE(0));
      peer.input(m);
    });
    let handshakes = 0;
    peer.on('handshake', () => handshakes++);
    peer.write(icmp6Echo(w.tunnel.ours.bytes, w.tunnel.theirs.bytes, 128, 1, 1, Buffer.from('hi')));
    await done;
    t.equal(types[0], 2, 'wireguard-go knows our key and responds…');
    t.equal(handshakes, 0, '…but the response does not verify under our preshared key');
    t.equal(peer.stats().lastHandshakeAt, null);
  });
}
