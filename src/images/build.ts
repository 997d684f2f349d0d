/**
 * Builds a weaver image from Debian packages, offline from any registry: mmdebstrap makes the
 * root filesystem from the operator's apt sources, we add the `loom` user (uid 1000), /workspace,
 * a login shell with a prompt, the C.UTF-8 locale and CA certificates, write it as a one-layer OCI
 * image (deterministic: sorted entries, numeric owners, mtimes clamped to SOURCE_DATE_EPOCH, no
 * timestamps in the config) and import it into the image store through umoci/skopeo like any
 * other image.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { LoomError } from '../common/errors.js';

export interface BuildRequest {
  /** Name to store the image under, e.g. "loom/dev:bookworm". */
  name: string;
  /** Debian suite, e.g. "bookworm". */
  suite: string;
  /** Debian packages to install on top of the essential set (ca-certificates is always added). */
  packages: string[];
  /** Seconds since the epoch every file's mtime is clamped to (default: BUILD_EPOCH). */
  sourceDateEpoch?: number;
}

export interface BuildSources {
  /** The Debian mirror, e.g. "http://deb.debian.org/debian". */
  mirror: string;
  /** Extra one-line apt sources the operator configured ("deb http://… suite component…"). */
  extraSources: string[];
}

export type BuildProgress = (p: { phase: string; line?: string }) => void;

/** Fixed default so the same inputs give the same digest whatever the day (2024-01-01). */
export const BUILD_EPOCH = 1704067200;

export const MAX_PACKAGES = 200;
const PACKAGE_RE = /^[a-z0-9][a-z0-9+.-]{0,99}$/;
const SUITE_RE = /^[a-z][a-z0-9-]{1,31}$/;
const APT_SOURCE_RE = /^deb(?:\s+\[[^\]\n]*\])?\s+(?:https?|file):\/\/\S+\s+\S+(?:\s+[A-Za-z0-9_./-]+)*$/;

/** Checks a build request; throws a 400 naming the bad field. Package names are Debian's (no option injection). */
export function validateBuild(r: BuildRequest): void {
  if (!SUITE_RE.test(r.suite)) throw new LoomError(400, 'invalid_suite', `invalid suite ${JSON.stringify(r.suite)}: a Debian codename such as bookworm`);
  if (r.packages.length > MAX_PACKAGES) throw new LoomError(400, 'too_many_packages', `at most ${MAX_PACKAGES} packages`);
  for (const p of r.packages) {
    if (!PACKAGE_RE.test(p)) throw new LoomError(400, 'invalid_package', `invalid package name ${JSON.stringify(p)}: lower-case letters, digits and + . -, starting with a letter or digit`);
  }
  if (r.sourceDateEpoch !== undefined && !(Number.isInteger(r.sourceDateEpoch) && r.sourceDateEpoch >= 0 && r.sourceDateEpoch < 2 ** 32)) {
    throw new LoomError(400, 'invalid_epoch', 'source_date_epoch must be a whole number of seconds');
  }
}

/** Validates an operator's apt source line (config load uses it). */
export function isAptSourceLine(s: string): boolean {
  return APT_SOURCE_RE.test(s.trim());
}

/** Packages every built image has: what the login shell, TLS and `loom exec` rely on. */
const BASE_PACKAGES = ['ca-certificates'];

const DPKG_EXCLUDES = [
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/locale/*',
  'path-include=/usr/share/locale/locale.alias',
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
];

/**
 * Runs mmdebstrap into `dir/rootfs`, customizes it, and writes an OCI layout at `dir/layout`
 * with ref "latest". Returns the layout path. `dir` is the caller's scratch directory.
 */
export async function buildImageLayout(req: BuildRequest, sources: BuildSources, dir: string, progress: BuildProgress, signal?: AbortSignal): Promise<string> {
  validateBuild(req);
  const epoch = req.sourceDateEpoch ?? BUILD_EPOCH;
  const rootfs = join(dir, 'rootfs');
  const packages = [...new Set([...BASE_PACKAGES, ...req.packages])].sort();
  progress({ phase: `mmdebstrap ${req.suite}: ${packages.join(' ')}` });
  const args = [
    '--mode=root', '--variant=apt', '--format=directory', '--quiet',
    `--include=${packages.join(',')}`,
    ...DPKG_EXCLUDES.map((o) => `--dpkgopt=${o}`),
    '--aptopt=Acquire::Retries "2"',
    req.suite, rootfs,
    // mmdebstrap reads "deb …" lines as well as bare mirror URLs
    `deb ${sources.mirror} ${req.suite} main`,
    ...sources.extraSources,
  ];
  await runStreaming('mmdebstrap', args, { SOURCE_DATE_EPOCH: String(epoch), LC_ALL: 'C.UTF-8' }, (line) => progress({ phase: 'mmdebstrap', line }), signal);
  progress({ phase: 'adding the loom user, /workspace, the shell and locale' });
  const shell = await customizeRootfs(rootfs, epoch);
  progress({ phase: 'writing the OCI layer' });
  const layout = join(dir, 'layout');
  await writeLayout(rootfs, layout, epoch, {
    cmd: [shell, '-l'],
    env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C.UTF-8', 'LC_ALL=C.UTF-8'],
    workingDir: '/workspace',
    user: '1000:1000',
    history: `loom image build: mmdebstrap ${req.suite} ${packages.join(',')}`,
  }, signal);
  return layout;
}

const PROMPT = [
  '# Loom: a prompt that says where you are (set by loom image build)',
  'if [ -n "$BASH_VERSION" ]; then',
  '  PS1=\'\\[\\e[1;32m\\]\\u@\\h\\[\\e[0m\\]:\\[\\e[1;34m\\]\\w\\[\\e[0m\\]\\$ \'',
  'else',
  '  PS1=\'$(id -un)@$(hostname):$PWD\\$ \'',
  'fi',
  'export LANG=C.UTF-8',
  '',
].join('\n');

/** Adds what a weaver expects; everything written has fixed content so builds stay reproducible. Returns the login shell. */
export async function customizeRootfs(rootfs: string, epoch: number): Promise<string> {
  const shell = (await exists(join(rootfs, 'bin/bash'))) || (await exists(join(rootfs, 'usr/bin/bash'))) ? '/bin/bash' : '/bin/sh';
  const day = Math.floor(epoch / 86400);
  const etc = join(rootfs, 'etc');
  const passwd = await fsp.readFile(join(etc, 'passwd'), 'utf8');
  if (!/^loom:/m.test(passwd) && !/^[^:]*:[^:]*:1000:/m.test(passwd)) {
    await fsp.appendFile(join(etc, 'passwd'), `loom:x:1000:1000:loom:/home/loom:${shell}\n`);
    await fsp.appendFile(join(etc, 'group'), 'loom:x:1000:\n');
    await fsp.appendFile(join(etc, 'shadow'), `loom:!:${day}:0:99999:7:::\n`);
    if (await exists(join(etc, 'gshadow'))) await fsp.appendFile(join(etc, 'gshadow'), 'loom:!::\n');
  }
  for (const d of ['home/loom', 'workspace']) {
    await fsp.mkdir(join(rootfs, d), { recursive: true });
    await fsp.chown(join(rootfs, d), 1000, 1000);
    await fsp.chmod(join(rootfs, d), 0o755);
  }
  await fsp.mkdir(join(etc, 'profile.d'), { recursive: true });
  await fsp.writeFile(join(etc, 'profile.d/loom.sh'), PROMPT);
  await fsp.writeFile(join(etc, 'default/locale'), 'LANG=C.UTF-8\n').catch(() => undefined);
  // Per-build noise: logs with timestamps, caches, the machine id (systemd makes one at boot).
  for (const rel of ['var/log/dpkg.log', 'var/log/alternatives.log', 'var/log/bootstrap.log', 'var/cache/ldconfig/aux-cache', 'etc/machine-id', 'var/lib/dbus/machine-id']) {
    await fsp.rm(join(rootfs, rel), { force: true });
  }
  for (const d of ['var/log/apt', 'var/cache/apt', 'var/lib/apt/lists', 'tmp', 'var/tmp']) {
    await emptyDir(join(rootfs, d));
  }
  await fsp.rm(join(etc, 'machine-id'), { force: true });
  await fsp.writeFile(join(etc, 'machine-id'), '');
  for (const old of await fsp.readdir(join(rootfs, 'var/cache/debconf')).catch(() => [] as string[])) {
    if (old.endsWith('-old')) await fsp.rm(join(rootfs, 'var/cache/debconf', old), { force: true });
  }
  for (const old of await fsp.readdir(join(rootfs, 'var/lib/dpkg')).catch(() => [] as string[])) {
    if (old.endsWith('-old')) await fsp.rm(join(rootfs, 'var/lib/dpkg', old), { force: true });
  }
  // The runtime mounts /dev; device nodes in a layer only get in the way of the unpacker.
  await emptyDir(join(rootfs, 'dev'));
  await fsp.chmod(join(rootfs, 'tmp'), 0o1777);
  return shell;
}

async function emptyDir(d: string): Promise<void> {
  for (const e of await fsp.readdir(d).catch(() => [] as string[])) await fsp.rm(join(d, e), { recursive: true, force: true });
}

async function exists(p: string): Promise<boolean> {
  return fsp.lstat(p).then(() => true, () => false);
}

const sha = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function shaFile(path: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of createReadStream(path)) {
    h.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { digest: `sha256:${h.digest('hex')}`, size };
}

/** A one-layer OCI image layout of `rootfs`: sorted, numeric owners, mtimes clamped to epoch, no timestamps elsewhere. */
export async function writeLayout(rootfs: string, layoutDir: string, epoch: number, config: {
  cmd: string[]; env: string[]; workingDir: string; user: string; history: string;
}, signal?: AbortSignal): Promise<void> {
  const blobs = join(layoutDir, 'blobs', 'sha256');
  await fsp.mkdir(blobs, { recursive: true });
  const layerPath = join(layoutDir, 'layer.tar');
  await runStreaming('tar', [
    // --xattrs makes a pax archive: its extended headers must not carry atime/ctime or the tar's pid.
    '--numeric-owner', '--sort=name', `--mtime=@${epoch}`, '--clamp-mtime', '--format=posix',
    '--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime', '--xattrs', '--xattrs-include=security.capability',
    '-C', rootfs, '-cf', layerPath, '.',
  ], {}, () => undefined, signal);
  const layer = await shaFile(layerPath);
  await fsp.rename(layerPath, join(blobs, layer.digest.slice(7)));
  const created = new Date(epoch * 1000).toISOString();
  const cfg = Buffer.from(JSON.stringify({
    created,
    architecture: process.arch === 'x64' ? 'amd64' : process.arch,
    os: 'linux',
    config: { User: config.user, Env: config.env, Entrypoint: null, Cmd: config.cmd, WorkingDir: config.workingDir },
    rootfs: { type: 'layers', diff_ids: [layer.digest] },
    history: [{ created, created_by: config.history }],
  }));
  const cfgDigest = sha(cfg);
  await fsp.writeFile(join(blobs, cfgDigest.slice(7)), cfg);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfgDigest, size: cfg.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layer.digest, size: layer.size }],
  }));
  const mDigest = sha(manifest);
  await fsp.writeFile(join(blobs, mDigest.slice(7)), manifest);
  await fsp.writeFile(join(layoutDir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await fsp.writeFile(join(layoutDir, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: mDigest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
  }));
}

/** Runs argv (no shell), hands each stderr/stdout line to onLine, throws a LoomError with the last lines on failure. */
function runStreaming(cmd: string, args: string[], env: Record<string, string>, onLine: (l: string) => void, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    const tail: string[] = [];
    const take = (l: string) => {
      tail.push(l);
      if (tail.length > 8) tail.shift();
      onLine(l);
    };
    createInterface({ input: child.stdout }).on('line', take);
    createInterface({ input: child.stderr }).on('line', take);
    const onAbort = () => child.kill('SIGKILL');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('error', (e) => {
      signal?.removeEventListener('abort', onAbort);
      reject(new LoomError(503, 'image_build', `${cmd} cannot run: ${e.message} (install it: see scripts/apt-packages.txt)`));
    });
    child.on('close', (code, sig) => {
      signal?.removeEventListener('abort', onAbort);
      if (code === 0) return resolve();
      if (signal?.aborted) return reject(new LoomError(504, 'image_build_timeout', `${cmd} was stopped: ${String(signal.reason ?? 'aborted')}`));
      const why = tail.filter((l) => /^E:|error|unable|fail/i.test(l)).slice(-3).join('; ') || tail.slice(-2).join('; ') || `exit ${code ?? sig}`;
      reject(new LoomError(400, 'image_build_failed', `${cmd} failed: ${why}`));
    });
  });
}
