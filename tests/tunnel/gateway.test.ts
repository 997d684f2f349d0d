/**
 * The weaver side of a tunnel end to end, with real parts: a real weaver (runc) whose network
 * namespace gets wireguard-go from the tunnel hook, loom-server's UDP gateway on a veth address,
 * and a client in its own network namespace (wireguard-go as the peer until our engine lands)
 * that registers a device, opens a session and pings the weaver's kernel through the tunnel.
 * Then: the weaver namespace holds only lo and the WireGuard interface; another org gets 404, a
 * plain member 403; a kill -9 of loom-server leaves the tunnel working after the restart; revoking
 * the device removes the peer; deleting the weaver stops its endpoint.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, tempDir } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { makeTeam, runningWeaver, deleteWeavers } from '../security/team.js';
import { clientNetns, prerequisites, sh } from './netns.js';

type Session = { id: string; client_address: string; weaver_address: string; weaver_public_key: string; endpoints: string[]; relay_url: string | null; keepalive_seconds: number };
type Err = { error: { code: string; message: string } };

const missing = prerequisites();
if (missing && process.env['CI'] === 'true') t.fail(`prerequisite missing in CI: ${missing}`);

t.test('a client reaches the weaver kernel through the gateway; access, revocation and deletion', { skip: missing ?? false }, async (t) => {
  const ns = clientNetns(t);
  // Loopback mode: the weaver is loopback-only apart from the tunnel. (In the default outbound mode
  // slirp's tap0 is there too; tests/tunnel/session.test.ts and relay.test.ts run in that mode.)
  const env = { LOOM_TUNNEL_UDP_ADDR: `${ns.hostIp}:0`, LOOM_SERVER_WEAVER_NETWORK: 'loopback' };
  const first = await startServer({ t, keepData: true, env });
  let srv = first;
  const team = await makeTeam(srv);
  t.teardown(() => deleteWeavers(srv, [team.tokens.owner, team.tokens.member]));
  const w = await runningWeaver(srv, team.tokens.member, { org_id: team.orgId, image: 'loom/default:latest', command: ['/bin/sleep', '1000'] });

  // The client's device key: private half stays here, the server gets the public half.
  const priv = sh('wg', ['genkey']).trim();
  const pub = sh('wg', ['pubkey'], priv).trim();
  const dev = await srv.api<{ id: string; name: string; public_key: string }>('POST', '/api/wg/devices', team.tokens.member, { name: 'laptop', public_key: pub });
  t.equal(dev.status, 201);
  t.notOk(JSON.stringify(dev.body).includes(priv));

  // Who may open a session: the weaver's owner and org admins; a plain member of the org 403, others 404.
  const otherKey = sh('wg', ['pubkey'], sh('wg', ['genkey'])).trim();
  for (const who of ['other_member', 'outsider', 'removed'] as const) {
    const d = await srv.api('POST', '/api/wg/devices', team.tokens[who], { name: 'mine', public_key: who === 'other_member' ? otherKey : sh('wg', ['pubkey'], sh('wg', ['genkey'])).trim() });
    t.equal(d.status, 201, `${who} registers a device`);
    const s = await srv.api<Err>('POST', '/api/wg/sessions', team.tokens[who], { weaver_id: w.id, device: 'mine' });
    t.equal(s.status, who === 'other_member' ? 403 : 404, `${who}: ${s.body.error?.code}`);
  }
  t.equal((await srv.api('POST', '/api/wg/sessions', team.tokens.revoked, { weaver_id: w.id, device: 'laptop' })).status, 401, 'revoked token');
  // Someone else's device name is not yours.
  const notMine = await srv.api<Err>('POST', '/api/wg/sessions', team.tokens.owner, { weaver_id: w.id, device: 'laptop' });
  t.equal(notMine.status, 404);
  t.equal(notMine.body.error.code, 'device_not_found');

  const sess = await srv.api<Session>('POST', '/api/wg/sessions', team.tokens.member, { weaver_id: w.id, device: 'laptop' });
  t.equal(sess.status, 201, JSON.stringify(sess.body));
  const s = sess.body;
  t.match(s.client_address, /^fd[0-9a-f]{2}:/, 'ULA address');
  t.equal(s.client_address.split(':').slice(0, 4).join(':'), s.weaver_address.split(':').slice(0, 4).join(':'), 'same /64');
  t.equal(s.keepalive_seconds, 25);
  t.equal(s.relay_url, `${srv.url.replace('http', 'ws')}/api/wg/relay?session=${s.id}`, 'the relay of this session');
  t.same(s.endpoints.length, 1);
  const port = Number(s.endpoints[0]!.split(':').pop());
  t.equal(s.endpoints[0], `${ns.hostIp}:${port}`);
  // The same device again gets the same session.
  const again = await srv.api<Session>('POST', '/api/wg/sessions', team.tokens.member, { weaver_id: w.id, device: dev.body.id });
  t.equal(again.body.id, s.id);
  t.equal(again.body.client_address, s.client_address);

  // The weaver's namespace: lo and the WireGuard interface, nothing else.
  const wgPid = Number(sh('sh', ['-c', `cat ${srv.dataDir}/weavers/${w.id}/hooks/tunnel/wireguard-go.pid 2>/dev/null || find ${srv.dataDir} -path '*${w.id}*/hooks/tunnel/wireguard-go.pid' -exec cat {} \\;`]).trim());
  t.ok(wgPid > 0, 'wireguard-go runs for the weaver');
  const links = sh('nsenter', [`--net=/proc/${wgPid}/ns/net`, '--', 'ip', '-o', 'link']).trim().split('\n').map((l) => l.split(': ')[1]!.split('@')[0]);
  t.same(links.sort(), ['lo', `lw${w.id.replace(/-/g, '').slice(0, 12)}`].sort(), 'only lo and the wireguard interface');
  const iface = links.find((l) => l !== 'lo')!;
  t.same(sh('wg', ['show', iface, 'peers']).trim().split('\n'), [pub], 'the device is the one peer');
  t.equal(sh('wg', ['show', iface, 'public-key']).trim(), s.weaver_public_key);

  // The client: wireguard-go in the client namespace, configured from the session.
  const cif = `lwk${randomBytes(3).toString('hex')}`;
  const client = ns.spawn('wireguard-go', ['-f', cif], { LOG_LEVEL: 'error' });
  t.teardown(() => {
    // SIGTERM: wireguard-go removes its control socket (/var/run/wireguard/<if>.sock) on the way out.
    if (client.exitCode === null && client.signalCode === null) client.kill('SIGTERM');
  });
  await waitUntil(async () => {
    try {
      sh('wg', ['show', cif]);
      return true;
    } catch {
      return null;
    }
  }, 'client wireguard-go up');
  const keyFile = join(tempDir('loom-wgkey-'), 'key');
  writeFileSync(keyFile, priv, { mode: 0o600 });
  sh('wg', ['set', cif, 'private-key', keyFile, 'peer', s.weaver_public_key, 'endpoint', s.endpoints[0]!, 'allowed-ips', `${s.weaver_address}/128`, 'persistent-keepalive', '25']);
  ns.exec('ip', ['-6', 'addr', 'add', `${s.client_address}/128`, 'dev', cif, 'nodad']);
  ns.exec('ip', ['link', 'set', cif, 'up']);
  ns.exec('ip', ['-6', 'route', 'add', `${s.weaver_address}/128`, 'dev', cif]);
  // ping -w waits up to its deadline for one reply (a condition, not a timing assertion).
  const ping = ns.exec('ping', ['-6', '-c', '1', '-w', '20', s.weaver_address]);
  t.match(ping, /1 received/, 'the weaver kernel answers through the tunnel');
  t.match(sh('wg', ['show', cif, 'latest-handshakes']), new RegExp(`${s.weaver_public_key.replace(/[+/]/g, '\\$&')}\\t[1-9]`), 'handshake done');
  t.match(sh('wg', ['show', iface, 'endpoints']), new RegExp(`${pub.replace(/[+/]/g, '\\$&')}\\t127\\.0\\.0\\.1:\\d+`), 'the weaver sees the gateway forwarder on its loopback');

  // kill -9 of loom-server: the weaver's wireguard-go keeps running; after the restart the
  // session is still there and the tunnel works again through the new gateway socket.
  await first.stop('SIGKILL');
  process.kill(wgPid, 0);
  t.pass('wireguard-go outlived the server');
  srv = await startServer({ t, dataDir: first.dataDir, env });
  const after = (await srv.api<{ sessions: Session[] }>('GET', '/api/wg/sessions', team.tokens.member)).body.sessions;
  t.same(after.map((x) => [x.id, x.client_address, x.weaver_public_key]), [[s.id, s.client_address, s.weaver_public_key]], 'the session survived the restart');
  sh('wg', ['set', cif, 'peer', s.weaver_public_key, 'endpoint', after[0]!.endpoints[0]!]);
  t.match(ns.exec('ping', ['-6', '-c', '1', '-w', '30', s.weaver_address]), /1 received/, 'the tunnel works after the restart');

  // Revoking the device cuts it off at the weaver: the peer is gone, and so is the session.
  t.equal((await srv.api('DELETE', `/api/wg/devices/${dev.body.id}`, team.tokens.owner)).status, 404, 'not your device');
  t.equal((await srv.api('DELETE', `/api/wg/devices/${dev.body.id}`, team.tokens.member)).status, 204);
  t.equal(sh('wg', ['show', iface, 'peers']).trim(), '', 'peer removed');
  t.same((await srv.api<{ sessions: unknown[] }>('GET', '/api/wg/sessions', team.tokens.member)).body.sessions, []);
  const denied = ns.exec('sh', ['-c', `ping -6 -c 1 -w 2 ${s.weaver_address} || true`]);
  t.match(denied, /0 received/, 'no answer once revoked');

  // A new device, a new session; deleting the weaver stops its endpoint and ends the session.
  const priv2 = sh('wg', ['genkey']).trim();
  await srv.api('POST', '/api/wg/devices', team.tokens.member, { name: 'laptop2', public_key: sh('wg', ['pubkey'], priv2).trim() });
  t.equal((await srv.api('POST', '/api/wg/sessions', team.tokens.member, { weaver_id: w.id, device: 'laptop2' })).status, 201);
  t.equal((await srv.api('DELETE', `/api/weaver/${w.id}`, team.tokens.member)).status, 204);
  await waitUntil(async () => {
    try {
      process.kill(wgPid, 0);
      return null;
    } catch {
      return true;
    }
  }, 'wireguard-go gone with the weaver');
  await waitUntil(async () => ((await srv.api<{ sessions: unknown[] }>('GET', '/api/wg/sessions', team.tokens.member)).body.sessions.length === 0 ? true : null), 'sessions gone');
  const gone = await srv.api<Err>('POST', '/api/wg/sessions', team.tokens.member, { weaver_id: w.id, device: 'laptop2' });
  t.equal(gone.status, 404);
});
