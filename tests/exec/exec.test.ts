/**
 * Exec in weavers end to end: the real loom-server on the local backend (runc under conmon, real
 * containers), driven through the package's LoomClient (WebSocket and one-shot POST).
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { startServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { LoomClient, ForbiddenError, NotFoundError, BadRequestError, ConflictError, type ExecSession } from '../../src/client/index.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function drain(s: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s as AsyncIterable<Buffer>) parts.push(c);
  return Buffer.concat(parts);
}

/** Live (not zombie) processes in the weaver whose command line matches `re`. */
async function live(loom: LoomClient, id: string, re: RegExp): Promise<string[]> {
  const r = await loom.exec(id, ['ps', '-o', 'stat,args']);
  return r.stdout.split('\n').filter((l) => re.test(l) && !/^\s*Z/.test(l) && !/ps -o/.test(l));
}

t.test('exec in a running local weaver', async (t) => {
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_EXEC_OUTPUT_MAX_BYTES: '4096' } });
  const aliceTok = await srv.token('alice');
  const bobTok = await srv.token('bob');
  const malloryTok = await srv.token('mallory');
  const alice = new LoomClient({ serverUrl: srv.url, token: aliceTok });
  const bob = new LoomClient({ serverUrl: srv.url, token: bobTok });
  const mallory = new LoomClient({ serverUrl: srv.url, token: malloryTok });
  t.teardown(async () => {
    for (const w of await alice.listWeavers().catch(() => [])) await alice.deleteWeaver(w.id).catch(() => undefined);
    await srv.stop();
  });

  // A team org where bob is a plain member; alice's weaver lives there.
  const team = await alice.post<{ id: string }>('/api/orgs', { name: `team-${randomBytes(3).toString('hex')}` });
  await alice.post(`/api/orgs/${team.id}/members`, { username: 'bob' });
  const adamTok = await srv.token('adam');
  await alice.post(`/api/orgs/${team.id}/members`, { username: 'adam', role: 'admin' });
  const adam = new LoomClient({ serverUrl: srv.url, token: adamTok });
  const created = await alice.createWeaver({ org_id: team.id, env: { FROM_WEAVER: 'w' } });
  const w = await alice.waitUntilRunning(created.id);
  const id = w.id;

  await t.test('exit codes pass through (0, 1, 137 when killed), stdout and stderr apart', async (t) => {
    const ok = await alice.exec(id, ['sh', '-c', 'echo to-out; echo to-err >&2']);
    t.same([ok.exit_code, ok.stdout, ok.stderr, ok.truncated], [0, 'to-out\n', 'to-err\n', false]);
    t.equal((await alice.exec(id, ['false'])).exit_code, 1);
    t.equal((await alice.exec(id, ['sh', '-c', 'exit 42'])).exit_code, 42);
    t.equal((await alice.exec(id, ['sh', '-c', 'kill -9 $$'])).exit_code, 137, 'SIGKILL is 128+9');
    const who = await alice.exec(id, ['id', '-u']);
    t.equal(who.stdout.trim(), '1000', "runs as the weaver's user, not root");
    const env = await alice.exec(id, ['sh', '-c', 'echo $FROM_WEAVER $EXTRA; pwd'], { env: { EXTRA: 'x y' }, cwd: '/tmp' });
    t.equal(env.stdout, 'w x y\n/tmp\n', "the weaver's env plus the request's, in the asked cwd");
    const argv = await alice.exec(id, ['echo', '$(id)', ';', 'rm -rf /']);
    t.equal(argv.stdout, '$(id) ; rm -rf /\n', 'argv is never interpreted by a shell');
    const nf = await alice.exec(id, ['/no/such/binary']);
    t.equal(nf.exit_code, 127, 'a missing command is 127');
    t.match(nf.error, /no such file|not found/i);
    const timed = await alice.exec(id, ['sleep', '1000'], { timeoutSecs: 1 });
    t.same([timed.exit_code, timed.timed_out], [137, true], 'the timeout kills the process');
    const big = await alice.exec(id, ['sh', '-c', 'yes | head -c 100000']);
    t.equal(big.exit_code, 0);
    t.equal(big.truncated, true, 'output over the cap is truncated');
    t.equal(big.stdout.length, 4096, 'exactly the cap is kept');
    const fed = await alice.exec(id, ['cat'], { stdin: 'fed through POST' });
    t.equal(fed.stdout, 'fed through POST');
  });

  await t.test('50 MB on each stream arrive separate and complete over the WebSocket', async (t) => {
    const n = 50 * 1024 * 1024;
    const s = await alice.execStream(id, ['sh', '-c', `yes o | head -c ${n} & yes e | head -c ${n} >&2; wait`], { stdin: false });
    const [out, err, code] = await Promise.all([drain(s.stdout), drain(s.stderr), s.exit]);
    t.equal(code, 0);
    t.equal(out.length, n, 'all of stdout');
    t.equal(err.length, n, 'all of stderr');
    t.equal(sha(out), sha(Buffer.from('o\n'.repeat(n / 2))), 'stdout holds only stdout');
    t.equal(sha(err), sha(Buffer.from('e\n'.repeat(n / 2))), 'stderr holds only stderr');
  });

  await t.test('stdin streamed to cat round-trips byte for byte', async (t) => {
    const data = randomBytes(8 * 1024 * 1024);
    const s = await alice.execStream(id, ['cat']);
    const outP = drain(s.stdout);
    for (let i = 0; i < data.length; i += 100_000) {
      if (!s.write(data.subarray(i, i + 100_000))) await s.drained();
    }
    s.end();
    t.equal(await s.exit, 0);
    t.equal(sha(await outP), sha(data));
  });

  await t.test('a tty exec gets the size it asked for and follows a resize', async (t) => {
    const s = await alice.execStream(id, ['sh', '-c', 'stty size; read x; stty size; tty'], { tty: true, cols: 91, rows: 31 });
    let text = '';
    s.stdout.on('data', (b: Buffer) => (text += b.toString('utf8')));
    await waitUntil(async () => /31 91/.test(text), 'initial size');
    s.resize(123, 45);
    s.write('go\r');
    t.equal(await s.exit, 0);
    t.match(text, /45 123/, 'stty size after resize');
    t.match(text, /\/dev\/pts\/\d+/, 'a real terminal');
    t.equal((await drain(s.stderr)).length, 0, 'a tty has no separate stderr');
  });

  await t.test('a client disconnect kills the process and its children: nothing left in the weaver', async (t) => {
    const s: ExecSession = await alice.execStream(id, ['sh', '-c', 'sleep 31337 & sleep 31338 & wait'], { stdin: false });
    await waitUntil(async () => (await live(alice, id, /^\s*\S+\s+sleep 3133[78]$/)).length === 2 || null, 'both sleeps running');
    s.close();
    await waitUntil(async () => (await live(alice, id, /sleep 3133[78]/)).length === 0 || null, 'no process left');
    t.pass('every process of the exec is gone');
    await t.rejects(s.exit, /closed without an exit status/, 'the client learns it disconnected');
  });

  await t.test('access: owner yes, plain member 403, another org 404, bad input 400', async (t) => {
    t.equal((await adam.exec(id, ['true'])).exit_code, 0, 'an org admin may exec in a member\'s weaver');
    await t.rejects(bob.exec(id, ['true']), ForbiddenError, 'a plain member may not exec in the owner\'s weaver');
    await t.rejects(bob.execStream(id, ['true']), ForbiddenError, 'nor over the WebSocket');
    await t.rejects(mallory.exec(id, ['true']), NotFoundError, "another org's user gets 404");
    await t.rejects(mallory.execStream(id, ['true']), NotFoundError);
    await t.rejects(new LoomClient({ serverUrl: srv.url, token: 'loom_nope' }).execStream(id, ['true']), /invalid|token/i);
    for (const body of [{ command: 'ls -la' }, { command: [] }, { command: [''] }, { command: ['ls'], cwd: 'tmp' }, { command: ['ls'], env: { 'A-B': 'x' } }, { command: ['ls'], tty: true }, { command: ['ls'], timeout_secs: 0 }, { command: ['ls'], extra: 1 }]) {
      await t.rejects(alice.post(`/api/weaver/${id}/exec`, body), BadRequestError, `refused: ${JSON.stringify(body)}`);
    }
  });

  await t.test('a bad start frame over the WebSocket is an error message, not a process', async (t) => {
    const s = await alice.execStream(id, ['ls'], { cwd: 'relative' });
    await t.rejects(s.exit, { code: 'bad_cwd' });
  });

  await t.test('revoking the token that opened an exec closes the stream and kills the process', async (t) => {
    const extra = await alice.post<{ id: string; token: string }>('/api/tokens', { name: `exec-${randomBytes(3).toString('hex')}` });
    const viaExtra = new LoomClient({ serverUrl: srv.url, token: extra.token });
    const s = await viaExtra.execStream(id, ['sleep', '31339'], { stdin: false });
    await waitUntil(async () => (await live(alice, id, /sleep 31339/)).length === 1 || null, 'sleep running');
    await alice.delete(`/api/tokens/${extra.id}`);
    await t.rejects(s.exit, { code: 'credential_revoked' });
    await waitUntil(async () => (await live(alice, id, /sleep 31339/)).length === 0 || null, 'sleep gone');
    t.pass('the process went with the credential');
  });

  await t.test('a weaver that is no longer running refuses exec with 409', async (t) => {
    const done = await alice.createWeaver({ command: ['true'] });
    await waitUntil(async () => (await alice.getWeaver(done.id)).status === 'succeeded' || null, 'weaver exited');
    await t.rejects(alice.exec(done.id, ['true']), ConflictError);
    await t.rejects(alice.execStream(done.id, ['true']), ConflictError);
  });
});
