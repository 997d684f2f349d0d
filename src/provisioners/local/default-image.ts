/**
 * The default local image, built offline from the host's busybox-static: /bin/busybox plus
 * applet symlinks, /etc/passwd (root, loom uid 1000 with home /workspace), /etc/group,
 * /etc/profile with a PS1, /workspace owned by 1000, /tmp 1777. Its process is a login shell.
 * It is written as a one-layer OCI layout and imported like any other image.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join, dirname } from 'node:path';
import { LoomError } from '../../common/errors.js';
import type { ImageStore, LocalImage } from './images.js';
import { run, runOk, exists } from './util.js';

export const DEFAULT_LOCAL_IMAGE = 'loom/default:latest';
/** The same busybox image under the name tests and tiny weavers use (the dev image is the default when built). */
export const MINIMAL_LOCAL_IMAGE = 'loom/minimal:latest';
/** Names the built-in busybox image is stored under (built on first use). */
export const isBuiltinImage = (name: string): boolean => name === DEFAULT_LOCAL_IMAGE || name === MINIMAL_LOCAL_IMAGE || name === 'loom/minimal' || name === 'loom/default';

const BUSYBOX_CANDIDATES = ['/bin/busybox', '/usr/bin/busybox'];

export async function findStaticBusybox(): Promise<string> {
  for (const p of BUSYBOX_CANDIDATES) {
    if (!(await exists(p))) continue;
    const f = await run('file', ['-L', p]).catch(() => null);
    // `file` may be missing; then trust the path (Debian's busybox-static installs /bin/busybox).
    if (!f || f.code !== 0 || /statically linked|static-pie/.test(f.stdout)) return p;
  }
  throw new LoomError(503, 'default_image', 'cannot build the default image: no static busybox (install busybox-static)');
}

const sha = (b: Buffer | string) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Builds the default image's root filesystem into `dir` (which must not exist). */
export async function buildDefaultRootfs(dir: string): Promise<void> {
  const busybox = await findStaticBusybox();
  await fsp.mkdir(dir, { recursive: true });
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'root', 'proc', 'sys', 'dev', 'var/tmp', 'home', 'workspace', 'tmp']) {
    await fsp.mkdir(join(dir, d), { recursive: true });
  }
  await fsp.copyFile(busybox, join(dir, 'bin/busybox'));
  await fsp.chmod(join(dir, 'bin/busybox'), 0o755);
  const list = await runOk(join(dir, 'bin/busybox'), ['--list-full']);
  for (const rel of list.stdout.split('\n').map((l) => l.trim()).filter(Boolean)) {
    if (rel === 'bin/busybox') continue;
    const target = join(dir, rel);
    await fsp.mkdir(dirname(target), { recursive: true });
    await fsp.symlink('/bin/busybox', target).catch(() => undefined);
  }
  await fsp.writeFile(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nloom:x:1000:1000:loom:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  await fsp.writeFile(join(dir, 'etc/group'), 'root:x:0:\ntty:x:5:\nloom:x:1000:\nnogroup:x:65534:\n');
  await fsp.writeFile(join(dir, 'etc/shadow'), 'root:!:19000::::::\nloom:!:19000::::::\n', { mode: 0o600 });
  await fsp.writeFile(
    join(dir, 'etc/profile'),
    [
      'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'export HOME="${HOME:-/workspace}"',
      'export PS1=\'\\u@\\h:\\w\\$ \'',
      'export ENV=/etc/profile',
      '',
    ].join('\n'),
  );
  await fsp.writeFile(join(dir, 'etc/hosts'), '127.0.0.1\tlocalhost\n::1\tlocalhost\n');
  await fsp.writeFile(join(dir, 'etc/os-release'), 'NAME="Loom default (busybox)"\nID=loom\n');
  await fsp.chmod(join(dir, 'tmp'), 0o1777);
  await fsp.chmod(join(dir, 'var/tmp'), 0o1777);
  await fsp.chmod(join(dir, 'root'), 0o700);
  await fsp.chown(join(dir, 'workspace'), 1000, 1000);
}

/** Writes `rootfs` as a one-layer OCI image layout at `layoutDir` with ref "latest". */
export async function writeSingleLayerLayout(rootfs: string, layoutDir: string, config: {
  cmd: string[]; env: string[]; workingDir: string; user: string; entrypoint?: string[];
}): Promise<void> {
  const blobs = join(layoutDir, 'blobs', 'sha256');
  await fsp.mkdir(blobs, { recursive: true });
  const layerPath = join(layoutDir, 'layer.tar');
  await runOk('tar', ['--numeric-owner', '--sort=name', '--mtime=@0', '-C', rootfs, '-cf', layerPath, '.'], { timeoutMs: 120_000 });
  const layer = await fsp.readFile(layerPath);
  const layerDigest = sha(layer);
  await fsp.rename(layerPath, join(blobs, layerDigest.slice(7)));
  const cfg = Buffer.from(JSON.stringify({
    architecture: process.arch === 'x64' ? 'amd64' : process.arch,
    os: 'linux',
    config: { User: config.user, Env: config.env, Entrypoint: config.entrypoint ?? null, Cmd: config.cmd, WorkingDir: config.workingDir },
    rootfs: { type: 'layers', diff_ids: [layerDigest] },
    history: [{ created_by: 'loom default-image builder (busybox-static)' }],
  }));
  const cfgDigest = sha(cfg);
  await fsp.writeFile(join(blobs, cfgDigest.slice(7)), cfg);
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: cfgDigest, size: cfg.length },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layer.length }],
  }));
  const mDigest = sha(manifest);
  await fsp.writeFile(join(blobs, mDigest.slice(7)), manifest);
  await fsp.writeFile(join(layoutDir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await fsp.writeFile(join(layoutDir, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: mDigest, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }],
  }));
}

/** Builds and stores the busybox image (as loom/default and loom/minimal) unless the store already has both. */
export async function ensureDefaultImage(store: ImageStore, scratch: string): Promise<LocalImage> {
  const have = await store.get(DEFAULT_LOCAL_IMAGE);
  if (have && (await store.get(MINIMAL_LOCAL_IMAGE))) return have;
  const dir = join(scratch, `default-image-${process.pid}-${Date.now()}`);
  try {
    await buildDefaultRootfs(join(dir, 'rootfs'));
    await writeSingleLayerLayout(join(dir, 'rootfs'), join(dir, 'layout'), {
      cmd: ['/bin/sh', '-l'],
      env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'ENV=/etc/profile'],
      workingDir: '/workspace',
      user: '1000:1000',
    });
    const img = have ?? (await store.import(join(dir, 'layout'), DEFAULT_LOCAL_IMAGE));
    if (!(await store.get(MINIMAL_LOCAL_IMAGE))) await store.import(join(dir, 'layout'), MINIMAL_LOCAL_IMAGE);
    return img;
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}
