/** The same /api the CLI uses, with the session cookie and the CSRF header on state changes. */
let csrf = '';
export function setCsrf(token: string): void {
  csrf = token;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') headers['x-loom-csrf'] = csrf;
  const res = await fetch(path, { method, headers, credentials: 'same-origin', ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let j: unknown = null;
  try {
    j = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  if (!res.ok) {
    const e = (j as { error?: { code?: string; message?: string } } | null)?.error;
    throw new ApiError(res.status, e?.code ?? `http_${res.status}`, e?.message ?? (text.trim() || res.statusText));
  }
  return j as T;
}

export interface Me {
  user: { id: string; username: string };
  csrf_token: string;
}
export interface Org {
  id: string;
  name: string;
  slug: string;
  is_personal: boolean;
  role: string;
}
export interface Weaver {
  id: string;
  org_id: string;
  owner_user_id: string;
  image: string;
  status: string;
  reason?: string;
  exit_code?: number;
  repo?: string;
  branch?: string;
  created_at: string;
  expires_at: string;
  lifetime_hours: number;
  parent_weaver_id?: string;
  snapshot_id?: string;
}
export interface Snapshot {
  snapshot_id: string;
  org_id: string;
  container_id: string;
  source_kind: string;
  parent_snapshot_id: string | null;
  status: string;
  pinned: boolean;
  expires_at: string | null;
  storage?: string;
  labels: Record<string, string>;
  created_at: string;
}
export interface Container {
  id: string;
  org_id?: string;
  name: string;
  status: string;
  source_snapshot_id?: string;
  created_at: string;
}
export interface Lineage {
  snapshot_id: string;
  lineage: { snapshot_id: string; parent_snapshot_id: string | null; container_id: string; created_at: string; depth: number }[];
  weavers?: { id: string; status: string; created_at: string }[];
}
