import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export interface Credential {
  access_token: string;
  username?: string;
  saved_at: string;
}

type Store = { version: 1; servers: Record<string, Credential> };

/** ~/.loom/credentials.json, mode 0600, keyed by server URL (LOOM_CONFIG_DIR overrides ~/.loom). */
export function credentialsPath(): string {
  return join(process.env['LOOM_CONFIG_DIR'] ?? join(homedir(), '.loom'), 'credentials.json');
}

export const normalizeServerUrl = (url: string): string => url.replace(/\/+$/, '');

function read(): Store {
  try {
    const s = JSON.parse(readFileSync(credentialsPath(), 'utf8')) as Store;
    if (s && typeof s === 'object' && s.servers && typeof s.servers === 'object') return s;
  } catch {
    /* missing or unreadable: start empty */
  }
  return { version: 1, servers: {} };
}

function write(s: Store): void {
  const path = credentialsPath();
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(s, null, 2) + '\n', { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

export function loadCredential(server: string): Credential | null {
  return read().servers[normalizeServerUrl(server)] ?? null;
}

export function saveCredential(server: string, cred: Credential): void {
  const s = read();
  s.servers[normalizeServerUrl(server)] = cred;
  write(s);
}

export function removeCredential(server: string): boolean {
  const s = read();
  const key = normalizeServerUrl(server);
  if (!s.servers[key]) return false;
  delete s.servers[key];
  write(s);
  return true;
}
