/**
 * The role matrix of README "Roles and access", run through the real server with real containers:
 * owner, admin, member (the resources' owner), another member of the same team org, a removed
 * member, an outsider and a revoked token, over every weaver, attach, logs, branching, operations
 * and org route. Reads and refused actions run first; the owner's objects are then checked to be
 * intact; allowed destructive actions run last.
 */
import t, { type Test } from 'tap';
import { startServer, type TestServer } from '../support/server.js';
import { AttachClient } from '../support/attach.js';
import { cleanupContainers, makeFixture, mutate, runtimeState, waitOp, type Op } from '../branching/helpers.js';
import { EVERYONE, deleteWeavers, makeTeam, runningWeaver, type Team, type Who, type Weaver } from './team.js';

interface Container { id: string; status: string; env: Record<string, string>; owner_user_id: string }
interface Snapshot { snapshot_id: string; pinned: boolean; owner_user_id: string }

/** Expected status per principal; 'skip' = not run in this phase (allowed and destructive: run last). */
type Expect = Record<Who, number | 'skip'>;
interface Check {
  name: string;
  method: string;
  path: string;
  body?: unknown;
  expect: Expect;
  /** What a successful answer must also show. */
  verify?: (who: Who, body: unknown) => string | null;
  kind?: 'http' | 'attach' | 'follow';
}

const fx = makeFixture();
let srv: TestServer;
let team: Team;
let checks = 0;

t.before(async () => {
  srv = await startServer({ env: { LOOM_SERVER_WEAVER_MAX_CONCURRENT: '8' } });
  team = await makeTeam(srv);
});

t.teardown(async () => {
  if (srv) {
    await deleteWeavers(srv, [team?.tokens.owner].filter(Boolean) as string[]);
    await cleanupContainers(srv, [team?.tokens.owner].filter(Boolean) as string[]);
    await srv.stop();
  }
  fx.cleanup();
});

/** Only the owner, admin and the resource's own member; the other member gets `other`. */
const ownerish = (other: number, allowed: number | 'skip' = 200): Expect => ({
  owner: allowed, admin: allowed, member: allowed, other_member: other, removed: 404, outsider: 404, revoked: 401,
});
const anyMember = (allowed = 200): Expect => ({ owner: allowed, admin: allowed, member: allowed, other_member: allowed, removed: 404, outsider: 404, revoked: 401 });

async function status(c: Check, who: Who): Promise<{ status: number; body: unknown }> {
  const token = team.tokens[who];
  if (c.kind === 'attach') {
    try {
      const a = await AttachClient.connect(srv.url, c.path, { token });
      await a.close();
      return { status: 101, body: null };
    } catch (e) {
      return { status: (e as { status?: number }).status ?? -1, body: (e as { body?: string }).body };
    }
  }
  if (c.kind === 'follow') {
    const ac = new AbortController();
    const res = await fetch(srv.url + c.path, { headers: { authorization: `Bearer ${token}` }, signal: ac.signal });
    const body = res.status === 200 ? null : await res.json();
    ac.abort();
    return { status: res.status, body };
  }
  return srv.api(c.method, c.path, token, c.body);
}

async function runChecks(t: Test, list: Check[]): Promise<void> {
  for (const c of list) {
    for (const who of EVERYONE) {
      const want = c.expect[who];
      if (want === 'skip') continue;
      const r = await status(c, who);
      checks++;
      t.equal(r.status, want, `${c.name} as ${who}: ${r.status} ${r.status !== want ? JSON.stringify(r.body) : ''}`);
      if (r.status === want && want < 300 && c.verify) {
        const problem = c.verify(who, r.body);
        t.notOk(problem, `${c.name} as ${who}: ${problem ?? 'shows what it should'}`);
      }
    }
  }
}

t.test('role matrix over every route and stream', async (t) => {
  const tok = team.tokens;
  // The member's (bob's) resources, and one of the other member's (carol's).
  const w: Weaver = await runningWeaver(srv, tok.member, { org_id: team.orgId, env: { W_SECRET: 'weaver-secret-value' } });
  const createOp = await mutate(srv, tok.member, 'POST', '/api/containers', {
    name: 'bobs', org_id: team.orgId, rootfs_path: fx.rootfs, command: ['/bin/sleep', '1000'], env: { C_SECRET: 'container-secret-value' }, start_immediately: true,
  });
  t.equal(createOp.status, 'succeeded', JSON.stringify(createOp));
  const cid = createOp.container_id!;
  const snapOp = await mutate(srv, tok.member, 'POST', `/api/containers/${cid}/snapshot`, { consistency_mode: 'crash-consistent' });
  t.equal(snapOp.status, 'succeeded');
  const sid = snapOp.snapshot_id!;
  t.equal((await srv.api('POST', `/api/snapshots/${sid}/pin`, tok.member)).status, 200);
  const carolOp = await mutate(srv, tok.other_member, 'POST', '/api/containers', {
    name: 'carols', org_id: team.orgId, rootfs_path: fx.rootfs, command: ['/bin/sleep', '1000'], start_immediately: true,
  });
  const c2 = carolOp.container_id!;

  const envShown = (who: Who, body: unknown) => {
    const env = (body as Container).env;
    const visible = who !== 'other_member';
    if (visible && env['C_SECRET'] !== 'container-secret-value') return `env value hidden from ${who}`;
    if (!visible && JSON.stringify(body).includes('container-secret-value')) return 'env value leaked to another member';
    if (!visible && env['C_SECRET'] !== '<redacted>') return 'env key missing or not redacted';
    return null;
  };
  const noWeaverSecret = (_who: Who, body: unknown) => (JSON.stringify(body).includes('weaver-secret-value') ? 'weaver env value leaked' : null);

  // ---------------------------------------------------------------- phase 1: reads
  const reads: Check[] = [
    { name: 'GET org', method: 'GET', path: `/api/orgs/${team.orgId}`, expect: anyMember() },
    { name: 'GET org members', method: 'GET', path: `/api/orgs/${team.orgId}/members`, expect: anyMember() },
    { name: 'GET weaver', method: 'GET', path: `/api/weaver/${w.id}`, expect: anyMember(), verify: noWeaverSecret },
    { name: 'GET weaver logs', method: 'GET', path: `/api/weaver/${w.id}/logs?tail=5`, expect: ownerish(403) },
    { name: 'GET weaver logs follow (SSE)', method: 'GET', path: `/api/weaver/${w.id}/logs?follow=1`, kind: 'follow', expect: ownerish(403) },
    { name: 'attach WebSocket', method: 'GET', path: w.id, kind: 'attach', expect: ownerish(403, 101) },
    { name: 'POST attach-ticket', method: 'POST', path: `/api/weaver/${w.id}/attach-ticket`, expect: ownerish(403) },
    { name: 'GET container', method: 'GET', path: `/api/containers/${cid}`, expect: anyMember(), verify: envShown },
    { name: 'GET snapshot', method: 'GET', path: `/api/snapshots/${sid}`, expect: anyMember() },
    { name: 'GET snapshot lineage', method: 'GET', path: `/api/snapshots/${sid}/lineage`, expect: anyMember() },
    { name: 'GET operation', method: 'GET', path: `/api/operations/${snapOp.operation_id}`, expect: anyMember() },
  ];
  await t.test('reads', (t) => runChecks(t, reads));

  await t.test('listings: members see the org\'s resources without env values; others see none', async (t) => {
    for (const who of EVERYONE) {
      const ws = await srv.api<{ weavers?: Weaver[] }>('GET', '/api/weavers', tok[who]);
      const cs = await srv.api<{ containers?: Container[] }>('GET', '/api/containers', tok[who]);
      const ss = await srv.api<{ snapshots?: Snapshot[] }>('GET', '/api/snapshots', tok[who]);
      checks += 3;
      if (who === 'revoked') {
        t.same([ws.status, cs.status, ss.status], [401, 401, 401], 'revoked token: 401 on listings');
        continue;
      }
      const member = ['owner', 'admin', 'member', 'other_member'].includes(who);
      t.equal(!!ws.body.weavers?.some((x) => x.id === w.id), member, `${who} lists the weaver: ${member}`);
      t.equal(!!cs.body.containers?.some((x) => x.id === cid), member, `${who} lists the container: ${member}`);
      t.equal(!!ss.body.snapshots?.some((x) => x.snapshot_id === sid), member, `${who} lists the snapshot: ${member}`);
      t.notOk(JSON.stringify(ws.body).includes('weaver-secret-value'), `${who}: no weaver env value in the listing`);
      if (who === 'other_member') t.notOk(JSON.stringify(cs.body).includes('container-secret-value'), 'another member: no container env value in the listing');
    }
  });

  // ---------------------------------------------------------------- phase 2: refused actions
  const refused = (other = 403): Expect => ownerish(other, 'skip');
  const actions: Check[] = [
    { name: 'unpin snapshot', method: 'POST', path: `/api/snapshots/${sid}/unpin`, expect: refused() },
    { name: 'pin snapshot', method: 'POST', path: `/api/snapshots/${sid}/pin`, expect: refused() },
    { name: 'clone snapshot', method: 'POST', path: `/api/snapshots/${sid}/clone`, body: { resume_policy: 'manual' }, expect: refused() },
    { name: 'snapshot container', method: 'POST', path: `/api/containers/${cid}/snapshot`, body: { consistency_mode: 'crash-consistent' }, expect: refused() },
    { name: 'app-consistent snapshot of the weaver', method: 'POST', path: `/api/containers/${w.id}/snapshot`, body: { consistency_mode: 'app-consistent' }, expect: refused() },
    { name: 'fork container', method: 'POST', path: `/api/containers/${cid}/fork`, body: { resume_policy: 'manual' }, expect: refused() },
    { name: 'fork weaver', method: 'POST', path: `/api/containers/${w.id}/fork`, body: { resume_policy: 'manual' }, expect: refused() },
    { name: 'kill container', method: 'POST', path: `/api/containers/${cid}/kill`, expect: refused() },
    { name: 'resume container', method: 'POST', path: `/api/containers/${cid}/resume`, expect: refused() },
    { name: 'delete snapshot', method: 'DELETE', path: `/api/snapshots/${sid}`, expect: refused() },
    { name: 'delete container', method: 'DELETE', path: `/api/containers/${cid}`, expect: refused() },
    { name: 'delete weaver', method: 'DELETE', path: `/api/weaver/${w.id}`, expect: refused() },
    // Org administration: a member is not an admin.
    { name: 'add member', method: 'POST', path: `/api/orgs/${team.orgId}/members`, body: { user_id: team.userIds.outsider }, expect: { owner: 'skip', admin: 'skip', member: 403, other_member: 403, removed: 404, outsider: 404, revoked: 401 } },
    { name: 'change a role', method: 'PATCH', path: `/api/orgs/${team.orgId}/members/${team.userIds.other_member}`, body: { role: 'admin' }, expect: { owner: 'skip', admin: 'skip', member: 403, other_member: 'skip', removed: 404, outsider: 404, revoked: 401 } },
    { name: 'remove another member', method: 'DELETE', path: `/api/orgs/${team.orgId}/members/${team.userIds.other_member}`, expect: { owner: 'skip', admin: 'skip', member: 403, other_member: 'skip', removed: 404, outsider: 404, revoked: 401 } },
  ];
  await t.test('refused actions', (t) => runChecks(t, actions));

  await t.test('the other member\'s container is refused to the member the same way', async (t) => {
    for (const [method, path, body] of [['POST', `/api/containers/${c2}/kill`], ['DELETE', `/api/containers/${c2}`], ['POST', `/api/containers/${c2}/snapshot`, { consistency_mode: 'crash-consistent' }]] as const) {
      const r = await srv.api('POST' === method ? 'POST' : method, path, tok.member, body);
      checks++;
      t.equal(r.status, 403, `member → other member's container: ${method} ${path}`);
    }
  });

  await t.test('after the refusals the member\'s objects are all still there, unchanged', async (t) => {
    const wg = await srv.api<Weaver>('GET', `/api/weaver/${w.id}`, tok.owner);
    t.equal(wg.body.status, 'running', 'weaver still running');
    const cg = await srv.api<Container>('GET', `/api/containers/${cid}`, tok.owner);
    t.equal(cg.body.status, 'running', 'container still running');
    t.equal(runtimeState(srv.dataDir, cid), 'running', 'runc agrees');
    t.equal(runtimeState(srv.dataDir, c2), 'running', "the other member's container too");
    const sg = await srv.api<Snapshot>('GET', `/api/snapshots/${sid}`, tok.owner);
    t.equal(sg.body.pinned, true, 'snapshot still pinned');
    const cs = await srv.api<{ containers: Container[] }>('GET', '/api/containers', tok.owner);
    t.equal(cs.body.containers.length, 2, 'no clone or fork was made');
    const ss = await srv.api<{ snapshots: Snapshot[] }>('GET', '/api/snapshots', tok.owner);
    t.equal(ss.body.snapshots.length, 1, 'no snapshot was taken');
    const members = await srv.api<{ members: { user_id: string; role: string }[] }>('GET', `/api/orgs/${team.orgId}/members`, tok.owner);
    t.same(members.body.members.map((m) => m.role).sort(), ['admin', 'member', 'member', 'owner'], 'membership unchanged');
  });

  // ---------------------------------------------------------------- phase 3: allowed destructive actions
  await t.test('owner and admin act on a member\'s resources; the member on their own', async (t) => {
    const unpin = await srv.api<Snapshot>('POST', `/api/snapshots/${sid}/unpin`, tok.admin);
    t.equal(unpin.status, 200, 'admin unpins');
    t.equal((await srv.api('POST', `/api/snapshots/${sid}/pin`, tok.owner)).status, 200, 'owner pins');
    const clone = await mutate(srv, tok.admin, 'POST', `/api/snapshots/${sid}/clone`, { resume_policy: 'manual' });
    t.equal(clone.status, 'succeeded', 'admin clones');
    const cloned = await srv.api<Container>('GET', `/api/containers/${clone.result_container_id}`, tok.other_member);
    t.equal(cloned.body.owner_user_id, team.userIds.admin, 'the clone belongs to whoever cloned');
    t.equal(cloned.body.env['C_SECRET'], '<redacted>', 'and its env is still hidden from another member');
    t.equal((await mutate(srv, tok.admin, 'DELETE', `/api/containers/${clone.result_container_id}`)).status, 'succeeded', 'admin deletes its clone');
    const kill = await mutate(srv, tok.owner, 'POST', `/api/containers/${cid}/kill`);
    t.equal(kill.status, 'succeeded', 'owner kills the member\'s container');
    const resume = await mutate(srv, tok.member, 'POST', `/api/containers/${cid}/resume`);
    t.equal(resume.status, 'succeeded', 'the member resumes it');
    const ticket = await srv.api('POST', `/api/weaver/${w.id}/attach-ticket`, tok.admin);
    t.equal(ticket.status, 200, 'admin may attach');
    checks += 7;
  });

  await t.test('concurrent kills of one container: one 202, the rest 409 naming the running kill', async (t) => {
    const rs = await Promise.all([1, 2, 3].map(() => srv.api<Op & { error?: { code: string; message: string } }>('POST', `/api/containers/${c2}/kill`, tok.other_member)));
    const accepted = rs.filter((r) => r.status === 202);
    const refusedKills = rs.filter((r) => r.status === 409);
    t.equal(accepted.length, 1, `exactly one kill accepted: ${rs.map((r) => r.status).join(',')}`);
    t.equal(refusedKills.length, 2);
    for (const r of refusedKills) t.match(r.body.error?.message, accepted[0]!.body.operation_id, 'the 409 names the accepted operation');
    for (const r of refusedKills) t.equal(r.body.error?.code, 'KILL_IN_PROGRESS');
    const op = await waitOp(srv, tok.other_member, accepted[0]!.body.operation_id);
    t.equal(op.status, 'succeeded');
    checks += 3;
  });

  await t.test('a lowered role loses its rights at once; a removed member loses everything', async (t) => {
    t.equal((await srv.api('PATCH', `/api/orgs/${team.orgId}/members/${team.userIds.admin}`, tok.owner, { role: 'member' })).status, 200);
    t.equal((await srv.api('GET', `/api/weaver/${w.id}/logs`, tok.admin)).status, 403, 'demoted admin: logs refused');
    t.equal((await srv.api('GET', `/api/containers/${cid}`, tok.admin)).body && ((await srv.api<Container>('GET', `/api/containers/${cid}`, tok.admin)).body.env['C_SECRET']), '<redacted>', 'demoted admin: env redacted');
    t.equal((await srv.api('DELETE', `/api/orgs/${team.orgId}/members/${team.userIds.other_member}`, tok.owner)).status, 204);
    t.equal((await srv.api('GET', `/api/containers/${c2}`, tok.other_member)).status, 404, 'removed: own container in the org is now 404');
    t.equal((await srv.api('GET', `/api/containers/${c2}`, tok.owner)).status, 200, 'the owner still sees it');
    checks += 4;
  });

  await t.test('the member deletes their own resources', async (t) => {
    t.equal((await srv.api('POST', `/api/snapshots/${sid}/unpin`, tok.member)).status, 200);
    t.equal((await srv.api('DELETE', `/api/snapshots/${sid}`, tok.member)).status, 204);
    t.equal((await mutate(srv, tok.member, 'DELETE', `/api/containers/${cid}`)).status, 'succeeded');
    t.equal((await srv.api('DELETE', `/api/weaver/${w.id}`, tok.member)).status, 204);
    checks += 4;
  });

  t.comment(`role matrix: ${checks} checks (${EVERYONE.length} principals × ${reads.length} read routes, ${actions.length} refused actions, listings and allowed actions)`);
});
