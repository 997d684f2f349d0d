/**
 * Long-lived streams die with the access that opened them (issue 9 item 4) and are kept alive
 * (item 14): attach WebSockets and following log streams through the real server with a real
 * weaver, closed when the token is revoked or logged out, the member removed, the role lowered,
 * or (backstop) the token deleted behind the server's back; dead WebSocket peers are dropped.
 */
import t from 'tap';
import WebSocket from 'ws';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { startServer, type TestServer } from '../support/server.js';
import { AttachClient } from '../support/attach.js';
import { deleteWeavers, makeTeam, runningWeaver, type Team, type Weaver } from './team.js';

const PROMPT = /loom@weaver-[0-9a-f]+:[^$]*\$ /;

/** A following SSE log stream: collects the text, resolves `ended` when the server closes it. */
class Follow {
  text = '';
  ended: Promise<void>;
  private waiters: (() => void)[] = [];
  private constructor(readonly status: number, body: ReadableStream<Uint8Array> | null, private readonly ac: AbortController) {
    this.ended = (async () => {
      if (!body) return;
      const dec = new TextDecoder();
      try {
        for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
          this.text += dec.decode(chunk, { stream: true });
          for (const w of this.waiters.splice(0)) w();
        }
      } catch {
        /* aborted by us */
      }
      for (const w of this.waiters.splice(0)) w();
    })();
  }
  static async open(srv: TestServer, weaverId: string, token: string, query = 'follow=1'): Promise<Follow> {
    const ac = new AbortController();
    const res = await fetch(`${srv.url}/api/weaver/${weaverId}/logs?${query}`, { headers: { authorization: `Bearer ${token}` }, signal: ac.signal });
    return new Follow(res.status, res.body, ac);
  }
  async waitFor(re: RegExp): Promise<void> {
    while (!re.test(this.text)) {
      await new Promise<void>((r) => this.waiters.push(r));
      if (!re.test(this.text) && (await Promise.race([this.ended.then(() => true), Promise.resolve(false)]))) {
        if (!re.test(this.text)) throw new Error(`stream ended without ${re}: ${JSON.stringify(this.text.slice(-500))}`);
      }
    }
  }
  close(): void {
    this.ac.abort();
  }
}

let srv: TestServer;
let team: Team;
let w: Weaver;

t.before(async () => {
  srv = await startServer({ env: { LOOM_STREAM_RECHECK_SECS: '1', LOOM_STREAM_PING_SECS: '0.2' } });
  team = await makeTeam(srv);
  w = await runningWeaver(srv, team.tokens.member, { org_id: team.orgId });
});

t.teardown(async () => {
  if (srv) {
    if (team) await deleteWeavers(srv, [team.tokens.owner]);
    await srv.stop();
  }
});

async function newToken(token: string, name: string): Promise<{ token: string; id: string }> {
  const r = await srv.api<{ token: string; id: string }>('POST', '/api/tokens', token, { name });
  if (r.status !== 201) throw new Error(`token: ${r.status}`);
  return r.body;
}

async function attached(token: string | { ticket: string }): Promise<AttachClient> {
  const a = await AttachClient.connect(srv.url, w.id, typeof token === 'string' ? { token } : token);
  a.send('\n');
  await a.waitFor(PROMPT);
  return a;
}

/** Proves a stream is still live: a command typed now is answered. */
async function stillLive(a: AttachClient, tag: string): Promise<void> {
  const from = a.output.length;
  a.send(`echo live-${tag}-$((2+3))\n`);
  await a.waitFor(new RegExp(`live-${tag}-5`), 15_000, from);
}

t.test('revoking the token closes the attach and the log stream it opened', async (t) => {
  const x = await newToken(team.tokens.member, 'stream-revoke');
  const a = await attached(x.token);
  const f = await Follow.open(srv, w.id, x.token);
  t.equal(f.status, 200);
  const bystander = await attached(team.tokens.member);
  t.equal((await srv.api('DELETE', `/api/tokens/${x.id}`, team.tokens.member)).status, 204);
  const closed = await a.closed;
  t.equal(closed.code, 4401, 'attach closed with 4401');
  t.equal(closed.reason, 'credential_revoked');
  t.ok(a.controls.some((c) => c.type === 'error' && /revoked/.test(c.message ?? '')), 'told why');
  await f.ended;
  t.match(f.text, /event: error\ndata: \{"code":"credential_revoked"/, 'log stream ended with the reason');
  await stillLive(bystander, 'revoke');
  t.pass('a stream opened with another token of the same user stays open');
  await bystander.close();
});

t.test('logout closes the streams of that session', async (t) => {
  const x = await newToken(team.tokens.member, 'stream-logout');
  const a = await attached(x.token);
  const r = await srv.api('POST', '/auth/logout', x.token);
  t.equal(r.status, 204);
  t.equal((await a.closed).code, 4401);
});

t.test('an attach opened with a ticket dies with the token that asked for the ticket', async (t) => {
  const x = await newToken(team.tokens.member, 'stream-ticket');
  const tk = await srv.api<{ ticket: string }>('POST', `/api/weaver/${w.id}/attach-ticket`, x.token);
  t.equal(tk.status, 200);
  const a = await attached({ ticket: tk.body.ticket });
  await srv.api('DELETE', `/api/tokens/${x.id}`, team.tokens.member);
  t.equal((await a.closed).code, 4401);
});

t.test('lowering the role closes the admin\'s streams on a member\'s weaver; the owner\'s stay', async (t) => {
  const adminA = await attached(team.tokens.admin);
  const adminF = await Follow.open(srv, w.id, team.tokens.admin);
  t.equal(adminF.status, 200);
  const own = await attached(team.tokens.member);
  t.equal((await srv.api('PATCH', `/api/orgs/${team.orgId}/members/${team.userIds.admin}`, team.tokens.owner, { role: 'member' })).status, 200);
  const closed = await adminA.closed;
  t.equal(closed.code, 4403, 'closed with 4403');
  t.equal(closed.reason, 'access_revoked');
  await adminF.ended;
  t.match(adminF.text, /event: error\ndata: \{"code":"access_revoked"/);
  await stillLive(own, 'lowered');
  t.pass("the weaver owner's own stream is untouched");
  await own.close();
  t.equal((await srv.api('PATCH', `/api/orgs/${team.orgId}/members/${team.userIds.admin}`, team.tokens.owner, { role: 'admin' })).status, 200);
});

t.test('removing a member closes the streams they opened in that org', async (t) => {
  const a = await attached(team.tokens.admin);
  const f = await Follow.open(srv, w.id, team.tokens.admin);
  t.equal((await srv.api('DELETE', `/api/orgs/${team.orgId}/members/${team.userIds.admin}`, team.tokens.owner)).status, 204);
  t.equal((await a.closed).code, 4403);
  await f.ended;
  t.match(f.text, /access_revoked/);
  t.equal((await srv.api('POST', `/api/orgs/${team.orgId}/members`, team.tokens.owner, { user_id: team.userIds.admin, role: 'admin' })).status, 201);
});

t.test('backstop: a token deleted behind the server\'s back is noticed by the periodic re-check', async (t) => {
  const x = await newToken(team.tokens.member, 'stream-backstop');
  const a = await attached(x.token);
  const f = await Follow.open(srv, w.id, x.token);
  // Another process (as `loom-server admin` would) removes the token: no event reaches the server.
  const db = new Database(join(srv.dataDir, 'loom.db'));
  t.teardown(() => db.close());
  t.equal(db.prepare('DELETE FROM tokens WHERE id = ?').run(x.id).changes, 1);
  t.equal((await a.closed).code, 4401);
  await f.ended;
  t.match(f.text, /credential_revoked/);
});

t.test('keepalive: the server pings; a peer that stops answering is dropped', async (t) => {
  // A normal client answers pings by itself and stays (positive signal: it saw several pings).
  const ok = await attached(team.tokens.member);
  let pings = 0;
  await new Promise<void>((r) => ok.ws.on('ping', () => ++pings >= 5 && r()));
  t.equal(ok.ws.readyState, WebSocket.OPEN, 'an answering client stays connected across 5 pings');
  // A client that never answers pongs and sends nothing.
  const url = `${srv.url.replace(/^http/, 'ws')}/api/weaver/${w.id}/attach`;
  const dead = new WebSocket(url, { headers: { authorization: `Bearer ${team.tokens.member}` }, autoPong: false });
  let deadPings = 0;
  dead.on('ping', () => deadPings++);
  await new Promise((r, j) => {
    dead.once('open', r);
    dead.once('error', j);
  });
  const code = await new Promise<number>((r) => dead.once('close', (c) => r(c)));
  t.equal(code, 1006, 'the server dropped the silent peer (abnormal closure, no close frame)');
  t.ok(deadPings >= 1, `it was pinged first (${deadPings})`);
  await stillLive(ok, 'keepalive');
  await ok.close();
  // SSE: comment lines keep a following log stream busy.
  const f = await Follow.open(srv, w.id, team.tokens.member);
  await f.waitFor(/^: ping$/m);
  t.pass('a following log stream carries `: ping` comment lines');
  f.close();
});
