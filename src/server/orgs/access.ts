/**
 * The one role matrix of Loom (README "Roles and access"). Every route that reads or acts on a
 * weaver, branching container, snapshot, operation or stream asks `authorize` here, nowhere else.
 *
 *   - not a member of the resource's org (outsider, removed member, deleted org) → 404: they must
 *     not learn the resource exists;
 *   - a member who may see it but not do this → 403;
 *   - org owners and admins may do everything on every resource of their org;
 *   - a plain member may do everything on the resources they own, and only `view` (metadata,
 *     without env values) on the other members' resources.
 */
import { LoomError, forbidden } from '../../common/errors.js';
import type { OrgService, OrgWithRole, Role } from './orgs.js';

/**
 * What a request wants to do. `view` is the only action a member has on others' resources;
 * every other action (and any action added later) needs ownership or the org admin role.
 */
export type Action =
  | 'view' // metadata: get and list, env keys but not values
  | 'env' // env values
  | 'logs' // terminal output / history
  | 'attach' // interactive terminal (and attach tickets)
  | 'exec' // run a command inside
  | 'files' // read or write files inside
  | 'control' // kill, resume, start, stop
  | 'delete'
  | 'snapshot' // snapshot or fork it (reads its files, may freeze it)
  | 'clone' // clone a snapshot (reads its files)
  | 'pin'; // pin or unpin a snapshot

export type ResourceKind = 'weaver' | 'container' | 'snapshot' | 'operation';

export interface Resource {
  kind: ResourceKind;
  id: string;
  orgId: string;
  /** The user who owns it; null for rows with no owner (only org admins and owners may act on them). */
  ownerUserId: string | null;
}

export interface Grant {
  org: OrgWithRole;
  /** True when the user owns the resource. */
  owner: boolean;
  /** True when the user's org role (admin, owner) covers every resource of the org. */
  orgAdmin: boolean;
}

const ORG_ADMIN_ROLES: ReadonlySet<Role> = new Set<Role>(['admin', 'owner']);

/** The pure rule: may someone with this org role, owning the resource or not, do this? */
export function allowed(role: Role, owner: boolean, action: Action): boolean {
  if (ORG_ADMIN_ROLES.has(role) || owner) return true;
  return action === 'view';
}

/** The 404 each kind of resource answers with (codes kept from each API). */
export function notVisible(r: Pick<Resource, 'kind' | 'id'>): LoomError {
  switch (r.kind) {
    case 'weaver':
      return new LoomError(404, 'not_found', 'weaver not found');
    case 'container':
      return new LoomError(404, 'CONTAINER_NOT_FOUND', `container ${r.id} not found`);
    case 'snapshot':
      return new LoomError(404, 'SNAPSHOT_NOT_FOUND', `snapshot ${r.id} not found`);
    case 'operation':
      return new LoomError(404, 'OPERATION_NOT_FOUND', `operation ${r.id} not found`);
  }
}

/**
 * Checks the matrix for one user, action and resource. Throws 404 when the user cannot see the
 * resource at all and 403 when they can see it but not do this; returns the grant otherwise.
 */
export function authorize(orgs: OrgService, user: { id: string }, action: Action, resource: Resource): Grant {
  const role = orgs.roleOf(user.id, resource.orgId);
  if (!role) throw notVisible(resource);
  const owner = resource.ownerUserId !== null && resource.ownerUserId === user.id;
  if (!allowed(role, owner, action)) {
    throw forbidden(`${action} on another member's ${resource.kind} needs its owner or an org admin; you are a member`, 'not_owner');
  }
  const org = orgs.requireRole(user.id, resource.orgId, 'member');
  return { org, owner, orgAdmin: ORG_ADMIN_ROLES.has(role) };
}

/** Whether `authorize` would pass, without throwing (for redacting fields in listings). */
export function may(orgs: OrgService, user: { id: string }, action: Action, resource: Resource): boolean {
  const role = orgs.roleOf(user.id, resource.orgId);
  if (!role) return false;
  return allowed(role, resource.ownerUserId !== null && resource.ownerUserId === user.id, action);
}
