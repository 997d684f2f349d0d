/**
 * Our rootless client end to end through loom-server: the engine (WgPeer + UserNet) running as an
 * unprivileged user in its own namespace, over the CLI's MultipathTransport, into a real weaver's
 * wireguard-go endpoint — 256 KiB echoed by a TCP server in the weaver's namespace, first over
 * direct UDP to the gateway, then with UDP dropped by nftables, through the DERP relay.
 */
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { ROOT, startServer, tempDir } from '../support/server.js';
import { makeTeam, runningWeaver, deleteWeavers } from '../security/team.js';
import { generateKeyPair } from '../../src/tunnel/engine/index.js';
import { clientNetns, prerequisites, sh } from './netns.js';

type Session = { id: string; client_address: string; weaver_address: string; weaver_public_key: string; endpoints: string[]; relay_url: string };
type Result = { uid: number; sent: string; echoed: string; echoedBytes: number; paths: string[]; status: { path: string; rxBytes: { direct: number; relay: number } } };

const missing = prerequisites();
if (missing && process.env['CI'] === 'true') t.fail(`prerequisite missing in CI: ${missing}`);
const CLIENT = fileURLToPath(new URL('./engine-session-client.ts', import.meta.url));

t.test('the engine client, unprivileged, direct and relayed', { skip: missing ?? false }, async (t) => {
  const ns = clientNetns(t);
  const srv = await startServer({ t, env: { LOOM_HTTP_ADDR: `${ns.hostIp}:0`, LOOM_TUNNEL_UDP_ADDR: `${ns.hostIp}:0` } });
  const team = await makeTeam(srv);
  t.teardown(() => deleteWeavers(srv, [team.tokens.member]));
  const w = await runningWeaver(srv, team.tokens.member, { org_id: team.orgId, image: 'loom/default:latest', command: ['/bin/sleep', '1000'] });
  const me = generateKeyPair();
  t.equal((await srv.api('POST', '/api/wg/devices', team.tokens.member, { name: 'laptop', public_key: me.publicKey.toString('base64') })).status, 201);
  const s = (await srv.api<Session>('POST', '/api/wg/sessions', team.tokens.member, { weaver_id: w.id, device: 'laptop' })).body;

  // A TCP echo server in the weaver's network namespace, on its tunnel address.
  const wgPid = Number(sh('sh', ['-c', `find ${srv.dataDir} -path '*${w.id}*/hooks/tunnel/wireguard-go.pid' -exec cat {} \\;`]).trim());
  t.ok(wgPid > 0);
  const port = 20000 + (randomBytes(2).readUInt16BE() % 20000);
  const echo = spawn('nsenter', [`--net=/proc/${wgPid}/ns/net`, '--', process.execPath, '-e', `require('net').createServer((s) => s.pipe(s)).listen(${port}, '${s.weaver_address}', () => console.log('listening'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (echo.exitCode === null) echo.kill();
  });
  await new Promise<void>((resolve, reject) => {
    echo.stdout!.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
    echo.on('exit', (c) => reject(new Error(`echo server exited ${c}`)));
  });

  const runClient = async (): Promise<Result> => {
    const { stdout, stderr } = await promisify(execFile)(
      'ip',
      ['netns', 'exec', ns.name, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', '--no-new-privs',
        process.execPath, '--import', 'tsx', CLIENT, s.endpoints[0]!, s.relay_url, s.weaver_public_key, me.privateKey.toString('base64'), s.client_address, s.weaver_address, String(port)],
      { cwd: ROOT, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: tempDir('loom-home-'), TSX_TSCONFIG_PATH: join(ROOT, 'tsconfig.json'), LOOM_TEST_TOKEN: team.tokens.member }, timeout: 120_000 },
    );
    const last = stdout.trim().split('\n').pop();
    if (!last) throw new Error(`the client printed nothing; stderr: ${stderr}`);
    return JSON.parse(last) as Result;
  };

  const direct = await runClient();
  t.equal(direct.uid, 65534, 'the client ran unprivileged');
  t.equal(direct.echoedBytes, 256 * 1024);
  t.equal(direct.echoed, direct.sent, 'echoed intact over direct UDP');
  t.same(direct.paths, ['direct'], 'direct the whole time');
  t.equal(direct.status.rxBytes.relay, 0);

  const table = `loomtest${randomBytes(3).toString('hex')}`;
  const udpPort = s.endpoints[0]!.split(':').pop()!;
  t.teardown(() => {
    try {
      ns.exec('nft', ['delete', 'table', 'inet', table]);
    } catch {
      /* not made */
    }
  });
  ns.exec('nft', ['-f', '-'], `table inet ${table} {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    udp dport ${udpPort} drop\n  }\n}\n`);
  const relayed = await runClient();
  t.equal(relayed.echoed, relayed.sent, 'echoed intact through the relay');
  t.same(relayed.paths, ['direct', 'relay'], 'fell back to the relay');
  t.ok(relayed.status.rxBytes.relay > 256 * 1024, 'the data came through the relay');
});
