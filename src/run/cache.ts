/**
 * Job caches: zstd-compressed tar archives in a local store (`$XDG_CACHE_HOME/loom/run-cache`,
 * default `~/.cache/loom/run-cache`). Keys: `<prefix>-<sha256 of the files' contents, globs in
 * sorted order>` or a template with $job_name $job_id $run_id $pipeline_id $head_sha.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, readdir, rename, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { CacheSpec } from './workflow.js';

const run = promisify(execFile);

export function cacheStoreDir(): string {
  const base = process.env['XDG_CACHE_HOME'] || join(homedir(), '.cache');
  return join(base, 'loom', 'run-cache');
}

export interface KeyContext {
  job_name: string;
  job_id: string;
  run_id: string;
  pipeline_id: string;
  head_sha: string;
}

/** Keys become file names: anything outside [A-Za-z0-9._-] is replaced, and no leading dot. */
export function sanitizeKey(k: string): string {
  const s = k.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_').slice(0, 200);
  return s || '_';
}

export function expandTemplate(t: string, ctx: KeyContext): string {
  return t.replace(/\$\{?(job_name|job_id|run_id|pipeline_id|head_sha)\}?/g, (_m, k: keyof KeyContext) => ctx[k]);
}

function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      i++;
      if (glob[i + 1] === '/') { i++; re += '(?:.*/)?'; } else re += '.*';
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

async function walk(root: string, rel = '', out: string[] = []): Promise<string[]> {
  for (const d of await readdir(join(root, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${d.name}` : d.name;
    if (p === '.git' || p === '.loom/.runtime') continue;
    if (d.isDirectory()) await walk(root, p, out);
    else if (d.isFile()) out.push(p);
  }
  return out;
}

async function hashFile(h: ReturnType<typeof createHash>, path: string): Promise<void> {
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
}

export async function cacheKey(spec: CacheSpec, ws: string, ctx: KeyContext): Promise<string> {
  const k = spec.key;
  if (k.files) {
    const files = await walk(ws);
    const h = createHash('sha256');
    for (const g of [...k.files].sort()) {
      const re = globToRegExp(g);
      for (const f of files.filter((f) => re.test(f)).sort()) await hashFile(h, join(ws, f));
    }
    return sanitizeKey(`${k.prefix ? expandTemplate(k.prefix, ctx) : 'files'}-${h.digest('hex')}`);
  }
  const t = expandTemplate(k.template ?? 'default', ctx);
  return sanitizeKey(k.prefix ? `${expandTemplate(k.prefix, ctx)}-${t}` : t);
}

const archive = (key: string) => join(cacheStoreDir(), `${key}.tar.zst`);

/** Restores the first archive found among key and fallback keys; returns the key used or null. */
export async function restoreCache(ws: string, keys: string[]): Promise<string | null> {
  for (const key of keys) {
    const file = archive(key);
    if (!existsSync(file)) continue;
    await run('tar', ['-C', ws, '--zstd', '--no-same-owner', '--no-overwrite-dir', '-xf', file]);
    return key;
  }
  return null;
}

/** Saves the existing paths under `key` (atomically replaces an older archive); false if none exist. */
export async function saveCache(ws: string, key: string, paths: string[]): Promise<boolean> {
  const present = paths.filter((p) => existsSync(join(ws, p)));
  if (present.length === 0) return false;
  await mkdir(cacheStoreDir(), { recursive: true, mode: 0o700 });
  const tmp = `${archive(key)}.${process.pid}.${Date.now()}.tmp`;
  try {
    await run('tar', ['-C', ws, '--zstd', '-cf', tmp, '--', ...present]);
    await rename(tmp, archive(key));
  } finally {
    await rm(tmp, { force: true });
  }
  return true;
}
