/**
 * Secrets: write-only values for users, readable only by the weaver they resolve for, through
 * that weaver's identity. Resolution: weaver > repo > org, first match wins.
 */
import { LoomError, badRequest, notFound, unauthorized } from '../common/errors.js';
import { newId, newSecret, nowIso, sha256 } from '../common/ids.js';
import type { Logger } from '../common/log.js';
import type { OrgService } from '../server/orgs/orgs.js';
import type { User } from '../server/auth/users.js';
import { decryptVersion, encryptVersion, type ValueBinding } from './crypto.js';
import type { Keyring } from './keyring.js';
import { RESOLUTION, checkName, checkValue, normalizeRepoUrl, type Scope } from './model.js';
import { SecretsPolicy, type Target, type WeaverDirectory, type WeaverRef } from './policy.js';
import { SecretsStore, type AccessEntry, type SecretRow, type VersionRow } from './store.js';

export const IDENTITY_PREFIX = 'loom_w_';

/** What users see of a secret: never a value. */
export interface SecretView {
  id: string;
  org_id: string;
  scope: Scope;
  name: string;
  repo?: string;
  weaver_id?: string;
  current_version: number;
  created_by: string;
  created_at: string;
  updated_at: string;
}

export interface VersionView {
  version: number;
  current: boolean;
  size: number;
  created_by: string;
  created_at: string;
}

export interface ResolvedSecret {
  name: string;
  scope: Scope;
  version: number;
  value: Buffer;
}

export interface TargetRequest {
  scope: Scope;
  org_id?: string;
  repo?: string;
  weaver_id?: string;
}

/** A change that may alter what running weavers resolve (local injection re-syncs on it). */
export interface SecretChange {
  orgId: string;
  scope: Scope;
  target: string;
  name: string;
}

const view = (r: SecretRow): SecretView => ({
  id: r.id,
  org_id: r.org_id,
  scope: r.scope,
  name: r.name,
  ...(r.scope === 'repo' ? { repo: r.target } : {}),
  ...(r.scope === 'weaver' ? { weaver_id: r.target } : {}),
  current_version: r.current_version,
  created_by: r.created_by,
  created_at: r.created_at,
  updated_at: r.updated_at,
});

const binding = (r: SecretRow, version: number): ValueBinding => ({ secretId: r.id, orgId: r.org_id, scope: r.scope, target: r.target, name: r.name, version });

export class SecretsService {
  readonly policy: SecretsPolicy;
  private readonly store: SecretsStore;
  private readonly listeners = new Set<(c: SecretChange) => void>();

  constructor(
    private readonly d: { store: SecretsStore; keyring: Keyring; orgs: OrgService; weavers: WeaverDirectory | null; log: Logger },
  ) {
    this.store = d.store;
    this.policy = new SecretsPolicy(d.orgs, d.weavers);
  }

  onChange(cb: (c: SecretChange) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  private changed(c: SecretChange): void {
    for (const l of this.listeners) {
      try {
        l(c);
      } catch (e) {
        this.d.log.warn({ err: e }, 'secret change listener threw');
      }
    }
  }

  /** The target a request names, checked to exist and to be visible; 404 for another org's. */
  resolveTarget(user: User, req: TargetRequest): Target {
    switch (req.scope) {
      case 'org': {
        if (!req.org_id) throw badRequest('an org secret needs org_id', 'target_required');
        if (req.repo || req.weaver_id) throw badRequest('an org secret takes org_id only', 'bad_target');
        const org = this.d.orgs.requireRole(user.id, req.org_id, 'member');
        return { orgId: org.id, scope: 'org', target: org.id };
      }
      case 'repo': {
        if (!req.org_id || !req.repo) throw badRequest('a repo secret needs org_id and repo', 'target_required');
        if (req.weaver_id) throw badRequest('a repo secret takes org_id and repo only', 'bad_target');
        const org = this.d.orgs.requireRole(user.id, req.org_id, 'member');
        return { orgId: org.id, scope: 'repo', target: normalizeRepoUrl(req.repo) };
      }
      case 'weaver': {
        if (!req.weaver_id) throw badRequest('a weaver secret needs weaver_id', 'target_required');
        if (req.org_id || req.repo) throw badRequest('a weaver secret takes weaver_id only', 'bad_target');
        const w = this.policy.visibleWeaver(user, req.weaver_id);
        return { orgId: w.org_id, scope: 'weaver', target: w.id };
      }
      default:
        throw badRequest('scope must be org, repo or weaver', 'bad_scope');
    }
  }

  /**
   * Stores a value: a new secret at version 1, or (mode 'set' on an existing one, or 'rotate') a
   * new version that becomes current. 'create' refuses an existing name; 'rotate' a missing one.
   */
  put(user: User, t: Target, name: string, value: Buffer, mode: 'set' | 'create' | 'rotate'): SecretView {
    checkName(name);
    this.policy.requireManage(user, t);
    checkValue(value);
    const row = this.store.transaction(() => {
      const now = nowIso();
      let r = this.store.find(t.orgId, t.scope, t.target, name);
      if (r && mode === 'create') throw new LoomError(409, 'secret_exists', `secret ${name} already exists at that scope; use rotate to add a version`);
      if (!r && mode === 'rotate') throw notFound(`secret ${name} at that scope`);
      if (!r) {
        r = { id: newId(), org_id: t.orgId, scope: t.scope, target: t.target, name, current_version: 0, created_by: user.id, created_at: now, updated_at: now };
        this.store.insertSecret(r);
      }
      const version = this.store.maxVersion(r.id) + 1;
      const kekVersion = this.d.keyring.version;
      const sealed = encryptVersion(this.d.keyring.keyFor(kekVersion), kekVersion, binding(r, version), value);
      this.store.insertVersion({ secret_id: r.id, version, kek_version: kekVersion, wrapped_dek: sealed.wrappedDek, ciphertext: sealed.ciphertext, size: value.length, created_by: user.id, created_at: now });
      this.store.setCurrent(r.id, version, now);
      return { ...r, current_version: version, updated_at: now };
    });
    this.d.log.info({ secret: row.id, org: row.org_id, scope: row.scope, name, version: row.current_version, by: user.id }, 'secret stored');
    this.changed({ orgId: row.org_id, scope: row.scope, target: row.target, name });
    return view(row);
  }

  /** A secret by id, if the user may see its metadata; 404 otherwise. */
  visible(user: User, id: string): SecretRow {
    const r = this.store.get(id);
    if (!r) throw notFound('secret');
    try {
      this.policy.requireView(user, r.org_id);
    } catch {
      throw notFound('secret');
    }
    return r;
  }

  list(user: User, filter: { org_id?: string; scope?: Scope; repo?: string; weaver_id?: string }): SecretView[] {
    let orgIds = this.d.orgs.orgIdsOf(user.id);
    if (filter.org_id) orgIds = [this.d.orgs.requireRole(user.id, filter.org_id, 'member').id];
    let target: string | undefined;
    let scope = filter.scope;
    if (filter.weaver_id) {
      target = this.policy.visibleWeaver(user, filter.weaver_id).id;
      scope = 'weaver';
    } else if (filter.repo) {
      target = normalizeRepoUrl(filter.repo);
      scope = 'repo';
    }
    return this.store.list(orgIds, { ...(scope ? { scope } : {}), ...(target ? { target } : {}) }).map(view);
  }

  versions(user: User, id: string): VersionView[] {
    const r = this.visible(user, id);
    return this.store.versions(r.id).map((v: VersionRow) => ({ version: v.version, current: v.version === r.current_version, size: v.size, created_by: v.created_by, created_at: v.created_at }));
  }

  rotate(user: User, id: string, value: Buffer): SecretView {
    const r = this.visible(user, id);
    return this.put(user, { orgId: r.org_id, scope: r.scope, target: r.target }, r.name, value, 'rotate');
  }

  remove(user: User, id: string): void {
    const r = this.visible(user, id);
    this.policy.requireManage(user, { orgId: r.org_id, scope: r.scope, target: r.target });
    this.store.remove(r.id);
    this.d.log.info({ secret: r.id, org: r.org_id, scope: r.scope, name: r.name, by: user.id }, 'secret removed');
    this.changed({ orgId: r.org_id, scope: r.scope, target: r.target, name: r.name });
  }

  accessLog(user: User, orgId: string | undefined, limit: number): AccessEntry[] {
    if (orgId) {
      const org = this.d.orgs.requireRole(user.id, orgId, 'member');
      this.policy.requireLog(user, org.id);
      return this.store.accessLog(org.id, limit);
    }
    if (!user.is_admin) throw badRequest('give org_id (only server admins read the log of every org)', 'org_required');
    return this.store.accessLog(null, limit);
  }

  // ------------------------------------------------------------ weavers

  /** Mints the weaver's identity (replacing any earlier one); only its hash is stored. */
  mintIdentity(w: Pick<WeaverRef, 'id' | 'org_id'>): string {
    const token = newSecret(IDENTITY_PREFIX);
    this.store.putIdentity(w.id, w.org_id, sha256(token), nowIso());
    return token;
  }

  /** The weaver is gone: its identity stops working and its weaver-scoped secrets go. */
  forgetWeaver(weaverId: string): void {
    const revoked = this.store.removeIdentity(weaverId);
    const removed = this.store.removeForWeaver(weaverId);
    if (revoked || removed.length) this.d.log.info({ weaver: weaverId, secretsRemoved: removed.length }, 'weaver identity revoked');
  }

  /**
   * What a weaver obtains with its identity: every secret that resolves for it, or the named ones.
   * Each read and each refusal is recorded in the access log (never a value).
   */
  fetch(token: string | null, names: string[] | undefined, purpose: string): { weaver: WeaverRef; secrets: ResolvedSecret[] } {
    const denied = (reason: string, extra: Partial<AccessEntry> = {}) =>
      this.store.logAccess({ at: nowIso(), org_id: null, weaver_id: null, name: null, scope: null, target: null, version: null, outcome: 'denied', purpose, reason, ...extra });
    const id = token && token.startsWith(IDENTITY_PREFIX) ? this.store.identityByHash(sha256(token)) : null;
    const w = id ? this.d.weavers?.get(id.weaver_id) ?? null : null;
    if (!id || !w || w.org_id !== id.org_id) {
      denied(id ? 'identity of a weaver that no longer exists' : 'unknown or revoked weaver identity', id ? { weaver_id: id.weaver_id, org_id: id.org_id } : {});
      throw unauthorized('unknown or revoked weaver identity', 'invalid_identity');
    }
    for (const n of names ?? []) checkName(n);
    const resolved = this.resolve(w);
    const want = names ? new Set(names) : null;
    const out: ResolvedSecret[] = [];
    for (const n of want ?? []) {
      if (!resolved.has(n)) denied('no secret of that name resolves for this weaver', { org_id: w.org_id, weaver_id: w.id, name: n });
    }
    for (const [name, r] of resolved) {
      if (want && !want.has(name)) continue;
      const v = this.store.version(r.id, r.current_version);
      const entry = { at: nowIso(), org_id: w.org_id, weaver_id: w.id, name, scope: r.scope, target: r.target, version: r.current_version, purpose };
      try {
        if (!v) throw new Error('current version missing');
        const value = decryptVersion(this.d.keyring.keyFor(v.kek_version), v.kek_version, binding(r, v.version), { wrappedDek: v.wrapped_dek, ciphertext: v.ciphertext });
        out.push({ name, scope: r.scope, version: v.version, value });
        this.store.logAccess({ ...entry, outcome: 'read', reason: null });
      } catch (e) {
        this.store.logAccess({ ...entry, outcome: 'denied', reason: e instanceof LoomError ? e.message : 'cannot decrypt' });
        if (e instanceof LoomError) throw e;
        this.d.log.error({ secret: r.id, weaver: w.id }, 'secret failed to decrypt (tampered or wrong binding)');
      }
    }
    return { weaver: w, secrets: out };
  }

  /**
   * The token a weaver's private repository is cloned with: the named secret as it resolves for
   * the weaver, or else a GIT_TOKEN at weaver or repo scope (an org-wide GIT_TOKEN is never sent
   * to whatever URL a weaver names). Recorded in the access log like any read.
   */
  gitToken(w: WeaverRef, secretName: string | undefined): string | null {
    const name = secretName ?? 'GIT_TOKEN';
    const r = this.resolve(w).get(name);
    const entry = { at: nowIso(), org_id: w.org_id, weaver_id: w.id, name, purpose: 'git-clone' };
    if (!r || (!secretName && r.scope === 'org')) {
      if (!secretName) return null;
      this.store.logAccess({ ...entry, scope: null, target: null, version: null, outcome: 'denied', reason: 'no secret of that name resolves for this weaver' });
      throw badRequest(`secret ${name} does not resolve for this weaver: set it at org, repo or weaver scope (loom secret set ${name} …)`, 'git_secret_not_found');
    }
    const v = this.store.version(r.id, r.current_version);
    if (!v) throw new LoomError(500, 'secret_version_missing', `secret ${name} has no current version`);
    const value = decryptVersion(this.d.keyring.keyFor(v.kek_version), v.kek_version, binding(r, v.version), { wrappedDek: v.wrapped_dek, ciphertext: v.ciphertext });
    this.store.logAccess({ ...entry, scope: r.scope, target: r.target, version: v.version, outcome: 'read', reason: null });
    const token = value.toString('utf8').replace(/\r?\n$/, '');
    value.fill(0);
    if (!token || /[\r\n\0]/.test(token)) throw badRequest(`secret ${name} is not a usable git token (one line of text)`, 'git_secret_unusable');
    return token;
  }

  /** Records a refusal that happened before an identity was established (e.g. a pod token). */
  deny(purpose: string, reason: string, weaver?: WeaverRef): void {
    this.store.logAccess({ at: nowIso(), org_id: weaver?.org_id ?? null, weaver_id: weaver?.id ?? null, name: null, scope: null, target: null, version: null, outcome: 'denied', purpose, reason });
  }

  /** name → the secret that wins for this weaver (weaver > repo > org). */
  resolve(w: WeaverRef): Map<string, SecretRow> {
    let repo: string | null = null;
    if (w.repo) {
      try {
        repo = normalizeRepoUrl(w.repo);
      } catch {
        repo = null;
      }
    }
    const byName = new Map<string, SecretRow>();
    const rank = (s: Scope) => RESOLUTION.indexOf(s);
    for (const r of this.store.candidates(w.org_id, w.id, repo)) {
      const cur = byName.get(r.name);
      if (!cur || rank(r.scope) < rank(cur.scope)) byName.set(r.name, r);
    }
    return byName;
  }

  /** Does a change concern this weaver (same org; its repo or itself when scoped)? */
  concerns(c: SecretChange, w: WeaverRef): boolean {
    if (c.orgId !== w.org_id) return false;
    if (c.scope === 'org') return true;
    if (c.scope === 'weaver') return c.target === w.id;
    try {
      return !!w.repo && normalizeRepoUrl(w.repo) === c.target;
    } catch {
      return false;
    }
  }
}
