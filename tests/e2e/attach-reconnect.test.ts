/**
 * `loom attach` survives a network blip (issue 9 item 14): the real CLI attaches through a TCP
 * proxy to the real server; the proxy is killed (every connection dropped, the port refusing), the
 * weaver writes output meanwhile (typed through a second, direct attach), the proxy comes back on
 * the same port, and the CLI reconnects by itself with a new ticket, prints exactly the output it
 * missed (nothing twice), and keeps taking input.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { CLI_BIN, loomCli, startServer, tempDir, type TestServer } from '../support/server.js';
import { AttachClient, waitUntil } from '../support/attach.js';
import { deleteWeavers, runningWeaver } from '../security/team.js';

/** A TCP proxy that can be killed and brought back on the same port. */
class Proxy {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  port = 0;
  constructor(private readonly target: { host: string; port: number }) {}
  async start(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((r, j) => {
      server.once('error', j);
      server.listen(this.port, '127.0.0.1', () => r());
    });
    this.port = (server.address() as { port: number }).port;
    this.server = server;
  }
  /** Drops every connection at once and stops listening (connections are refused). */
  async kill(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server = null;
  }
  get connections(): number {
    return this.sockets.size;
  }
}

let srv: TestServer;
let token: string;

t.before(async () => {
  srv = await startServer();
  token = await srv.token('alice');
});
t.teardown(async () => {
  if (srv) {
    await deleteWeavers(srv, [token]);
    await srv.stop();
  }
});

t.test('loom attach reconnects after the connection drops and replays what it missed', async (t) => {
  const w = await runningWeaver(srv, token, {});
  const u = new URL(srv.url);
  const proxy = new Proxy({ host: u.hostname, port: Number(u.port) });
  await proxy.start();
  t.teardown(() => proxy.kill());
  const proxyUrl = `http://127.0.0.1:${proxy.port}`;
  const cfg = tempDir();
  const login = await loomCli({ url: proxyUrl }, cfg)(['login', '--token', token]);
  t.equal(login.code, 0, login.stderr);

  const cli = spawn(process.execPath, [CLI_BIN, 'attach', w.id], {
    env: { ...process.env, LOOM_SERVER_URL: proxyUrl, LOOM_CONFIG_DIR: cfg, LOOM_ATTACH_RECONNECT_SECS: '120' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    if (cli.exitCode === null) cli.kill();
  });
  let out = '';
  let err = '';
  cli.stdout.on('data', (c: Buffer) => (out += c.toString()));
  cli.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((r) => cli.on('exit', (c) => r(c)));
  const until = (re: RegExp, what: string) => waitUntil(async () => re.test(out), `${what}; stdout: ${JSON.stringify(out.slice(-400))}; stderr: ${JSON.stringify(err)}`);

  cli.stdin.write('echo one-$((1+1))\n');
  await until(/one-2/, 'first output through the proxy');

  await proxy.kill();
  await waitUntil(async () => /connection lost; reconnecting/.test(err), 'the CLI noticing the drop');

  // The weaver writes while the CLI is away (typed through a direct attach to the server).
  const direct = await AttachClient.connect(srv.url, w.id, { token });
  const mark = direct.output.length;
  direct.send('echo missed-$((3*3))\n');
  await direct.waitFor(/missed-9/, 15_000, mark);
  await direct.close();

  await proxy.start(); // same port
  await until(/missed-9/, 'the missed output replayed after reconnecting');
  t.match(err, /reconnected/, 'the CLI says it reconnected');
  t.equal(out.match(/one-2/g)?.length, 1, 'output from before the drop is not printed twice');
  t.equal(out.match(/missed-9/g)?.length, 1, 'the missed output is printed once');

  cli.stdin.write('echo after-$((4+4))\n');
  await until(/after-8/, 'input after reconnecting');
  cli.stdin.end(); // piped input ended: the CLI detaches
  t.equal(await exited, 0, 'the CLI detached and exited 0');
  t.equal((await srv.api<{ status: string }>('GET', `/api/weaver/${w.id}`, token)).body.status, 'running', 'the weaver kept running');
});

t.test('loom attach does not reconnect when its token is revoked', async (t) => {
  const w = await runningWeaver(srv, token, {});
  const x = await srv.api<{ token: string; id: string }>('POST', '/api/tokens', token, { name: 'attach-revoke' });
  const cfg = tempDir();
  t.equal((await loomCli(srv, cfg)(['login', '--token', x.body.token])).code, 0);
  const cli = spawn(process.execPath, [CLI_BIN, 'attach', w.id], { env: { ...process.env, LOOM_SERVER_URL: srv.url, LOOM_CONFIG_DIR: cfg }, stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (cli.exitCode === null) cli.kill();
  });
  let out = '';
  let err = '';
  cli.stdout.on('data', (c: Buffer) => (out += c.toString()));
  cli.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((r) => cli.on('exit', (c) => r(c)));
  cli.stdin.write('echo hi-$((5+5))\n');
  await waitUntil(async () => /hi-10/.test(out), 'attached');
  t.equal((await srv.api('DELETE', `/api/tokens/${x.body.id}`, token)).status, 204);
  const code = await exited;
  t.equal(code, 1, 'exit 1: the session was ended, not finished');
  t.match(err, /loom: the server ended the session: .*revoked/, 'told why, in one line');
  t.notMatch(err, /reconnecting/, 'no reconnect attempt');
});
