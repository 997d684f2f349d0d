/** Names, labels and annotations the Kubernetes backend puts on weaver pods. */

export const MANAGED_BY_LABEL = 'app.kubernetes.io/managed-by';
export const MANAGED_BY_VALUE = 'loom';
export const WEAVER_ID_LABEL = 'loom.dev/weaver-id';
export const ORG_ID_LABEL = 'loom.dev/org-id';
export const OWNER_LABEL = 'loom.dev/owner';

export const LIFETIME_ANNOTATION = 'loom.dev/lifetime-hours';
export const EXPIRES_AT_ANNOTATION = 'loom.dev/expires-at';
export const TAGS_ANNOTATION = 'loom.dev/tags';
/** The weaver id as given, in case it could not be a label value unchanged. */
export const WEAVER_ID_ANNOTATION = 'loom.dev/weaver-id';

/** The label selector of every pod this backend owns. */
export const MANAGED_SELECTOR = `${MANAGED_BY_LABEL}=${MANAGED_BY_VALUE}`;

export const MAIN_CONTAINER = 'weaver';
export const CLONE_CONTAINER = 'git-clone';
export const AUDIT_CONTAINER = 'audit-sidecar';
export const TUNNEL_CONTAINER = 'wireguard';
export const WORKSPACE_VOLUME = 'workspace';
export const WORKSPACE_DIR = '/workspace';

const LABEL_VALUE_RE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const DNS_SUBDOMAIN_RE = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

export function isValidLabelValue(v: string): boolean {
  return v.length <= 63 && LABEL_VALUE_RE.test(v);
}

/**
 * A label value for an arbitrary string: kept as is when valid (UUIDs are), otherwise characters
 * outside [A-Za-z0-9._-] become '-', it is cut to 63 and trimmed to start and end alphanumeric.
 */
export function toLabelValue(v: string): string {
  if (isValidLabelValue(v)) return v;
  let s = v.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 63);
  s = s.replace(/^[^A-Za-z0-9]+/, '').replace(/[^A-Za-z0-9]+$/, '');
  return s;
}

/** `weaver-<id>`; ids are UUIDs, which make a valid pod name. */
export function podName(id: string): string {
  return `weaver-${id.toLowerCase()}`;
}

export function isValidPodName(name: string): boolean {
  return name.length <= 253 && DNS_SUBDOMAIN_RE.test(name);
}
