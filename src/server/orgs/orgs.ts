import type { Db } from '../store/db.js';
import { badRequest, conflict, forbidden, notFound } from '../../common/errors.js';
import { newId, nowIso } from '../../common/ids.js';
import { AccessEvents } from '../events.js';

export type Role = 'owner' | 'admin' | 'member';
const RANK: Record<Role, number> = { member: 1, admin: 2, owner: 3 };

export interface Org {
  id: string;
  name: string;
  slug: string;
  is_personal: boolean;
  created_at: string;
}

export interface OrgWithRole extends Org {
  role: Role;
}

export interface Member {
  user_id: string;
  username: string;
  role: Role;
  created_at: string;
}

interface OrgRow {
  id: string;
  name: string;
  slug: string;
  is_personal: number;
  created_at: string;
  role?: Role;
}

export const SLUG_RE = /^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$/;

const toOrg = (r: OrgRow): Org => ({ id: r.id, name: r.name, slug: r.slug, is_personal: r.is_personal === 1, created_at: r.created_at });

export function slugify(name: string): string {
  return name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 40)
    .replace(/-+$/g, '');
}

/**
 * Organizations and membership. Every access check goes through requireRole, which answers 404
 * to non-members (they must not learn the org exists) and 403 to members without the right.
 */
export class OrgService {
  constructor(private readonly db: Db, readonly events: AccessEvents = new AccessEvents()) {}

  /** The user's role in the org, or null when they are not a member (or it does not exist). */
  roleOf(userId: string, orgId: string): Role | null {
    const r = this.db.prepare('SELECT role FROM org_members WHERE org_id = ? AND user_id = ?').get(orgId, userId) as { role: Role } | undefined;
    return r?.role ?? null;
  }

  createPersonal(userId: string, username: string): Org {
    let slug = slugify(username) || 'user';
    if (this.bySlug(slug)) slug = `${slug}-${userId.slice(0, 6)}`;
    return this.insert(userId, `${username} (personal)`, slug, true);
  }

  create(userId: string, name: string, slug?: string): OrgWithRole {
    const trimmed = name.trim();
    if (trimmed.length < 1 || trimmed.length > 100) throw badRequest('org name must be 1 to 100 characters', 'invalid_org_name');
    const s = slug ?? slugify(trimmed);
    if (!SLUG_RE.test(s)) throw badRequest(`invalid slug ${JSON.stringify(s)}: lower-case letters, digits and -, 1 to 40 characters`, 'invalid_slug');
    const org = this.db.transaction(() => {
      if (this.bySlug(s)) throw conflict(`an org with slug ${s} already exists`, 'slug_taken');
      return this.insert(userId, trimmed, s, false);
    })();
    return { ...org, role: 'owner' };
  }

  private insert(ownerId: string, name: string, slug: string, personal: boolean): Org {
    const row: OrgRow = { id: newId(), name, slug, is_personal: personal ? 1 : 0, created_at: nowIso() };
    this.db.prepare('INSERT INTO orgs (id, name, slug, is_personal, created_at) VALUES (@id, @name, @slug, @is_personal, @created_at)').run(row);
    this.db.prepare('INSERT INTO org_members (org_id, user_id, role, created_at) VALUES (?, ?, ?, ?)').run(row.id, ownerId, 'owner', row.created_at);
    return toOrg(row);
  }

  private bySlug(slug: string): Org | null {
    const r = this.db.prepare('SELECT * FROM orgs WHERE slug = ?').get(slug) as OrgRow | undefined;
    return r ? toOrg(r) : null;
  }

  listForUser(userId: string): OrgWithRole[] {
    const rows = this.db
      .prepare('SELECT o.*, m.role FROM orgs o JOIN org_members m ON m.org_id = o.id WHERE m.user_id = ? ORDER BY o.is_personal DESC, o.name')
      .all(userId) as OrgRow[];
    return rows.map((r) => ({ ...toOrg(r), role: r.role as Role }));
  }

  personalOrgOf(userId: string): OrgWithRole {
    const r = this.db
      .prepare("SELECT o.*, m.role FROM orgs o JOIN org_members m ON m.org_id = o.id WHERE m.user_id = ? AND o.is_personal = 1 AND m.role = 'owner'")
      .get(userId) as OrgRow | undefined;
    if (!r) throw notFound('personal org');
    return { ...toOrg(r), role: 'owner' };
  }

  /** The org as the user sees it; 404 when it does not exist or the user is not a member. */
  requireRole(userId: string, orgId: string, min: Role = 'member'): OrgWithRole {
    const r = this.db
      .prepare('SELECT o.*, m.role FROM orgs o JOIN org_members m ON m.org_id = o.id WHERE o.id = ? AND m.user_id = ?')
      .get(orgId, userId) as OrgRow | undefined;
    if (!r) throw notFound('org');
    const role = r.role as Role;
    if (RANK[role] < RANK[min]) throw forbidden(`this needs the ${min} role in org ${r.slug}; you are ${role}`);
    return { ...toOrg(r), role };
  }

  /** Ids of every org the user belongs to (for listing org-scoped resources). */
  orgIdsOf(userId: string): string[] {
    return (this.db.prepare('SELECT org_id FROM org_members WHERE user_id = ?').all(userId) as { org_id: string }[]).map((r) => r.org_id);
  }

  members(orgId: string): Member[] {
    return this.db
      .prepare('SELECT m.user_id, u.username, m.role, m.created_at FROM org_members m JOIN users u ON u.id = m.user_id WHERE m.org_id = ? ORDER BY u.username')
      .all(orgId) as Member[];
  }

  addMember(actor: OrgWithRole, userId: string, role: Role): Member {
    if (actor.is_personal) throw badRequest('a personal org has no other members; create a team org', 'personal_org');
    if (role === 'owner' && actor.role !== 'owner') throw forbidden('only an owner can add an owner');
    const now = nowIso();
    const r = this.db
      .prepare('INSERT INTO org_members (org_id, user_id, role, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (org_id, user_id) DO NOTHING')
      .run(actor.id, userId, role, now);
    if (r.changes === 0) throw conflict('that user is already a member', 'already_member');
    return this.members(actor.id).find((m) => m.user_id === userId)!;
  }

  removeMember(actor: OrgWithRole, actorUserId: string, userId: string): void {
    const target = this.db.prepare('SELECT role FROM org_members WHERE org_id = ? AND user_id = ?').get(actor.id, userId) as { role: Role } | undefined;
    if (!target) throw notFound('member');
    const self = userId === actorUserId;
    if (!self && RANK[actor.role] < RANK.admin) throw forbidden('this needs the admin role');
    if (!self && target.role === 'owner' && actor.role !== 'owner') throw forbidden('only an owner can remove an owner');
    this.db.transaction(() => {
      if (target.role === 'owner') {
        const owners = (this.db.prepare("SELECT COUNT(*) AS n FROM org_members WHERE org_id = ? AND role = 'owner'").get(actor.id) as { n: number }).n;
        if (owners <= 1) throw conflict('an org keeps at least one owner', 'last_owner');
      }
      this.db.prepare('DELETE FROM org_members WHERE org_id = ? AND user_id = ?').run(actor.id, userId);
    })();
    this.events.emit('membership_changed', { orgId: actor.id, userId });
  }

  /** Changes a member's role. Admins manage members and admins; only owners grant or take the owner role. */
  setRole(actor: OrgWithRole, userId: string, role: Role): Member {
    if (RANK[actor.role] < RANK.admin) throw forbidden('this needs the admin role');
    if (actor.is_personal) throw badRequest('a personal org has no other members; create a team org', 'personal_org');
    const target = this.db.prepare('SELECT role FROM org_members WHERE org_id = ? AND user_id = ?').get(actor.id, userId) as { role: Role } | undefined;
    if (!target) throw notFound('member');
    if ((target.role === 'owner' || role === 'owner') && actor.role !== 'owner') throw forbidden('only an owner can grant or take the owner role');
    this.db.transaction(() => {
      if (target.role === 'owner' && role !== 'owner') {
        const owners = (this.db.prepare("SELECT COUNT(*) AS n FROM org_members WHERE org_id = ? AND role = 'owner'").get(actor.id) as { n: number }).n;
        if (owners <= 1) throw conflict('an org keeps at least one owner', 'last_owner');
      }
      this.db.prepare('UPDATE org_members SET role = ? WHERE org_id = ? AND user_id = ?').run(role, actor.id, userId);
    })();
    this.events.emit('membership_changed', { orgId: actor.id, userId });
    return this.members(actor.id).find((m) => m.user_id === userId)!;
  }
}
