/**
 * Who may do what with secrets — every check in this one place:
 * - weaver secrets: the role matrix (src/server/orgs/access.ts) for the weaver's `env` action:
 *   its owner, or an owner or admin of its org;
 * - org and repo secrets: managed by the org's owners and admins;
 * - metadata (names, scopes, versions, never values): any member of the org;
 * - the access log: the org's owners and admins (server admins see every org).
 * Someone outside the org learns nothing: 404, as for any other org's resource.
 */
import { forbidden, notFound } from '../common/errors.js';
import { authorize } from '../server/orgs/access.js';
import type { OrgService } from '../server/orgs/orgs.js';
import type { User } from '../server/auth/users.js';
import type { Scope } from './model.js';

/** What the secrets component needs to know of a weaver (the weaver component owns the record). */
export interface WeaverRef {
  id: string;
  org_id: string;
  owner_user_id: string;
  repo?: string;
}

export interface WeaverDirectory {
  get(id: string): WeaverRef | null;
}

export interface Target {
  orgId: string;
  scope: Scope;
  /** org id, normalized repo URL, or weaver id. */
  target: string;
}

export class SecretsPolicy {
  constructor(
    private readonly orgs: OrgService,
    private readonly weavers: WeaverDirectory | null,
  ) {}

  /** A weaver the user can see (a member of its org); 404 otherwise. */
  visibleWeaver(user: User, weaverId: string): WeaverRef {
    const w = this.weavers?.get(weaverId) ?? null;
    if (!w) throw notFound('weaver');
    authorize(this.orgs, user, 'view', { kind: 'weaver', id: w.id, orgId: w.org_id, ownerUserId: w.owner_user_id });
    return w;
  }

  /** May the user create, rotate or remove secrets at this target? */
  requireManage(user: User, t: Target): void {
    if (t.scope === 'weaver') {
      const w = this.weavers?.get(t.target) ?? null;
      if (!w) throw notFound('weaver');
      authorize(this.orgs, user, 'env', { kind: 'weaver', id: w.id, orgId: w.org_id, ownerUserId: w.owner_user_id });
      return;
    }
    const org = this.orgs.requireRole(user.id, t.orgId, 'member');
    if (org.role === 'member') throw forbidden(`managing ${t.scope} secrets needs the owner or admin role in org ${org.slug}; members see names only`);
  }

  /** Metadata of an org's secrets: any member. */
  requireView(user: User, orgId: string): void {
    this.orgs.requireRole(user.id, orgId, 'member');
  }

  /** The access log of an org: owners and admins. */
  requireLog(user: User, orgId: string): void {
    if (user.is_admin) return;
    this.orgs.requireRole(user.id, orgId, 'admin');
  }
}
