/**
 * The relay and path selection with real parts: loom-server on a veth address, a real weaver with
 * its wireguard-go endpoint, and in the client namespace wireguard-go (the stand-in for our engine)
 * whose datagrams go through the CLI's MultipathTransport (bridge.ts). Direct first; UDP dropped
 * with nftables → the DERP relay over WebSocket carries everything; UDP restored → direct again;
 * the relay refuses other people and wrong keys, and dies when the device is revoked.
 */
import t from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { randomBytes } from 'node:crypto';
import { startServer, tempDir } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { makeTeam, runningWeaver, deleteWeavers } from '../security/team.js';
import { DerpClient } from '../../src/tunnel/client/derp-client.js';
import { clientNetns, prerequisites, sh } from './netns.js';

type Session = { id: string; client_address: string; weaver_address: string; weaver_public_key: string; endpoints: string[]; relay_url: string | null };

const missing = prerequisites();
if (missing && process.env['CI'] === 'true') t.fail(`prerequisite missing in CI: ${missing}`);
const BRIDGE = fileURLToPath(new URL('./bridge.ts', import.meta.url));

/** Connects a relay client and resolves with how it ended up: ready, or closed with a code. */
function relayOutcome(url: string, token: string, privateKey: Buffer): Promise<{ ready: boolean; code?: number; reason?: string }> {
  return new Promise((resolve) => {
    const c = new DerpClient({ url, token, privateKey });
    c.once('ready', () => {
      c.removeAllListeners('close');
      c.close();
      resolve({ ready: true });
    });
    c.once('close', (code: number, reason: string) => resolve({ ready: false, code, reason }));
  });
}

t.test('direct, then relay when UDP is dropped, then direct again; relay access', { skip: missing ?? false }, async (t) => {
  const ns = clientNetns(t);
  const srv = await startServer({ t, env: { LOOM_HTTP_ADDR: `${ns.hostIp}:0`, LOOM_TUNNEL_UDP_ADDR: `${ns.hostIp}:0` } });
  const team = await makeTeam(srv);
  t.teardown(() => deleteWeavers(srv, [team.tokens.owner, team.tokens.member]));
  const w = await runningWeaver(srv, team.tokens.member, { org_id: team.orgId, image: 'loom/default:latest', command: ['/bin/sleep', '1000'] });
  const priv = sh('wg', ['genkey']).trim();
  const keyFile = join(tempDir('loom-wgkey-'), 'key');
  writeFileSync(keyFile, priv, { mode: 0o600 });
  t.equal((await srv.api('POST', '/api/wg/devices', team.tokens.member, { name: 'laptop', public_key: sh('wg', ['pubkey'], priv).trim() })).status, 201);
  const s = (await srv.api<Session>('POST', '/api/wg/sessions', team.tokens.member, { weaver_id: w.id, device: 'laptop' })).body;
  t.equal(s.relay_url, `${srv.url.replace('http', 'ws')}/api/wg/relay?session=${s.id}`);

  // Relay access: only the session's user, only with the session device's key.
  const privBuf = Buffer.from(priv, 'base64');
  t.same(await relayOutcome(s.relay_url!, team.tokens.member, privBuf), { ready: true }, 'the owner with the device key');
  for (const who of ['other_member', 'outsider', 'owner'] as const) {
    const r = await relayOutcome(s.relay_url!, team.tokens[who], privBuf);
    t.equal(r.code, 404, `${who}: someone else's session is 404 (${r.reason})`);
  }
  t.equal((await relayOutcome(s.relay_url!, team.tokens.revoked, privBuf)).code, 401, 'revoked token');
  const wrongKey = await relayOutcome(s.relay_url!, team.tokens.member, randomBytes(32));
  t.equal(wrongKey.code, 4403, `a key that is not the device's: ${wrongKey.reason}`);
  t.equal((await relayOutcome(s.relay_url!.replace(s.id, 'nope'), team.tokens.member, privBuf)).code, 404);

  // The bridge (the CLI's transport) in the client namespace, and wireguard-go behind it.
  const bridge = ns.spawn(process.execPath, ['--import', 'tsx', BRIDGE, s.endpoints[0]!, s.relay_url!, keyFile, s.weaver_public_key], { LOOM_TEST_TOKEN: team.tokens.member });
  const lines: Record<string, unknown>[] = [];
  createInterface({ input: bridge.stdout! }).on('line', (l) => lines.push(JSON.parse(l) as Record<string, unknown>));
  let bridgeErr = '';
  bridge.stderr!.on('data', (d: Buffer) => (bridgeErr += d.toString()));
  const started = await waitUntil(async () => lines.find((l) => typeof l['port'] === 'number') ?? (bridge.exitCode !== null ? Promise.reject(new Error(bridgeErr)) : null), 'bridge listening');
  t.equal(started['path'], 'direct', 'direct first');
  const cif = `lwk${randomBytes(3).toString('hex')}`;
  const client = ns.spawn('wireguard-go', ['-f', cif], { LOG_LEVEL: 'error' });
  t.teardown(() => {
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
  sh('wg', ['set', cif, 'private-key', keyFile, 'peer', s.weaver_public_key, 'endpoint', `127.0.0.1:${started['port'] as number}`, 'allowed-ips', `${s.weaver_address}/128`]);
  ns.exec('ip', ['-6', 'addr', 'add', `${s.client_address}/128`, 'dev', cif, 'nodad']);
  ns.exec('ip', ['link', 'set', cif, 'up']);
  ns.exec('ip', ['-6', 'route', 'add', `${s.weaver_address}/128`, 'dev', cif]);
  t.match(ns.exec('ping', ['-6', '-c', '1', '-w', '20', s.weaver_address]), /1 received/, 'direct: the weaver answers');
  t.notOk(lines.some((l) => l['path'] === 'relay'), 'still direct');

  // Drop UDP to the gateway in the client namespace: the transport falls back to the relay.
  const table = `loomtest${randomBytes(3).toString('hex')}`;
  const port = s.endpoints[0]!.split(':').pop()!;
  const blockUdp = `table inet ${table} {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    udp dport ${port} drop\n  }\n}\n`;
  t.teardown(() => {
    try {
      ns.exec('nft', ['delete', 'table', 'inet', table]);
    } catch {
      /* already restored */
    }
  });
  ns.exec('nft', ['-f', '-'], blockUdp);
  // ping -w keeps trying until its deadline: the first replies come once the relay carries them.
  const relayed = ns.exec('sh', ['-c', `ping -6 -c 1 -w 60 ${s.weaver_address} || true`]);
  await waitUntil(async () => (lines.some((l) => l['path'] === 'relay') ? true : null), 'the bridge lines', 5000).catch(() => null);
  t.match(relayed, /1 received/, 'relayed: the weaver answers', { lines, bridgeErr, logs: srv.logs.filter((l) => /tunnel|relay|wireguard/.test(l)).slice(-20) });
  // (ns.exec blocks this process: the bridge's lines are read once it returns)
  await waitUntil(async () => (lines.some((l) => l['path'] === 'relay') ? true : null), 'the transport says relay');
  bridge.kill('SIGUSR1');
  const st1 = (await waitUntil(async () => lines.filter((l) => l['status']).pop() ?? null, 'status')) as { status: { path: string; rxBytes: { relay: number } } };
  t.equal(st1.status.path, 'relay');
  t.ok(st1.status.rxBytes.relay > 0, 'bytes came back through the relay');

  // UDP restored: probes get through and the transport returns to direct.
  ns.exec('nft', ['delete', 'table', 'inet', table]);
  const relayIdx = lines.findIndex((l) => l['path'] === 'relay');
  await waitUntil(async () => {
    ns.exec('sh', ['-c', `ping -6 -c 1 -w 2 ${s.weaver_address} >/dev/null || true`]);
    return lines.slice(relayIdx).some((l) => l['path'] === 'direct') ? true : null;
  }, 'back to direct', 60_000);
  t.match(ns.exec('ping', ['-6', '-c', '1', '-w', '20', s.weaver_address]), /1 received/, 'direct again');

  // Revoking the device closes the relay connection and cuts the tunnel.
  ns.exec('nft', ['-f', '-'], blockUdp);
  await waitUntil(async () => {
    ns.exec('sh', ['-c', `ping -6 -c 1 -w 2 ${s.weaver_address} >/dev/null || true`]);
    return lines.filter((l) => l['path']).pop()?.['path'] === 'relay' ? true : null;
  }, 'on the relay again', 60_000);
  t.equal((await srv.api('DELETE', '/api/wg/devices/laptop', team.tokens.member)).status, 204);
  const closed = await waitUntil(async () => lines.find((l) => typeof l['error'] === 'string') ?? null, 'relay closed by the server');
  t.match(closed['error'], /session_ended|credential|access/, 'the server ended the relay connection');
  t.match(ns.exec('sh', ['-c', `ping -6 -c 1 -w 2 ${s.weaver_address} || true`]), /0 received/, 'no answer once revoked');
});
