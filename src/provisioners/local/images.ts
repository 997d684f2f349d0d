/**
 * ImageStore: OCI images under <dataDir>/local/images.
 *
 *   oci/                 one shared OCI image layout (blobs deduplicated); tag = key of a name
 *   rootfs/<hex>/rootfs  each image unpacked once per manifest digest (umoci raw unpack)
 *   index.json           name → { digest, source, importedAt }
 *
 * Imports go through skopeo (oci layout dir, oci-archive tar, docker-archive tar); registry pulls
 * through `skopeo copy docker://…` with a short timeout.
 */
import { shiftOwnership } from './idmap.js';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join, basename, resolve as resolvePath } from 'node:path';
import { LoomError, errorMessage } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { exists, readJson, run, writeJsonAtomic } from './util.js';
import { KeyedMutex } from '../../common/keyed-mutex.js';

export interface LocalImage {
  /** Normalized reference, e.g. "loom/default:latest". */
  name: string;
  /** Manifest digest, "sha256:…". */
  digest: string;
  /** Where it came from: "import:/path", "pull:docker://…", "builtin". */
  source: string;
  importedAt: string;
}

/** The part of an OCI image config a runtime honours. */
export interface ImageRunConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  user: string;
}

export interface ResolvedImage {
  image: LocalImage;
  /** Unpacked root filesystem (read-only lower layer for weavers). */
  rootfs: string;
  config: ImageRunConfig;
}

interface IndexFile {
  images: Record<string, LocalImage>;
}

interface OciIndex {
  manifests?: { mediaType?: string; digest: string; annotations?: Record<string, string> }[];
}

interface OciManifest {
  config: { digest: string };
  layers: { digest: string; mediaType: string }[];
}

const REF_ANNOTATION = 'org.opencontainers.image.ref.name';

/**
 * "busybox" → "busybox:latest"; "docker.io/library/busybox:1" → "busybox:1" (Docker's familiar
 * form, so names recorded by `docker save` match what users type); keeps tags and digests.
 */
export function normalizeRef(ref: string): string {
  const r = ref.trim().replace(/^(?:docker\.io|index\.docker\.io)\/(?:library\/)?/, '');
  if (r.includes('@')) return r;
  const lastSlash = r.lastIndexOf('/');
  return r.slice(lastSlash + 1).includes(':') ? r : `${r}:latest`;
}

/** A plausible image reference: no spaces or shell-ish characters, not an option. */
export function isValidRef(ref: string): boolean {
  // No "." or ".." path segments: a name is never a path (`../../etc`).
  return /^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$/.test(ref) && !ref.split(/[/:@]/).some((seg) => seg === '.' || seg === '..');
}

/** Where the local image store lives under a server data dir. */
export const localImagesRoot = (dataDir: string): string => join(dataDir, 'local', 'images');

const shared = new Map<string, ImageStore>();

/**
 * The one ImageStore of a data dir in this process: the local backend and branching registration
 * share it, so unpacks of the same digest are serialized by one mutex.
 */
export function sharedImageStore(dataDir: string, log: Logger, pullTimeoutMs?: number): ImageStore {
  const root = localImagesRoot(dataDir);
  let s = shared.get(root);
  if (!s) {
    s = new ImageStore({ root, log, ...(pullTimeoutMs !== undefined ? { pullTimeoutMs } : {}) });
    shared.set(root, s);
  }
  return s;
}

const tagFor = (name: string): string => `n-${createHash('sha256').update(name).digest('hex').slice(0, 32)}`;

export class ImageStore {
  readonly root: string;
  private readonly layout: string;
  private readonly log: Logger;
  private readonly mutex = new KeyedMutex();
  private readonly pullTimeoutMs: number;
  private readonly usersSources = new Set<ImageUsersSource>();
  private readonly reclaimers = new Set<(digest: string) => Promise<void>>();

  constructor(opts: { root: string; log: Logger; pullTimeoutMs?: number }) {
    this.root = opts.root;
    this.layout = join(opts.root, 'oci');
    this.log = opts.log;
    this.pullTimeoutMs = opts.pullTimeoutMs ?? 20_000;
  }

  private get indexPath() {
    return join(this.root, 'index.json');
  }

  private async readIndex(): Promise<IndexFile> {
    return (await readJson<IndexFile>(this.indexPath)) ?? { images: {} };
  }

  async list(): Promise<LocalImage[]> {
    const idx = await this.readIndex();
    return Object.values(idx.images).sort((a, b) => a.name.localeCompare(b.name));
  }

  /** The stored image for a reference, or null. */
  async get(ref: string): Promise<LocalImage | null> {
    const idx = await this.readIndex();
    return idx.images[normalizeRef(ref)] ?? idx.images[ref] ?? null;
  }

  /**
   * Imports an OCI layout directory, an OCI archive tar or a docker-archive tar (`docker save`).
   * `name` defaults to the reference recorded in the source.
   */
  async import(source: string, name?: string, label?: string): Promise<LocalImage> {
    const path = resolvePath(source);
    let st;
    try {
      st = await fsp.stat(path);
    } catch {
      throw new LoomError(400, 'bad_image', `cannot import ${source}: no such file or directory`);
    }
    let transport: string;
    let recorded: string | undefined;
    if (st.isDirectory()) {
      if (!(await exists(join(path, 'oci-layout')))) throw new LoomError(400, 'bad_image', `${source} is not an OCI image layout (no oci-layout file)`);
      const idx = await readJson<OciIndex>(join(path, 'index.json'));
      const refs = (idx?.manifests ?? []).map((m) => m.annotations?.[REF_ANNOTATION]).filter((r): r is string => !!r);
      const want = name ? refs.find((r) => r === name || r === name.split(':').pop()) : undefined;
      const pick = want ?? (refs.length === 1 ? refs[0] : undefined);
      if (!pick && (idx?.manifests?.length ?? 0) !== 1) throw new LoomError(400, 'bad_image', `${source} holds several images; name one of: ${refs.join(', ')}`);
      transport = pick ? `oci:${path}:${pick}` : `oci:${path}`;
      recorded = pick && (pick.includes('/') || pick.includes(':')) ? pick : pick ? `${basename(path)}:${pick}` : undefined;
    } else {
      const list = await run('tar', ['-tf', path], { timeoutMs: 60_000 });
      if (list.code !== 0) throw new LoomError(400, 'bad_image', `${source} is not a tar archive: ${list.stderr.trim()}`);
      const members = list.stdout.split('\n').map((m) => m.replace(/^\.\//, ''));
      if (members.includes('oci-layout')) {
        transport = `oci-archive:${path}`;
        const ix = await run('tar', ['-xOf', path, members.includes('index.json') ? 'index.json' : './index.json'], { timeoutMs: 60_000 });
        try {
          const refs = ((JSON.parse(ix.stdout) as OciIndex).manifests ?? []).map((m) => m.annotations?.[REF_ANNOTATION]).filter((r): r is string => !!r);
          if (refs.length === 1) recorded = refs[0]!.includes(':') || refs[0]!.includes('/') ? refs[0] : `${basename(path).replace(/\.(tar|oci)$/, '')}:${refs[0]}`;
        } catch {
          /* no recorded name */
        }
      } else if (members.includes('manifest.json')) {
        transport = `docker-archive:${path}`;
        const mf = await run('tar', ['-xOf', path, 'manifest.json'], { timeoutMs: 60_000 });
        try {
          recorded = (JSON.parse(mf.stdout) as { RepoTags?: string[] }[])[0]?.RepoTags?.[0];
        } catch {
          /* no recorded name */
        }
      } else {
        throw new LoomError(400, 'bad_image', `${source} is neither an OCI archive nor a docker-archive tar`);
      }
    }
    const finalName = normalizeRef(name ?? recorded ?? '');
    if (!name && !recorded) throw new LoomError(400, 'bad_image', `${source} records no image name; give one`);
    if (!isValidRef(finalName)) throw new LoomError(400, 'invalid_image_name', `invalid image name ${JSON.stringify(finalName)}`);
    return this.copyIn(transport, finalName, label ?? `import:${path}`, 300_000);
  }

  /** Pulls from a registry (needs network); fails fast with skopeo's message. */
  async pull(ref: string, timeoutMs = this.pullTimeoutMs): Promise<LocalImage> {
    const name = normalizeRef(ref);
    return this.copyIn(`docker://${name}`, name, `pull:docker://${name}`, timeoutMs);
  }

  private async copyIn(src: string, name: string, source: string, timeoutMs: number): Promise<LocalImage> {
    return this.mutex.run('store', async () => {
      await fsp.mkdir(this.root, { recursive: true });
      const tag = tagFor(name);
      const r = await run('skopeo', ['--insecure-policy', 'copy', '--retry-times', '0', src, `oci:${this.layout}:${tag}`], { timeoutMs });
      if (r.code !== 0) {
        const msg = r.timedOut ? `timed out after ${Math.round(timeoutMs / 1000)} s` : cleanSkopeo(r.stderr || r.stdout);
        throw new LoomError(400, 'bad_image', msg);
      }
      const digest = await this.digestOfTag(tag);
      if (!digest) throw new LoomError(500, 'image_store', `skopeo copied ${src} but the layout has no tag ${tag}`);
      const img: LocalImage = { name, digest, source, importedAt: new Date().toISOString() };
      const idx = await this.readIndex();
      idx.images[name] = img;
      await writeJsonAtomic(this.indexPath, idx);
      this.log.info({ image: name, digest, source }, 'image stored');
      return img;
    });
  }

  private async digestOfTag(tag: string): Promise<string | null> {
    const idx = await readJson<OciIndex>(join(this.layout, 'index.json'));
    return idx?.manifests?.find((m) => m.annotations?.[REF_ANNOTATION] === tag)?.digest ?? null;
  }

  private blobPath(digest: string): string {
    const [alg, hex] = digest.split(':');
    return join(this.layout, 'blobs', alg!, hex!);
  }

  async runConfig(img: LocalImage): Promise<ImageRunConfig> {
    const manifest = await readJson<OciManifest>(this.blobPath(img.digest));
    if (!manifest) throw new LoomError(500, 'image_store', `manifest ${img.digest} of ${img.name} is missing`);
    const cfg = await readJson<{ config?: { Entrypoint?: string[] | null; Cmd?: string[] | null; Env?: string[] | null; WorkingDir?: string; User?: string } }>(
      this.blobPath(manifest.config.digest),
    );
    const c = cfg?.config ?? {};
    return { entrypoint: c.Entrypoint ?? [], cmd: c.Cmd ?? [], env: c.Env ?? [], workingDir: c.WorkingDir ?? '', user: c.User ?? '' };
  }

  /**
   * Unpacks an image once per digest (and per user-namespace base: with usernsBase > 0 every
   * entry's owner is shifted into the weavers' host id range, done once and recorded by
   * .complete); returns the rootfs path.
   */
  async unpack(img: LocalImage, usernsBase = 0): Promise<string> {
    const hex = img.digest.split(':')[1]!;
    const dir = join(this.root, 'rootfs', usernsBase > 0 ? `${hex}-u${usernsBase}` : hex);
    const rootfs = join(dir, 'rootfs');
    if (await exists(join(dir, '.complete'))) return rootfs;
    return this.mutex.run(`unpack:${hex}`, async () => {
      if (await exists(join(dir, '.complete'))) return rootfs;
      await fsp.rm(dir, { recursive: true, force: true });
      await fsp.mkdir(dir, { recursive: true });
      const tag = tagFor(img.name);
      const r = await this.mutex.run('store', () => run('umoci', ['raw', 'unpack', '--image', `${this.layout}:${tag}`, rootfs], { timeoutMs: 600_000 }));
      if (r.code !== 0) {
        await fsp.rm(dir, { recursive: true, force: true });
        throw new LoomError(500, 'image_unpack', `unpacking ${img.name} failed: ${r.stderr.trim()}`);
      }
      if (usernsBase > 0) await shiftOwnership(rootfs, usernsBase);
      await fsp.writeFile(join(dir, '.complete'), img.digest);
      return rootfs;
    });
  }

  /** The image for a reference, pulled if missing, unpacked, with its run config. */
  async resolve(ref: string, usernsBase = 0): Promise<ResolvedImage> {
    let img = await this.get(ref);
    if (!img) {
      try {
        img = await this.pull(ref);
      } catch (e) {
        throw new LoomError(400, 'bad_image', `image ${JSON.stringify(ref)} is not in the local store and could not be pulled: ${errorMessage(e)}`);
      }
    }
    const [rootfs, config] = await Promise.all([this.unpack(img, usernsBase), this.runConfig(img)]);
    return { image: img, rootfs, config };
  }

  /** Who uses an image, as short descriptions ("weaver 0b1c…", "snapshot layer …"); asked of every registered source. */
  addUsersSource(source: ImageUsersSource): () => void {
    this.usersSources.add(source);
    return () => this.usersSources.delete(source);
  }

  /** Called with a digest no name refers to any more, before its unpacked trees are deleted (e.g. to drop layer references to them). */
  addReclaimer(fn: (digest: string) => Promise<void>): void {
    this.reclaimers.add(fn);
  }

  async users(img: LocalImage): Promise<string[]> {
    const out: string[] = [];
    for (const s of this.usersSources) out.push(...(await s(img)));
    return [...new Set(out)].sort();
  }

  /** Bytes the image's blobs take in the layout (manifest, config, layers; shared blobs counted for each image). */
  async size(img: LocalImage): Promise<number> {
    const manifest = await readJson<OciManifest & { config: { size?: number }; layers: { size?: number }[] }>(this.blobPath(img.digest));
    if (!manifest) return 0;
    let n = 0;
    for (const d of [img.digest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
      n += await fsp.stat(this.blobPath(d)).then((s) => s.size, () => 0);
    }
    return n;
  }

  /**
   * Removes a name; refused (409 image_in_use) while a weaver, layer or snapshot uses it unless
   * `force`. When no other name keeps the digest, its unpacked trees are deleted too, and blobs no
   * image refers to are collected (umoci gc).
   */
  async remove(ref: string, opts: { force?: boolean } = {}): Promise<boolean> {
    return this.mutex.run('store', async () => {
      const idx = await this.readIndex();
      const name = idx.images[normalizeRef(ref)] ? normalizeRef(ref) : ref;
      const img = idx.images[name];
      if (!img) return false;
      if (!opts.force) {
        const users = await this.users(img);
        if (users.length > 0) {
          throw new LoomError(409, 'image_in_use', `image ${name} is in use by ${users.slice(0, 5).join(', ')}${users.length > 5 ? ` and ${users.length - 5} more` : ''}`);
        }
      }
      delete idx.images[name];
      await writeJsonAtomic(this.indexPath, idx);
      await run('umoci', ['rm', '--image', `${this.layout}:${tagFor(name)}`], { timeoutMs: 60_000 });
      if (!Object.values(idx.images).some((i) => i.digest === img.digest)) await this.reclaim(img.digest);
      await run('umoci', ['gc', '--layout', this.layout], { timeoutMs: 300_000 });
      this.log.info({ image: name, digest: img.digest }, 'image removed');
      return true;
    });
  }

  /** Deletes the unpacked trees of a digest no name refers to (every user-namespace variant). */
  private async reclaim(digest: string): Promise<void> {
    for (const fn of this.reclaimers) await fn(digest);
    const hex = digest.split(':')[1]!;
    const dir = join(this.root, 'rootfs');
    for (const e of await fsp.readdir(dir).catch(() => [] as string[])) {
      if (e === hex || e.startsWith(`${hex}-u`)) await fsp.rm(join(dir, e), { recursive: true, force: true });
    }
  }

  /** Bytes under the store's root (layout, unpacked trees). */
  async diskUsage(): Promise<number> {
    const r = await run('du', ['-sbx', this.root], { timeoutMs: 300_000 });
    return r.code === 0 ? Number(r.stdout.split(/\s/)[0]) : 0;
  }
}

/** Who uses an image: descriptions of users, empty when none. */
export type ImageUsersSource = (img: LocalImage) => Promise<string[]>;

function cleanSkopeo(s: string): string {
  const t = s.trim().split('\n').filter(Boolean).pop() ?? 'skopeo failed';
  const m = /msg="((?:[^"\\]|\\.)*)"/.exec(t);
  return (m ? m[1]! : t).replace(/\\"/g, '"');
}
