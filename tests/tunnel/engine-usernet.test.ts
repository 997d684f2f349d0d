/**
 * The rootless client: an unprivileged process (uid 65534, no capabilities, no TUN) opens a TCP
 * stream through our engine and UserNet (lwIP) to an echo server listening behind wireguard-go in
 * its namespace; 1 MiB comes back intact; a closed port is refused; a bad host is refused.
 */
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateKeyPair } from '../../src/tunnel/engine/index.js';
import { interopUnavailable, skipOrFail, wireguardGoNamespace } from './engine-helpers.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '..', '..');
const why =
  interopUnavailable() ??
  (existsSync(join(ROOT, 'native/build/Release/loom_usernet.node')) ? null : 'loom_usernet addon not built (apt-get install liblwip-dev, then rebuild native)');
if (why) skipOrFail(t, why);
else
  t.test('an unprivileged client streams TCP through our engine with a userspace TCP/IP stack', async (t) => {
    const me = generateKeyPair();
    const w = await wireguardGoNamespace(t, { peerPublicKey: me.publicKey });
    const port = 20000 + Math.floor(Math.random() * 20000);
    const server = w.spawnIn(process.execPath, ['-e', `require('net').createServer((s) => s.pipe(s)).listen(${port}, '${w.tunnel.theirs.text}', () => console.log('listening'))`]);
    await new Promise<void>((resolve, reject) => {
      let out = '';
      server.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('listening')) resolve();
      });
      server.on('exit', (c) => reject(new Error(`echo server exited ${c}`)));
    });
    const { stdout } = await promisify(execFile)(
      'setpriv',
      ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', '--no-new-privs',
        process.execPath, '--import', 'tsx', join(HERE, 'engine-usernet-client.ts'),
        w.nsAddr, String(w.listenPort), w.publicKey.toString('base64'), me.privateKey.toString('base64'),
        w.tunnel.ours.text, w.tunnel.theirs.text, String(port), String(port + 1)],
      { cwd: ROOT, env: { ...process.env, HOME: '/tmp', TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json') }, timeout: 120_000 },
    );
    const r = JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown> & { stats: { lastHandshakeAt: number | null; rxBytes: number } };
    t.equal(r.uid, 65534, 'the client ran unprivileged');
    t.equal(r.echoedBytes, 1 << 20);
    t.equal(r.echoed, r.sent, '1 MiB echoed intact through the tunnel');
    t.equal(r.refused, 'connection refused', 'a closed port is refused by the far kernel');
    t.match(r.badHost, /not an IPv6 address/);
    t.ok(r.stats.lastHandshakeAt !== null && r.stats.rxBytes > 1 << 20);
  });
