/**
 * Secret references of a job: env://VAR, keepass://<alias>#<entry>:<field>, op://<vault>/<item>/<field>.
 * Errors carry the contract's codes and never the value.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import type * as Kdbx from 'kdbxweb';
import { which } from '../provisioners/local/runtime.js';

export type SecretErrorCode =
  | 'SECRETS_PROVIDER_UNAVAILABLE'
  | 'SECRETS_REF_INVALID'
  | 'SECRETS_REF_NOT_FOUND'
  | 'SECRETS_REQUIRED_MISSING'
  | 'SECRETS_UNSAFE_DEBUG_TRACE';

export class SecretError extends Error {
  constructor(readonly code: SecretErrorCode, message: string) {
    super(`${code}: ${message}`);
  }
}

let kdbxweb: typeof Kdbx;
async function loadKdbx(): Promise<void> {
  if (kdbxweb) return;
  // A CommonJS module: its exports arrive as the default export.
  const mod = (await import('kdbxweb')) as typeof Kdbx & { default?: typeof Kdbx };
  kdbxweb = mod.default ?? mod;
  const argon2 = (await import('argon2')).default;
  // KDBX 4 databases derive their key with Argon2; the argon2 package (already a dependency) does it natively.
  kdbxweb.CryptoEngine.setArgon2Impl(async (password, salt, memory, iterations, length, parallelism, type, version) => {
    const raw = await argon2.hash(Buffer.from(password), {
      salt: Buffer.from(salt),
      raw: true,
      memoryCost: memory,
      timeCost: iterations,
      hashLength: length,
      parallelism,
      type: type as 0 | 1 | 2,
      version,
    });
    return raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength) as ArrayBuffer;
  });
}

const aliasEnv = (alias: string) => alias.toUpperCase().replace(/-/g, '_');

function findEntry(group: Kdbx.KdbxGroup, title: string): Kdbx.KdbxEntry | undefined {
  for (const e of group.entries) {
    const t = e.fields.get('Title');
    if ((t instanceof kdbxweb.ProtectedValue ? t.getText() : t) === title) return e;
  }
  for (const g of group.groups) {
    const e = findEntry(g, title);
    if (e) return e;
  }
  return undefined;
}

const dbCache = new Map<string, Promise<Kdbx.Kdbx>>();

async function keepass(alias: string, entry: string, field: string, ref: string): Promise<string | undefined> {
  const a = aliasEnv(alias);
  const path = process.env[`LOOM_KEEPASS_${a}_DB`];
  const password = process.env[`LOOM_KEEPASS_${a}_PASSWORD`];
  if (!path || password === undefined) {
    throw new SecretError('SECRETS_PROVIDER_UNAVAILABLE', `${ref}: KeePass alias "${alias}" is not configured (set LOOM_KEEPASS_${a}_DB and LOOM_KEEPASS_${a}_PASSWORD)`);
  }
  await loadKdbx();
  let db = dbCache.get(path + '\0' + password);
  if (!db) {
    db = (async () => {
      const data = await readFile(path);
      const creds = new kdbxweb.Credentials(kdbxweb.ProtectedValue.fromString(password));
      return kdbxweb.Kdbx.load(new Uint8Array(data).buffer, creds);
    })();
    dbCache.set(path + '\0' + password, db);
  }
  let kdbx: Kdbx.Kdbx;
  try {
    kdbx = await db;
  } catch (e) {
    dbCache.delete(path + '\0' + password);
    throw new SecretError('SECRETS_PROVIDER_UNAVAILABLE', `${ref}: cannot open KeePass database for alias "${alias}": ${(e as Error).message.split('\n')[0]}`);
  }
  const e = findEntry(kdbx.getDefaultGroup(), entry);
  if (!e) return undefined;
  const v = e.fields.get(field);
  if (v === undefined) return undefined;
  return v instanceof kdbxweb.ProtectedValue ? v.getText() : v;
}

async function onePassword(ref: string): Promise<string | undefined> {
  const op = which('op');
  if (!op) throw new SecretError('SECRETS_PROVIDER_UNAVAILABLE', `${ref}: the 1Password CLI (op) is not installed`);
  try {
    const { stdout } = await promisify(execFile)(op, ['read', '--no-newline', ref], { encoding: 'utf8' });
    return stdout;
  } catch (e) {
    const msg = String((e as { stderr?: string }).stderr ?? '');
    if (/not found|isn't an item|no item/i.test(msg)) return undefined;
    throw new SecretError('SECRETS_PROVIDER_UNAVAILABLE', `${ref}: op read failed`);
  }
}

/** Resolves one reference; undefined when the target does not exist. */
export async function resolveSecretRef(ref: string): Promise<string | undefined> {
  let m = /^env:\/\/([A-Za-z_][A-Za-z0-9_]*)$/.exec(ref);
  if (m) return process.env[m[1]!];
  m = /^keepass:\/\/([A-Za-z0-9_-]+)#([^:#]+):([^:#]+)$/.exec(ref);
  if (m) return keepass(m[1]!, m[2]!, m[3]!, ref);
  if (/^op:\/\/[^/]+\/[^/]+\/.+$/.test(ref)) return onePassword(ref);
  throw new SecretError('SECRETS_REF_INVALID', `${ref} is not a supported secret reference`);
}
