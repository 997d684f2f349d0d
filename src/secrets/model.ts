/** Names, values, scopes and repository URLs of secrets: what is accepted, and its one normal form. */
import { badRequest } from '../common/errors.js';

export type Scope = 'org' | 'repo' | 'weaver';
export const SCOPES: readonly Scope[] = ['org', 'repo', 'weaver'];
/** Resolution order: the most specific scope wins. */
export const RESOLUTION: readonly Scope[] = ['weaver', 'repo', 'org'];

export const NAME_RE = /^[A-Z][A-Z0-9_]{0,127}$/;
export const MAX_VALUE_BYTES = 64 * 1024;

export function checkName(name: string): string {
  if (!NAME_RE.test(name)) {
    throw badRequest(`invalid secret name ${JSON.stringify(name.slice(0, 140))}: upper-case letters, digits and _, starting with a letter, at most 128 characters`, 'invalid_secret_name');
  }
  return name;
}

export function checkValue(value: Buffer): Buffer {
  if (value.length === 0) throw badRequest('secret value is empty', 'invalid_secret_value');
  if (value.length > MAX_VALUE_BYTES) throw badRequest(`secret value is ${value.length} bytes; at most ${MAX_VALUE_BYTES} (64 KiB)`, 'secret_too_large');
  return value;
}

/**
 * "HTTPS://GitHub.com:443/Acme/App.git/" → "https://github.com/Acme/App": the form repo-scoped
 * secrets are stored and matched under. Only https; no credentials, query or fragment.
 */
export function normalizeRepoUrl(raw: string): string {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw badRequest(`repo ${JSON.stringify(raw.slice(0, 200))} is not a URL; give an https URL such as https://github.com/org/repo`, 'invalid_repo');
  }
  if (u.protocol !== 'https:') throw badRequest('repo must be an https URL', 'invalid_repo');
  if (u.username || u.password) throw badRequest('repo URL must not contain credentials', 'invalid_repo');
  if (u.search || u.hash) throw badRequest('repo URL must not have a query or fragment', 'invalid_repo');
  const path = u.pathname.replace(/\/+$/, '').replace(/\.git$/i, '').replace(/\/+$/, '');
  if (!path || path === '/') throw badRequest('repo URL has no repository path', 'invalid_repo');
  return `https://${u.host.toLowerCase()}${path}`;
}
