/**
 * Outbound network of local weavers (issue 17 item 3), through the real server, runc and
 * slirp4netns. "The internet" is another network namespace the test makes, joined to the host by a
 * veth pair, with an HTTP server on a public-looking (TEST-NET-2) address. A weaver reaches it,
 * resolves names through slirp's DNS, and does not reach: the host's loopback (slirp's 10.0.2.2),
 * a private address the test listens on, nor the host's own address on the veth. The operator's
 * allowed list opens the private address; the loopback mode has no outbound network at all.
 */
import t from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { randomBytes, randomInt } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { startServer, type TestServer } from '../support/server.js';
import { createRunning } from '../support/weavers.js';
import { waitUntil } from '../support/attach.js';

type Weaver = { id: string; status: string; reason?: string };
type Exec = { exit_code: number; stdout: string; stderr: string };

const missing = ['slirp4netns', 'nft', 'ip', 'nsenter'].filter((b) => {
  try {
    execFileSync('sh', ['-c', `command -v ${b}`], { stdio: 'ignore' });
    return false;
  } catch {
    return true;
  }
});
if (process.getuid?.() !== 0 || missing.length) {
  const why = process.getuid?.() !== 0 ? 'needs root (network namespaces)' : `missing ${missing.join(', ')} (scripts/apt-packages.txt)`;
  if (process.env['CI'] === 'true') t.fail(why);
  else t.plan(0, why);
} else {
  const tag = randomBytes(3).toString('hex');
  const ns = `loom-inet-${tag}`;
  const vHost = `lih${tag}`;
  const vNet = `lin${tag}`;
  const base = 4 * randomInt(0, 63);
  const hostIp = `198.51.100.${base + 1}`;
  const inetIp = `198.51.100.${base + 2}`;
  const privateIp = `10.${randomInt(100, 250)}.${randomInt(0, 255)}.${randomInt(2, 250)}`;
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const children: ChildProcess[] = [];
  const servers: Server[] = [];

  // Teardown first: whatever got made is removed even when a step below fails.
  t.teardown(async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const s of servers) s.close();
    try {
      ip('link', 'del', vHost);
    } catch {
      /* not made */
    }
    try {
      ip('netns', 'del', ns);
    } catch {
      /* not made */
    }
  });

  ip('netns', 'add', ns);
  ip('link', 'add', vHost, 'type', 'veth', 'peer', 'name', vNet);
  ip('link', 'set', vNet, 'netns', ns);
  ip('addr', 'add', `${hostIp}/30`, 'dev', vHost);
  ip('addr', 'add', `${privateIp}/32`, 'dev', vHost);
  ip('link', 'set', vHost, 'up');
  ip('-n', ns, 'addr', 'add', `${inetIp}/30`, 'dev', vNet);
  ip('-n', ns, 'link', 'set', vNet, 'up');
  ip('-n', ns, 'link', 'set', 'lo', 'up');

  /** An HTTP server answering `body`, in this process (host network namespace). */
  async function hostServer(host: string, body: string): Promise<number> {
    const s = createServer((_q, r) => r.end(body));
    servers.push(s);
    s.listen(0, host);
    await once(s, 'listening');
    return (s.address() as AddressInfo).port;
  }

  /** The "internet" server: node in the other namespace, answering "from-the-internet". */
  async function internetServer(): Promise<number> {
    const code = `const s=require('http').createServer((q,r)=>r.end('from-the-internet'));s.listen(0,${JSON.stringify(inetIp)},()=>console.log(s.address().port));`;
    const c = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(c);
    const [line] = (await once(c.stdout!, 'data')) as [Buffer];
    return Number(line.toString().trim());
  }

  const running = (srv: TestServer, tok: string) => createRunning<Weaver>(srv, tok);

  async function exec(srv: TestServer, tok: string, id: string, command: string[]): Promise<Exec> {
    const r = await srv.api<Exec>('POST', `/api/weaver/${id}/exec`, tok, { command, timeout_secs: 30 });
    if (r.status !== 200) throw new Error(`exec: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }
  const fetchIn = (srv: TestServer, tok: string, id: string, url: string) => exec(srv, tok, id, ['wget', '-O', '-', url]);

  t.test('slirp4netns (the default): the internet yes, the host and private ranges no, DNS works', async (t) => {
    const inetPort = await internetServer();
    const loopPort = await hostServer('127.0.0.1', 'host-loopback');
    const privPort = await hostServer(privateIp, 'private-address');
    const ownPort = await hostServer(hostIp, 'host-own-address');
    const srv = await startServer({ t });
    const tok = await srv.token(`net-${tag}`);
    const w = await running(srv, tok);
    // The host itself reaches all of them (so a refusal below is the weaver's network, not a dead server).
    for (const [h, p] of [[inetIp, inetPort], ['127.0.0.1', loopPort], [privateIp, privPort], [hostIp, ownPort]] as const) {
      t.equal(await (await fetch(`http://${h}:${p}/`)).text().catch(() => null) !== null, true, `host reaches ${h}:${p}`);
    }
    const inet = await fetchIn(srv, tok, w.id, `http://${inetIp}:${inetPort}/`);
    if (inet.exit_code !== 0) t.comment((await exec(srv, tok, w.id, ['sh', '-c', 'cat /proc/net/route; cat /proc/net/dev; cat /etc/resolv.conf'])).stdout);
    t.equal(inet.exit_code, 0, `the internet is reachable: ${inet.stderr}`);
    t.equal(inet.stdout, 'from-the-internet');
    for (const [what, url] of [
      ['the host loopback through slirp', `http://10.0.2.2:${loopPort}/`],
      ['a private address of the host', `http://${privateIp}:${privPort}/`],
      ["the host's own address on the veth", `http://${hostIp}:${ownPort}/`],
    ] as const) {
      const r = await fetchIn(srv, tok, w.id, url);
      t.not(r.exit_code, 0, `${what} is not reachable`);
      t.notMatch(r.stdout, /host-loopback|private-address|host-own-address/, `${what}: nothing came back`);
    }
    // 127.0.0.1 inside is the weaver's own loopback, never the host's.
    const lo = await fetchIn(srv, tok, w.id, `http://127.0.0.1:${loopPort}/`);
    t.not(lo.exit_code, 0, "127.0.0.1 inside is the weaver's own");
    t.notMatch(lo.stdout, /host-loopback/);
    // DNS: slirp's resolver answers (NXDOMAIN for a reserved name; no internet needed).
    const dns = await exec(srv, tok, w.id, ['nslookup', `loom-${tag}.invalid`]);
    t.match(dns.stdout + dns.stderr, /NXDOMAIN|can't find/, `the resolver answered: ${dns.stdout}${dns.stderr}`);
    t.notMatch(dns.stdout + dns.stderr, /timed out|no servers/, 'not a timeout');
    // The weaver cannot take its firewall down (no CAP_NET_ADMIN, even as root inside).
    const flush = await exec(srv, tok, w.id, ['sh', '-c', 'cat /proc/self/status | grep CapEff']);
    t.match(flush.stdout, /CapEff:\s*0+\n?$/, 'the weaver user holds no capabilities');
    // slirp4netns goes with the weaver.
    const slirpPid = Number(readFileSync(join(srv.dataDir, 'local/weavers', w.id, 'hooks/outbound/slirp.pid'), 'utf8'));
    t.equal(readFileSync(`/proc/${slirpPid}/comm`, 'utf8').trim(), 'slirp4netns', 'slirp4netns serves the weaver');
    t.equal((await srv.api('DELETE', `/api/weaver/${w.id}`, tok)).status, 204);
    await waitUntil(async () => (existsSync(`/proc/${slirpPid}`) ? null : true), 'slirp4netns gone with the weaver');
  });

  t.test('slirp4netns ends with the weaver even while loom-server is down', async (t) => {
    const srv = await startServer({ t });
    const tok = await srv.token(`net-${tag}`);
    const w = await running(srv, tok);
    const slirpPid = Number(readFileSync(join(srv.dataDir, 'local/weavers', w.id, 'hooks/outbound/slirp.pid'), 'utf8'));
    t.ok(existsSync(`/proc/${slirpPid}`), 'slirp4netns runs');
    srv.proc.kill('SIGKILL');
    await once(srv.proc, 'exit');
    // The weaver dies with nobody to run its teardown hooks.
    execFileSync('runc', ['--root', join(srv.dataDir, 'local/runc'), 'kill', w.id, 'KILL']);
    await waitUntil(async () => (existsSync(`/proc/${slirpPid}`) ? null : true), 'slirp4netns gone with its weaver', 30_000);
    t.pass('slirp4netns exited when the weaver\'s init did');
  });

  t.test('the operator allows a private range', async (t) => {
    const privPort = await hostServer(privateIp, 'private-address');
    const srv = await startServer({ t, env: { LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS: `${privateIp}/32` } });
    const tok = await srv.token(`net-${tag}`);
    const w = await running(srv, tok);
    const r = await fetchIn(srv, tok, w.id, `http://${privateIp}:${privPort}/`);
    t.equal(r.exit_code, 0, `allowed: ${r.stderr}`);
    t.equal(r.stdout, 'private-address');
    const loop = await hostServer('127.0.0.1', 'host-loopback');
    const l = await fetchIn(srv, tok, w.id, `http://10.0.2.2:${loop}/`);
    t.not(l.exit_code, 0, 'the host loopback stays closed');
  });

  t.test('loopback mode: no way out', async (t) => {
    const inetPort = await internetServer();
    const srv = await startServer({ t, env: { LOOM_SERVER_WEAVER_NETWORK: 'loopback' } });
    const tok = await srv.token(`net-${tag}`);
    const w = await running(srv, tok);
    const r = await fetchIn(srv, tok, w.id, `http://${inetIp}:${inetPort}/`);
    t.not(r.exit_code, 0);
    t.notMatch(r.stdout, /from-the-internet/);
    const links = await exec(srv, tok, w.id, ['cat', '/proc/net/dev']);
    t.notMatch(links.stdout, /tap0/, 'no tap0');
  });
}
