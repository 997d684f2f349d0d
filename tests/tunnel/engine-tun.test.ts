/**
 * TUN mode: our engine joined to a kernel TUN interface carries a TCP stream (1 MiB echoed back)
 * between this process and a TCP echo server listening behind wireguard-go in its namespace.
 * The TUN interface lives while the test's bridge holds it open; closing it removes the interface.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createSocket } from 'node:dgram';
import { execFileSync } from 'node:child_process';
import { connect } from 'node:net';
import { bridgeTun, generateKeyPair, WgPeer } from '../../src/tunnel/engine/index.js';
import { interopUnavailable, skipOrFail, wireguardGoNamespace } from './engine-helpers.js';

const why = interopUnavailable();
if (why) skipOrFail(t, why);
else
  t.test('a TCP stream through our engine (TUN mode) to a server behind wireguard-go', async (t) => {
    const me = generateKeyPair();
    const w = await wireguardGoNamespace(t, { peerPublicKey: me.publicKey });
    const port = 20000 + Math.floor(Math.random() * 20000);
    const server = w.spawnIn(process.execPath, ['-e', `require('net').createServer((s) => s.pipe(s)).listen(${port}, '${w.tunnel.theirs.text}', () => console.log('listening'))`]);
    let serverOut = '';
    await new Promise<void>((resolve, reject) => {
      server.stdout!.on('data', (d: Buffer) => {
        serverOut += d.toString();
        if (serverOut.includes('listening')) resolve();
      });
      server.on('exit', (c) => reject(new Error(`echo server exited ${c}`)));
    });

    const sock = createSocket('udp4');
    t.teardown(() => new Promise<void>((r) => sock.close(() => r())));
    sock.bind(0, w.hostAddr);
    await once(sock, 'listening');
    const peer = new WgPeer({
      privateKey: me.privateKey,
      peerPublicKey: w.publicKey,
      persistentKeepaliveSeconds: 0,
      send: (d) => sock.send(d, w.listenPort, w.nsAddr),
    });
    sock.on('message', (m, r) => peer.input(m, `${r.address}:${r.port}`));
    const tun = `lwt${randomBytes(3).toString('hex')}`;
    const bridge = bridgeTun(tun, peer);
    t.teardown(() => {
      bridge.close();
      peer.close();
    });
    execFileSync('ip', ['addr', 'add', `${w.tunnel.ours.text}/128`, 'dev', tun, 'nodad']);
    execFileSync('ip', ['link', 'set', tun, 'mtu', '1420', 'up']);
    execFileSync('ip', ['route', 'add', `${w.tunnel.theirs.text}/128`, 'dev', tun]);

    const payload = randomBytes(1 << 20);
    const s = connect({ host: w.tunnel.theirs.text, port, localAddress: w.tunnel.ours.text });
    t.teardown(() => s.destroy());
    await once(s, 'connect');
    const chunks: Buffer[] = [];
    let got = 0;
    const done = new Promise<void>((resolve) => {
      s.on('data', (d: Buffer) => {
        chunks.push(d);
        got += d.length;
        if (got >= payload.length) resolve();
      });
    });
    s.write(payload);
    await done;
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    t.equal(sha(Buffer.concat(chunks)), sha(payload), '1 MiB came back intact through the tunnel');
    t.ok(peer.stats().lastHandshakeAt !== null);
    t.ok(peer.stats().rxBytes > payload.length, 'all of it through our engine');
    s.end();
    bridge.close();
    t.throws(() => execFileSync('ip', ['link', 'show', tun], { stdio: 'pipe' }), 'closing the bridge removes the interface');
  });
