/**
 * A team org with every role of the matrix, for the security tests: owner alice, admin adam,
 * members bob and carol, rita (added, then removed), olga (an outsider) and a revoked token of bob.
 */
import type { TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';

export type Who = 'owner' | 'admin' | 'member' | 'other_member' | 'removed' | 'outsider' | 'revoked';
export const EVERYONE: Who[] = ['owner', 'admin', 'member', 'other_member', 'removed', 'outsider', 'revoked'];

export interface Team {
  orgId: string;
  tokens: Record<Who, string>;
  userIds: Record<'owner' | 'admin' | 'member' | 'other_member' | 'removed' | 'outsider', string>;
}

type Me = { id: string };

async function ok<T>(p: Promise<{ status: number; body: T }>, want: number, what: string): Promise<T> {
  const r = await p;
  if (r.status !== want) throw new Error(`${what}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

export async function makeTeam(srv: TestServer, tag = Math.random().toString(36).slice(2, 8)): Promise<Team> {
  const names = { owner: `alice-${tag}`, admin: `adam-${tag}`, member: `bob-${tag}`, other_member: `carol-${tag}`, removed: `rita-${tag}`, outsider: `olga-${tag}` };
  const tokens = {} as Record<Who, string>;
  const userIds = {} as Team['userIds'];
  for (const [k, name] of Object.entries(names) as [keyof typeof names, string][]) {
    tokens[k] = await srv.token(name);
    userIds[k] = (await ok(srv.api<Me>('GET', '/api/me', tokens[k]), 200, 'me')).id;
  }
  const org = await ok(srv.api<{ id: string }>('POST', '/api/orgs', tokens.owner, { name: `Team ${tag}` }), 201, 'create org');
  await ok(srv.api('POST', `/api/orgs/${org.id}/members`, tokens.owner, { username: names.admin, role: 'admin' }), 201, 'add admin');
  for (const k of ['member', 'other_member', 'removed'] as const) {
    await ok(srv.api('POST', `/api/orgs/${org.id}/members`, tokens.owner, { username: names[k], role: 'member' }), 201, `add ${k}`);
  }
  await ok(srv.api('DELETE', `/api/orgs/${org.id}/members/${userIds.removed}`, tokens.owner), 204, 'remove rita');
  // A second token of the member, revoked through the API.
  const extra = await ok(srv.api<{ token: string; id: string }>('POST', '/api/tokens', tokens.member, { name: 'to-revoke' }), 201, 'token');
  await ok(srv.api('DELETE', `/api/tokens/${extra.id}`, tokens.member), 204, 'revoke');
  tokens.revoked = extra.token;
  return { orgId: org.id, tokens, userIds };
}

export type Weaver = { id: string; status: string; reason?: string; org_id: string; owner_user_id: string; env_keys: string[]; expires_at: string };

export async function runningWeaver(srv: TestServer, token: string, body: Record<string, unknown>): Promise<Weaver> {
  const w = await ok(srv.api<Weaver>('POST', '/api/weaver', token, body), 202, 'create weaver');
  return waitUntil(async () => {
    const g = await srv.api<Weaver>('GET', `/api/weaver/${w.id}`, token);
    if (g.body.status === 'failed') throw new Error(`weaver failed: ${g.body.reason}`);
    return g.body.status === 'running' ? g.body : null;
  }, 'weaver running', 60_000);
}

/** Deletes every weaver each token can delete (teardown). */
export async function deleteWeavers(srv: TestServer, tokens: string[]): Promise<void> {
  for (const t of tokens) {
    const r = await srv.api<{ weavers?: Weaver[] }>('GET', '/api/weavers', t).catch(() => null);
    for (const w of r?.body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, t).catch(() => undefined);
  }
}
