/**
 * Weavers end to end on the embedded default: the real loom-server with the local backend
 * (runc under conmon, real containers), driven over HTTP, WebSocket and the real `loom` CLI.
 */
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { CLI_BIN, startServer, freshDataDir, loomCli, mountsUnder, tempDir, type TestServer } from '../support/server.js';
import { AttachClient, waitUntil } from '../support/attach.js';

type Weaver = { id: string; status: string; reason?: string; org_id: string; expires_at: string; image: string };
type Err = { error: { code: string; message: string } };

const PROMPT = /loom@weaver-[0-9a-f]+:[^$]*\$ /;

async function createRunning(srv: TestServer, token: string, body: Record<string, unknown> = {}): Promise<Weaver> {
  const r = await srv.api<Weaver>('POST', '/api/weaver', token, body);
  if (r.status !== 202) throw new Error(`create: ${r.status} ${JSON.stringify(r.body)}`);
  if (r.body.status !== 'pending') throw new Error(`new weaver not pending: ${r.body.status}`);
  return waitUntil(async () => {
    const g = await srv.api<Weaver>('GET', `/api/weaver/${r.body.id}`, token);
    if (g.body.status === 'failed') throw new Error(`weaver failed: ${g.body.reason}`);
    return g.body.status === 'running' ? g.body : null;
  }, 'weaver running', 120_000); // a failure timeout only: the shared machine can be slow
}

/** Every runc container under the server's data dir, for leak checks. */
function containersOf(dataDir: string): string[] {
  try {
    const out = execFileSync('runc', ['--root', `${dataDir}/local/runc`, 'list', '-q'], { encoding: 'utf8' });
    return out.split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

/** Deletes every weaver the tokens see; never throws (a teardown that throws skips the next ones). */
async function deleteAll(srv: TestServer, tokens: string[]): Promise<void> {
  for (const tok of tokens) {
    try {
      for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
    } catch {
      /* server gone: the server's own teardown removes the containers through the runtime */
    }
  }
}

/** The expiry event the server logged for a weaver: when it fired and the deadline it enforced. */
function expiryEvent(srv: TestServer, id: string): { expires_at: string; fired_at: string } | null {
  for (const l of srv.logs) {
    if (!l.includes('weaver lifetime ended') || !l.includes(id)) continue;
    const j = JSON.parse(l) as { weaver?: string; expires_at?: string; fired_at?: string };
    if (j.weaver === id && j.expires_at && j.fired_at) return { expires_at: j.expires_at, fired_at: j.fired_at };
  }
  return null;
}

/** One counter's value in Prometheus text (fails when the series is missing). */
function metric(text: string, name: string): number {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  if (!m) throw new Error(`metric ${name} missing`);
  return Number(m[1]);
}

const shellQuote = (a: string) => `'${a.replace(/'/g, `'\\''`)}'`;

/**
 * `loom attach` on a real pseudo-terminal (util-linux `script`): the CLI sees a tty, puts it in
 * raw mode, and never sees end of input, so only the detach keys (or the program's exit) end it.
 */
function attachOnPty(srv: TestServer, configDir: string, id: string) {
  const cmd = [process.execPath, CLI_BIN, 'attach', id].map(shellQuote).join(' ');
  const child = spawn('script', ['-qfec', cmd, '/dev/null'], {
    env: { ...process.env, LOOM_SERVER_URL: srv.url, LOOM_CONFIG_DIR: configDir, TERM: 'xterm' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  return {
    child,
    exited,
    output: () => out,
    send: (s: string) => child.stdin.write(s),
    waitFor: (re: RegExp, what: string) => waitUntil(async () => re.test(out), `${what}; pty output: ${JSON.stringify(out.slice(-500))}`, 20_000, 50),
  };
}

/** The HTTP status an attach was refused with (fails the test when it was accepted). */
async function refusal(p: Promise<AttachClient>): Promise<number> {
  try {
    const c = await p;
    await c.close();
    return 101;
  } catch (e) {
    return (e as { status?: number }).status ?? -1;
  }
}


t.test('weaver lifecycle over HTTP and WebSocket', async (t) => {
  const srv = await startServer({ t, env: { LOOM_SERVER_WEAVER_MAX_CONCURRENT: '3' } });
  const tok = await srv.token('alice');
  const other = await srv.token('mallory');
  t.teardown(() => deleteAll(srv, [tok, other]));

  const w = await createRunning(srv, tok, { env: { GREETING: 'hello-env' }, tags: { purpose: 'test' } });
  t.equal(w.image, 'loom/default:latest', 'the built-in default image');

  await t.test('attach, type, resize, detach, reattach with scrollback', async (t) => {
    const a = await AttachClient.connect(srv.url, w.id, { token: tok });
    await a.waitFor(PROMPT);
    a.send('echo out-$((6*7)) $GREETING\n');
    await a.waitFor(/out-42 hello-env/);
    a.resize(123, 45);
    const mark = a.output.length;
    a.send('stty size\n');
    await a.waitFor(/45 123/, 10_000, mark);

    // A second client at once sees the same output and replays what came before.
    const b = await AttachClient.connect(srv.url, w.id, { token: tok });
    await b.waitFor(/out-42 hello-env/);
    t.pass('second client got the scrollback');
    a.send('echo both-see-$((1+1))\n');
    await a.waitFor(/both-see-2/);
    await b.waitFor(/both-see-2/);

    await a.close();
    await b.close();
    const still = await srv.api<Weaver>('GET', `/api/weaver/${w.id}`, tok);
    t.equal(still.body.status, 'running', 'detach leaves the weaver running');

    const c = await AttachClient.connect(srv.url, w.id, { token: tok });
    await c.waitFor(/both-see-2/);
    t.pass('reattach replays recent output');
    c.send('echo again-$((2+3))\n');
    await c.waitFor(/again-5/);
    await c.close();
  });

  await t.test('attach auth: header, single-use ticket, and org isolation', async (t) => {
    t.equal(await refusal(AttachClient.connect(srv.url, w.id, {})), 401);
    t.equal(await refusal(AttachClient.connect(srv.url, w.id, { token: other })), 404, "another org's weaver is 404");
    const ticket = await srv.api<{ ticket: string }>('POST', `/api/weaver/${w.id}/attach-ticket`, tok, {});
    t.equal(ticket.status, 200);
    const viaTicket = await AttachClient.connect(srv.url, w.id, { ticket: ticket.body.ticket });
    await viaTicket.waitFor(PROMPT);
    await viaTicket.close();
    t.equal(await refusal(AttachClient.connect(srv.url, w.id, { ticket: ticket.body.ticket })), 401, 'a ticket works once');
    const stolen = await srv.api('POST', `/api/weaver/${w.id}/attach-ticket`, other, {});
    t.equal(stolen.status, 404);
  });

  await t.test("another org's weaver is invisible", async (t) => {
    // Reads first, the delete last, then the owner's weaver must still be there and running.
    t.equal((await srv.api('GET', `/api/weaver/${w.id}`, other)).status, 404);
    t.equal((await srv.api('GET', `/api/weaver/${w.id}/logs`, other)).status, 404);
    const list = await srv.api<{ weavers: Weaver[]; count: number }>('GET', '/api/weavers', other);
    t.equal(list.body.count, 0);
    const aliceOrg = w.org_id;
    const foreign = await srv.api<Err>('POST', '/api/weaver', other, { org_id: aliceOrg });
    t.equal(foreign.status, 404, "creating in another user's org is 404");
    t.equal((await srv.api('DELETE', `/api/weaver/${w.id}`, other)).status, 404);
    const still = await srv.api<Weaver>('GET', `/api/weaver/${w.id}`, tok);
    t.equal(still.body.status, 'running', "the owner's weaver is still there and running");
    t.ok(containersOf(srv.dataDir).includes(w.id), 'its container too');
  });

  await t.test('logs as server-sent events', async (t) => {
    const r = await fetch(`${srv.url}/api/weaver/${w.id}/logs?tail=50`, { headers: { authorization: `Bearer ${tok}` } });
    t.equal(r.status, 200);
    t.match(r.headers.get('content-type'), /text\/event-stream/);
    const text = await r.text();
    t.match(text, /data: .*out-42 hello-env/);
    t.match(text, /event: end/);
    const bad = await srv.api<Err>('GET', `/api/weaver/${w.id}/logs?tail=abc`, tok);
    t.equal(bad.status, 400);
  });

  await t.test('bad input is a clear 400 and creates nothing', async (t) => {
    const before = (await srv.api<{ count: number }>('GET', '/api/weavers', tok)).body.count;
    const cases: [string, Record<string, unknown>, string][] = [
      ['bad env key', { env: { '1BAD': 'x' } }, 'invalid_env'],
      ['env key with =', { env: { 'A=B': 'x' } }, 'invalid_env'],
      ['non-https repo', { repo: 'http://example.com/r.git' }, 'invalid_repo'],
      ['ssh repo', { repo: 'git@github.com:a/b.git' }, 'invalid_repo'],
      ['branch without repo', { branch: 'main' }, 'branch_without_repo'],
      ['TTL over the maximum', { lifetime_hours: 49 }, 'lifetime_too_long'],
      ['negative TTL', { lifetime_hours: -1 }, 'invalid_request'],
      ['malformed image', { image: 'UPPER/Case:!!' }, 'invalid_image'],
      ['unknown field', { imagee: 'x' }, 'invalid_request'],
      ['command as a string', { command: 'sh -c ls' }, 'invalid_request'],
      ['bad memory', { resources: { memory: 'lots' } }, 'invalid_resources'],
    ];
    for (const [what, body, code] of cases) {
      const r = await srv.api<Err>('POST', '/api/weaver', tok, body);
      t.equal(r.status, 400, `${what}: 400`);
      t.equal(r.body.error.code, code, `${what}: ${r.body.error.message}`);
    }
    t.equal((await srv.api<{ count: number }>('GET', '/api/weavers', tok)).body.count, before, 'nothing created');
  });

  await t.test('a bad image fails with a clear reason', async (t) => {
    const r = await srv.api<Weaver>('POST', '/api/weaver', tok, { image: 'no-such-image:1.0' });
    t.equal(r.status, 202);
    const failed = await waitUntil(async () => {
      const g = await srv.api<Weaver>('GET', `/api/weaver/${r.body.id}`, tok);
      return g.body.status === 'failed' ? g.body : null;
    }, 'bad image to fail', 60_000);
    t.match(failed.reason, /no-such-image:1\.0/);
    t.equal((await srv.api('DELETE', `/api/weaver/${r.body.id}`, tok)).status, 204);
  });

  await t.test('a failed clone shows a clear reason in the weaver and the logs', async (t) => {
    const r = await srv.api<Weaver>('POST', '/api/weaver', tok, { repo: 'https://nonexistent.invalid/org/project.git', branch: 'main' });
    t.equal(r.status, 202);
    const failed = await waitUntil(async () => {
      const g = await srv.api<Weaver>('GET', `/api/weaver/${r.body.id}`, tok);
      return g.body.status === 'failed' ? g.body : null;
    }, 'clone to fail', 60_000);
    t.match(failed.reason, /git clone failed: cannot resolve the repository host nonexistent\.invalid/);
    const logs = await fetch(`${srv.url}/api/weaver/${r.body.id}/logs`, { headers: { authorization: `Bearer ${tok}` } }).then((x) => x.text());
    t.match(logs, /cannot resolve the repository host nonexistent\.invalid/);
    await srv.api('DELETE', `/api/weaver/${r.body.id}`, tok);
  });

  await t.test('the concurrency limit answers 429', async (t) => {
    const extra: string[] = [];
    t.teardown(async () => {
      for (const id of extra) await srv.api('DELETE', `/api/weaver/${id}`, tok);
    });
    for (;;) {
      const r = await srv.api<Weaver & Err>('POST', '/api/weaver', tok, {});
      if (r.status === 429) {
        t.equal(r.body.error.code, 'weaver_limit');
        t.match(r.body.error.message, /at most 3 weavers/);
        break;
      }
      t.equal(r.status, 202);
      extra.push(r.body.id);
      if (extra.length > 3) throw new Error('limit not enforced');
    }
    t.equal(extra.length, 2, 'two more fit beside the running one');
    // Both run before they are deleted, so the metrics below count them exactly.
    for (const id of extra) {
      await waitUntil(async () => (await srv.api<Weaver>('GET', `/api/weaver/${id}`, tok)).body.status === 'running', 'extra weaver running');
    }
  });

  await t.test('delete tears the container down', async (t) => {
    const d = await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
    t.equal(d.status, 204);
    t.equal((await srv.api('GET', `/api/weaver/${w.id}`, tok)).status, 404, 'gone');
    t.notOk(containersOf(srv.dataDir).includes(w.id), 'no runc container left');
    t.same(mountsUnder(`${srv.dataDir}/local/weavers/${w.id}`), [], 'no mounts left');
    // This server saw: w, the bad image, the failed clone and the two extras created (5); the two
    // that failed (2); w and the extras running (3); all five deleted; none left.
    const m = await fetch(`${srv.url}/metrics`).then((r) => r.text());
    t.equal(metric(m, 'loom_weavers_created_total'), 5, 'created');
    t.equal(metric(m, 'loom_weavers_deleted_total'), 5, 'deleted');
    t.equal(metric(m, 'loom_weavers_failed_total'), 2, 'failed');
    t.equal(metric(m, 'loom_weaver_create_to_running_seconds_count'), 3, 'create-to-running observations');
    t.equal(metric(m, 'loom_weavers_expired_total'), 0, 'expired');
    t.equal(metric(m, 'loom_weavers_active'), 0, 'active');
  });
});

t.test('a short lifetime expires at its deadline, not before', async (t) => {
  const srv = await startServer({ t });
  const tok = await srv.token('ttl');
  t.teardown(() => deleteAll(srv, [tok]));
  const w = await createRunning(srv, tok, { lifetime_hours: 0.001 }); // 3.6 s
  // The server records the expiry event (when its timer fired, and the deadline it enforced);
  // the sweep runs every 30 min, so this is the weaver's own timer.
  const ev = await waitUntil(async () => expiryEvent(srv, w.id), 'the expiry event', 30_000);
  t.equal(ev.expires_at, w.expires_at, 'the event enforces the deadline stored with the weaver');
  t.ok(Date.parse(ev.fired_at) >= Date.parse(ev.expires_at), `expiry fired at ${ev.fired_at}, at or after its deadline ${ev.expires_at}`);
  await waitUntil(async () => srv.logs.some((l) => l.includes('"msg":"weaver deleted"') && l.includes(w.id) && l.includes('lifetime ended')), 'the expired weaver to be deleted');
  t.equal((await srv.api('GET', `/api/weaver/${w.id}`, tok)).status, 404, 'gone');
  t.notOk(containersOf(srv.dataDir).includes(w.id), 'container removed');
  const m = await fetch(`${srv.url}/metrics`).then((r) => r.text());
  t.equal(metric(m, 'loom_weavers_expired_total'), 1);
  t.equal(metric(m, 'loom_weavers_deleted_total'), 1);
});

t.test('kill -9 of loom-server, then restart, adopts running weavers', async (t) => {
  const dataDir = freshDataDir();
  let srv = await startServer({ t, dataDir, keepData: true });
  const tok = await srv.token('phoenix');
  const w = await createRunning(srv, tok, { lifetime_hours: 0.004 }); // ~14 s: the TTL must still fire after restart
  const keep = await createRunning(srv, tok, {});
  const a = await AttachClient.connect(srv.url, w.id, { token: tok });
  await a.waitFor(PROMPT);
  a.send('echo before-crash-$((3*3))\n');
  await a.waitFor(/before-crash-9/);
  await srv.stop('SIGKILL');
  await a.closed;
  t.ok(containersOf(dataDir).includes(w.id), 'the container outlived the server');

  srv = await startServer({ t, dataDir });
  const second = srv;
  t.teardown(() => deleteAll(second, [tok]));
  t.ok(srv.logs.some((l) => l.includes('reconcile: adopted running weaver') && l.includes(w.id)), 'adoption is logged');
  // (w itself may already be expiring by now on a slow machine: its TTL is checked below.)
  t.ok(srv.logs.some((l) => l.includes('reconcile: adopted running weaver') && l.includes(keep.id)), 'the other one too');
  t.equal((await srv.api<Weaver>('GET', `/api/weaver/${keep.id}`, tok)).body.status, 'running', 'the adopted weaver runs');
  const b = await AttachClient.connect(srv.url, keep.id, { token: tok });
  await b.waitFor(PROMPT);
  b.send('echo after-restart-$((5*5))\n');
  await b.waitFor(/after-restart-25/);
  await b.close();
  const ev = await waitUntil(async () => expiryEvent(srv, w.id), 'the TTL to fire after the restart', 30_000);
  t.ok(Date.parse(ev.fired_at) >= Date.parse(w.expires_at), 'the re-armed timer fired at or after the deadline stored before the crash');
  await waitUntil(async () => (await srv.api('GET', `/api/weaver/${w.id}`, tok)).status === 404, 'the expired weaver to be gone', 30_000);
  t.pass('the TTL still fired after the restart');
  t.equal((await srv.api<Weaver>('GET', `/api/weaver/${keep.id}`, tok)).body.status, 'running');
});

t.test('reconcile: a container without a record is removed and reported', async (t) => {
  const dataDir = freshDataDir();
  let srv = await startServer({ t, dataDir, keepData: true });
  const tok = await srv.token('recon');
  const w = await createRunning(srv, tok, {});
  await srv.stop('SIGKILL');
  // Forget the record behind the server's back.
  const Database = (await import('better-sqlite3')).default;
  const db = new Database(`${dataDir}/loom.db`);
  db.prepare('DELETE FROM weavers WHERE id = ?').run(w.id);
  db.close();
  srv = await startServer({ t, dataDir });
  t.ok(srv.logs.some((l) => l.includes('removed a container with no record') && l.includes(w.id)), 'orphan reported');
  t.notOk(containersOf(dataDir).includes(w.id), 'orphan container removed');
});

t.test('the loom CLI: new, ps, logs, attach, delete', async (t) => {
  const srv = await startServer({ t });
  const tok = await srv.token('cli');
  const cfg = tempDir();
  const loom = loomCli(srv, cfg);
  t.teardown(() => deleteAll(srv, [tok]));
  t.equal((await loom(['login', '--token', tok])).code, 0);

  for (const [args, msg] of [
    [['new', '--branch', 'main'], /^loom: --branch needs --repo\n$/],
    [['new', '--repo', 'http://example.com/x.git'], /^loom: --repo must be an https URL/],
    [['new', '--ttl', '49', '-d'], /^loom: lifetime_hours 49 is over the maximum of 48 hours\n$/],
    [['new', '-e', '9X=1', '-d'], /^loom: invalid env key "9X"/],
    [['new', '-e', 'NOVALUE', '-d'], /^loom: env "NOVALUE" must be KEY=VALUE\n$/],
    [['new', '--org', 'nope', '-d'], /^loom: org "nope" not found/],
  ] as [string[], RegExp][]) {
    const r = await loom(args);
    t.equal(r.code, 1, args.join(' '));
    t.match(r.stderr, msg);
  }
  t.equal((await srv.api<{ count: number }>('GET', '/api/weavers', tok)).body.count, 0, 'bad flags created nothing');

  const created = await loom(['new', '--detach', '-e', 'WHO=cli-user', '--org', 'cli']);
  t.equal(created.code, 0, created.stderr);
  const id = created.stdout.trim();
  t.match(id, /^[0-9a-f-]{36}$/);
  t.equal(created.stderr, '', 'no progress output when piped');

  const ps = await loom(['weaver', 'ps', '--json']);
  const list = JSON.parse(ps.stdout) as Weaver[];
  t.equal(list[0]?.id, id);
  t.equal(list[0]?.status, 'running');
  const table = await loom(['weaver', 'ps']);
  t.match(table.stdout, /^ID\s+IMAGE\s+STATUS\s+AGE\s+TTL\s+PARENT\n/);
  t.match(table.stdout, new RegExp(`${id}\\s+loom/default:latest\\s+running\\s+\\S+\\s+3h5\\dm`));

  // Piped input goes to the shell; the CLI detaches when input ends (the weaver keeps running).
  const att = await loom(['attach', id.slice(0, 8)], { input: 'echo "cli-$((20+22)) $WHO"\n' });
  t.equal(att.code, 0, att.stderr);
  t.match(att.stdout, /cli-42 cli-user/);
  // On a real terminal input never ends: only the detach keys (Ctrl+P Ctrl+Q) end the session,
  // and they do not end the program.
  const pty = attachOnPty(srv, cfg, id);
  t.teardown(() => void pty.child.kill('SIGKILL'));
  pty.send('echo pty-$((6*7))\n');
  await pty.waitFor(/pty-42/, 'the shell to answer through the pty (the CLI is attached, its tty raw)');
  pty.send('\x10\x11');
  await pty.waitFor(/Detached; the weaver keeps running/, 'loom attach to detach on Ctrl+P Ctrl+Q');
  t.equal(await pty.exited, 0, 'loom attach exits 0 after detaching');
  t.equal((await srv.api<Weaver>('GET', `/api/weaver/${id}`, tok)).body.status, 'running', 'the weaver keeps running');
  const again = attachOnPty(srv, cfg, id);
  t.teardown(() => void again.child.kill('SIGKILL'));
  again.send('echo "same-shell-$((1+1))"\n');
  await again.waitFor(/same-shell-2/, 'a new attach to reach the same shell');
  again.send('\x10');
  again.send('\x11');
  await again.waitFor(/Detached; the weaver keeps running/, 'the detach keys split across two writes');
  t.equal(await again.exited, 0);

  const logs = await loom(['weaver', 'logs', id, '--tail', '100']);
  t.equal(logs.code, 0);
  t.match(logs.stdout, /cli-42 cli-user/);

  const exited = await loom(['attach', id], { input: 'exit 7\n' });
  t.equal(exited.code, 7, 'attach ends with the program\'s exit code');
  const ended = await waitUntil(async () => {
    const g = await srv.api<Weaver>('GET', `/api/weaver/${id}`, tok);
    return g.body.status === 'failed' ? g.body : null;
  }, 'weaver to end');
  t.equal(ended.reason, 'exited with code 7');

  const del = await loom(['weaver', 'delete', id]);
  t.equal(del.code, 0);
  t.match(del.stdout, new RegExp(`^Deleted ${id}`));
  const gone = await loom(['weaver', 'delete', id]);
  t.equal(gone.code, 1);
  t.equal(gone.stderr, 'loom: weaver not found\n');
});
