/** Cloning a weaver's repository on the host, into its workspace. */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { run } from './util.js';

/** "https://github.com/user/repo.git" → "repo". */
export function repoName(url: string): string {
  const last = url.replace(/[?#].*$/, '').replace(/\/+$/, '').split('/').pop() ?? '';
  const name = last.replace(/\.git$/, '');
  return /^[A-Za-z0-9._-]+$/.test(name) && name !== '.' && name !== '..' ? name : 'repo';
}

export interface CloneResult {
  ok: boolean;
  /** git's message on failure, e.g. "fatal: unable to access '…': Could not resolve host: …". */
  message: string;
  dir: string;
}

/**
 * The token a private repository is cloned with, as git config in the git child's environment
 * (GIT_CONFIG_COUNT/KEY/VALUE): never in argv (world-readable in /proc/<pid>/cmdline) nor in the
 * URL (echoed in messages); a process environment is readable only by its owner and root.
 * The header is scoped to this URL and redirects are refused, so it goes to no other host.
 */
export function tokenEnv(url: string, token: string): Record<string, string> {
  const cred = token.includes(':') ? token : `x-access-token:${token}`;
  return {
    GIT_CONFIG_COUNT: '2',
    GIT_CONFIG_KEY_0: `http.${url}.extraHeader`,
    GIT_CONFIG_VALUE_0: `Authorization: Basic ${Buffer.from(cred).toString('base64')}`,
    GIT_CONFIG_KEY_1: 'http.followRedirects',
    GIT_CONFIG_VALUE_1: 'false',
  };
}

/** `git clone --depth 1 [--branch B] -- URL <workspace>/<name>`, then chown to uid/gid. */
export async function cloneRepo(url: string, branch: string | undefined, workspace: string, uid: number, gid: number, timeoutMs = 300_000, tokenSource?: () => Promise<string | null>): Promise<CloneResult> {
  const dir = join(workspace, repoName(url));
  const args = ['clone', '--depth', '1', ...(branch ? ['--branch', branch] : []), '--', url, dir];
  const token = tokenSource ? await tokenSource() : null;
  // No tracing that could print the header.
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^GIT_(TRACE|CURL_VERBOSE|CONFIG_)/.test(k)));
  const r = await run('git', args, {
    timeoutMs,
    env: { ...base, GIT_TERMINAL_PROMPT: '0', GIT_ASKPASS: '/bin/false', LC_ALL: 'C', ...(token ? tokenEnv(url, token) : {}) },
  }).catch((e: Error) => ({ code: -1, stderr: e.message, stdout: '', timedOut: false, signal: null }));
  if (r.code !== 0) {
    const lines = r.stderr.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('Cloning into'));
    const message = r.timedOut ? `timed out after ${Math.round(timeoutMs / 1000)} s` : lines.join('; ') || `git exited ${r.code}`;
    return { ok: false, message, dir };
  }
  await run('chown', ['-R', `${uid}:${gid}`, dir]);
  await fsp.chown(workspace, uid, gid).catch(() => undefined);
  return { ok: true, message: '', dir };
}
