/**
 * The CLI with its output piped (issue 9 items 10 and 12): a reader that goes away (`| head -1`)
 * ends it quietly, and `weaver ps` shows no lifetime counting down for weavers that already ended.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { CLI_BIN, loomCli, startServer, tempDir, type TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { deleteWeavers } from '../security/team.js';

let srv: TestServer;
let token: string;
let cfg: string;

t.before(async () => {
  srv = await startServer();
  token = await srv.token('alice');
  cfg = tempDir();
  const r = await loomCli(srv, cfg)(['login', '--token', token]);
  if (r.code !== 0) throw new Error(r.stderr);
});
t.teardown(async () => {
  if (srv) {
    await deleteWeavers(srv, [token]);
    await srv.stop();
  }
});

/** Runs the CLI with stdout a pipe whose reading end is closed before the CLI writes anything. */
function runIntoClosedPipe(args: string[]): Promise<{ code: number | null; signal: string | null; stderr: string }> {
  const child = spawn(process.execPath, [CLI_BIN, ...args], { env: { ...process.env, LOOM_SERVER_URL: srv.url, LOOM_CONFIG_DIR: cfg }, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.destroy();
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stderr })));
}

t.test('a closed pipe (`loom weaver ps | head -1`) ends the CLI quietly', async (t) => {
  // Enough weavers that the listing is several writes.
  for (let i = 0; i < 3; i++) t.equal((await srv.api('POST', '/api/weaver', token, { command: ['sleep', '600'] })).status, 202);
  for (const args of [['weaver', 'ps'], ['weaver', 'ps', '--json'], ['org', 'list'], ['whoami']]) {
    const r = await runIntoClosedPipe(args);
    t.equal(r.stderr, '', `loom ${args.join(' ')}: nothing on stderr (no EPIPE stack trace)`);
    t.equal(r.code, 0, `loom ${args.join(' ')}: exit 0`);
  }
});

t.test('weaver ps: no TTL countdown for a weaver that already ended', async (t) => {
  const w = await srv.api<{ id: string }>('POST', '/api/weaver', token, { command: ['true'] });
  await waitUntil(async () => (await srv.api<{ status: string }>('GET', `/api/weaver/${w.body.id}`, token)).body.status === 'succeeded', 'weaver ended');
  const ps = await loomCli(srv, cfg)(['weaver', 'ps']);
  t.equal(ps.code, 0);
  const row = ps.stdout.split('\n').find((l) => l.startsWith(w.body.id));
  t.ok(row, 'listed');
  const cells = row!.trim().split(/\s{2,}/);
  t.equal(cells[2], 'succeeded (exited with code 0)');
  t.equal(cells[4], '-', 'TTL column is "-" for an ended weaver');
  const live = ps.stdout.split('\n').filter((l) => / running /.test(l) || / pending /.test(l));
  t.ok(live.length >= 1, 'live weavers are listed');
  for (const l of live) t.match(l.trim().split(/\s{2,}/)[4], /^\d+h\d+m$/, 'live weavers still show their TTL');
});
