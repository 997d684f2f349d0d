/**
 * Who may do what with secrets — every check in this one place:
 * - org and repo secrets: managed by the org's owners and admins;
 * - weaver secrets: managed by the weaver's owner;
 * - metadata (names, scopes, versions, never values): any member of the org;
 * - the access log: the org's owners and admins (server admins see every org).
 * Someone outside the org learns nothing: 404, as for any other org's resource.
 */
import { forbidden, notFound } from '../common/errors.js';
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
    try {
      this.orgs.requireRole(user.id, w.org_id, 'member');
    } catch {
      throw notFound('weaver');
    }
    return w;
  }

  /** May the user create, rotate or remove secrets at this target? */
  requireManage(user: User, t: Target): void {
    if (t.scope === 'weaver') {
      const w = this.visibleWeaver(user, t.target);
      if (w.owner_user_id !== user.id) throw forbidden('only the weaver\'s owner manages its secrets');
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
