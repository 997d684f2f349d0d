/**
 * Cloning a weaver's repository on the host, into its workspace — as an untrusted operation:
 * git runs with no system or global configuration, no credential helpers, an empty HOME and no
 * inherited environment, as an unprivileged uid, only https, no redirects, to an address that was
 * resolved and checked once and then pinned (curl's resolve list) so a second DNS answer cannot
 * point it elsewhere. Size and time are capped. Failures map to a few fixed messages so the reason
 * is not a probe of the host's network (no certificate subjects, no transport detail).
 */
import { spawn } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { promises as fsp } from 'node:fs';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inList, internalClass, parseCidrs } from '../../common/netaddr.js';
import { formatBytes } from '../../common/quantity.js';
import { run } from './util.js';

/** "https://github.com/user/repo.git" → "repo". */
export function repoName(url: string): string {
  const last = url.replace(/[?#].*$/, '').replace(/\/+$/, '').split('/').pop() ?? '';
  const name = last.replace(/\.git$/, '');
  return /^[A-Za-z0-9._-]+$/.test(name) && name !== '.' && name !== '..' ? name : 'repo';
}

export interface GitOptions {
  /** CIDRs clones may reach although internal (loopback, private, link-local, ULA, CGNAT, metadata). */
  allowedNetworks: string[];
  maxBytes: number;
  timeoutSecs: number;
  /** CA bundle used instead of the system's; '' for the system's. */
  caFile: string;
}

export const DEFAULT_GIT_OPTIONS: GitOptions = { allowedNetworks: [], maxBytes: 1024 ** 3, timeoutSecs: 300, caFile: '' };

export interface CloneResult {
  ok: boolean;
  /** One of a few fixed messages on failure. */
  message: string;
  dir: string;
}

/** The uid git runs as: the weaver user's, or nobody when that is root. */
const NOBODY = 65534;

/** The host's resolved, checked address to pin, or a refusal. */
export async function checkDestination(url: URL, allowed: readonly string[]): Promise<{ ip: string } | { error: string }> {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  let ips: string[];
  if (isIP(host)) ips = [host];
  else {
    try {
      ips = (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);
    } catch {
      return { error: `cannot resolve the repository host ${host}` };
    }
  }
  const allow = parseCidrs(allowed);
  // Every address must pass, not just the one picked: a name that also resolves inside is refused.
  for (const ip of ips) {
    const cls = internalClass(ip);
    if (cls && !inList(allow, ip)) {
      return { error: `the repository host ${host} resolves to an internal (${cls}) address; clones may only reach public addresses unless the operator allows the network (LOOM_SERVER_WEAVER_GIT_ALLOWED_NETWORKS)` };
    }
  }
  if (ips.length === 0) return { error: `cannot resolve the repository host ${host}` };
  return { ip: ips[0]! };
}

/** git's stderr → one fixed, useful message. */
export function classifyGitFailure(stderr: string, branch: string | undefined): string {
  const s = stderr.toLowerCase();
  if (branch && (s.includes('remote branch') && s.includes('not found'))) return `branch ${branch} was not found in the repository`;
  if (/authentication failed|could not read username|could not read password|terminal prompts disabled|http 401|http 403|error: 40[13]/.test(s)) {
    return 'the repository needs credentials; only public repositories can be cloned';
  }
  if (/repository .* not found|http 404|error: 404|not found/.test(s)) return 'the repository was not found';
  if (/ssl|tls|certificate|gnutls|handshake/.test(s)) return 'a secure (TLS) connection to the repository server could not be made';
  if (/redirect/.test(s)) return 'the repository server answered with a redirect, which clones do not follow';
  if (/could not resolve host/.test(s)) return 'cannot resolve the repository host';
  if (/fatal: .*(not a git repository|does not appear to be a git repository|invalid|protocol error|bad pack|unexpected)/.test(s)) {
    return 'the server did not answer as a git repository';
  }
  return 'cannot reach the repository server';
}

/** Total bytes of regular files under dir (symlinks not followed). */
async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  const walk = async (d: string): Promise<void> => {
    let ents;
    try {
      ents = await fsp.readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) total += await fsp.lstat(p).then((s) => s.size, () => 0);
    }
  };
  await walk(dir);
  return total;
}

/**
 * `git clone --depth 1 [--branch B] -- URL <workspace>/<name>` under the rules above, then the
 * tree is chowned to uid:gid (the weaver user).
 */
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

export async function cloneRepo(
  url: string, branch: string | undefined, workspace: string, uid: number, gid: number, opts: GitOptions = DEFAULT_GIT_OPTIONS,
  tokenSource?: () => Promise<string | null>,
): Promise<CloneResult> {
  const dir = join(workspace, repoName(url));
  const fail = (message: string): CloneResult => ({ ok: false, message, dir });
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return fail('the repository URL is not valid');
  }
  if (u.protocol !== 'https:' || u.username || u.password) return fail('the repository URL must be https without credentials');
  const dest = await checkDestination(u, opts.allowedNetworks);
  if ('error' in dest) return fail(dest.error);
  const port = u.port || '443';
  const host = u.hostname.replace(/^\[|\]$/g, '');
  const pinned = dest.ip.includes(':') ? `[${dest.ip}]` : dest.ip;

  const cloneUid = uid === 0 ? NOBODY : uid;
  const cloneGid = uid === 0 ? NOBODY : gid;
  const home = await fsp.mkdtemp(join(tmpdir(), 'loom-git-home-'));
  try {
    // git refuses a work tree whose path it cannot walk, and the data dir is not open to other
    // users: clone into a private staging dir under the temp dir, then move the tree in as root.
    await fsp.chown(home, cloneUid, cloneGid);
    const stage = join(home, 'clone');
    const config = [
      'credential.helper=', 'core.askPass=', 'core.hooksPath=/dev/null', 'core.fsmonitor=false',
      'protocol.allow=never', 'protocol.https.allow=always', 'http.followRedirects=false',
      `http.curloptResolve=${host}:${port}:${pinned}`, 'submodule.recurse=false', 'init.templateDir=',
      ...(opts.caFile ? [`http.sslCAInfo=${opts.caFile}`] : []),
    ].flatMap((c) => ['-c', c]);
    const args = [`--fsize=${opts.maxBytes}`, '--', 'git', ...config, 'clone', '--quiet', '--depth', '1', '--no-tags', ...(branch ? ['--branch', branch] : []), '--', url, stage];
    const env: NodeJS.ProcessEnv = {
      PATH: '/usr/local/bin:/usr/bin:/bin',
      HOME: home,
      LC_ALL: 'C',
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_CONFIG_GLOBAL: '/dev/null',
      GIT_TERMINAL_PROMPT: '0',
      GIT_ASKPASS: '/bin/false',
      SSH_ASKPASS: '/bin/false',
      GIT_PROTOCOL_FROM_USER: '0',
    };
    const token = tokenSource ? await tokenSource() : null;
    if (token) Object.assign(env, tokenEnv(url, token));
    const r = await new Promise<{ code: number | null; stderr: string; timedOut: boolean; tooBig: boolean }>((resolve) => {
      // SIGXFSZ ignored (inherited across exec): a write past the cap fails with EFBIG and git says
      // "File too large" instead of a helper dying without a word.
      const child = spawn('/bin/sh', ['-c', 'trap "" XFSZ; exec prlimit "$@"', 'sh', ...args], { env, uid: cloneUid, gid: cloneGid, cwd: home, stdio: ['ignore', 'ignore', 'pipe'], detached: true });
      let stderr = '';
      let timedOut = false;
      let tooBig = false;
      const killAll = () => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          /* gone */
        }
      };
      const timer = setTimeout(() => {
        timedOut = true;
        killAll();
      }, opts.timeoutSecs * 1000);
      // The file-size rlimit stops any one file past the cap; this catches the sum.
      const meter = setInterval(() => {
        void treeBytes(stage).then((b) => {
          if (b > opts.maxBytes) {
            tooBig = true;
            killAll();
          }
        });
      }, 500);
      child.stderr!.on('data', (b: Buffer) => {
        if (stderr.length < 64 * 1024) stderr += b.toString('utf8');
      });
      child.on('error', (e) => {
        clearTimeout(timer);
        clearInterval(meter);
        resolve({ code: -1, stderr: e.message, timedOut, tooBig });
      });
      child.on('close', (code) => {
        clearTimeout(timer);
        clearInterval(meter);
        resolve({ code, stderr, timedOut, tooBig: tooBig || /signal 25\b|file size limit exceeded|file too large/i.test(stderr) });
      });
    });
    if (r.code === 0 && (await treeBytes(stage)) > opts.maxBytes) r.tooBig = true;
    if (r.code !== 0 || r.tooBig) {
      if (r.tooBig) return fail(`the repository is larger than the limit of ${formatBytes(opts.maxBytes)} (LOOM_SERVER_WEAVER_GIT_MAX_BYTES)`);
      if (r.timedOut) return fail(`the clone took longer than the limit of ${opts.timeoutSecs} s (LOOM_SERVER_WEAVER_GIT_TIMEOUT_SECS)`);
      return fail(classifyGitFailure(r.stderr, branch));
    }
    await fsp.rm(dir, { recursive: true, force: true });
    try {
      await fsp.rename(stage, dir);
    } catch {
      const cp = await run('cp', ['-a', '--no-dereference', '--', stage, dir], { timeoutMs: opts.timeoutSecs * 1000 });
      if (cp.code !== 0) return fail('the cloned tree could not be moved into the workspace');
    }
    await run('chown', ['-R', '--no-dereference', `${uid}:${gid}`, dir]);
    await fsp.chown(workspace, uid, gid).catch(() => undefined);
    return { ok: true, message: '', dir };
  } finally {
    await fsp.rm(home, { recursive: true, force: true }).catch(() => undefined);
  }
}
