/**
 * The overlayfs snapshotter (see snapshotter.ts for the contract and how to use it).
 *
 * <root>/
 *   metadata.json        every entry (key → id, kind, parent, labels, usage) and the intents of
 *                        copies in flight; replaced atomically (temp file, fsync, rename, fsync dir)
 *   l/<id>/fs            a layer's tree: a committed layer, or an active layer's upper dir
 *                        (a btrfs subvolume when the store is on btrfs, so its snapshot is one ioctl)
 *   l/<id>/work          an active layer's overlay workdir
 *   l/<id>.tmp           a layer being written; renamed to l/<id> when complete
 *
 * Crash safety: a copy records its intent in metadata.json before it starts, writes under
 * `<id>.tmp` and renames into place; the entry is saved after the rename. open() removes every
 * directory under l/ that no entry names (half-written copies, layers whose record never landed,
 * layers whose removal was cut short) and drops stale intents. Removal forgets the entry first and
 * deletes the files after, so no entry ever names a half-deleted layer.
 *
 * Chains stay short: a snapshot committed deeper than FLATTEN_AT is flattened in the background
 * (rebase(): its merged tree copied into one base layer that takes the snapshot's key, so whatever
 * stacks on it from then on mounts two layers). Layers mounted on the old chain keep it: the old
 * tree stays as a `retired/<id>` entry (pinning its parents) until the last layer that was
 * mounted on it is removed, because overlayfs must not see its lower dirs change under a mount.
 *
 * Mount options stay short whatever the data dir: layers are named by 10-hex-digit ids and the
 * overlay is mounted from inside l/ with relative paths (`lowerdir=ab12…/fs:…`), ~14 bytes a layer,
 * so a chain of MAX_CHAIN layers fits the kernel's one-page limit on mount options.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { LoomError, errorMessage } from '../../../common/errors.js';
import { KeyedMutex } from '../../../common/keyed-mutex.js';
import { copyTree, createSubvolume, fsType, removeTree } from '../../../branching/copy.js';
import { unmountAll } from '../rootfs.js';
import { run } from '../util.js';
import type { Info, Kind, Mount, Snapshotter, Usage } from './snapshotter.js';

/** Longest parent chain a new layer may stack on; deeper chains must be flattened first. */
export const MAX_CHAIN = 64;
/** A snapshot committed with this many lower layers or more is flattened in the background. */
export const FLATTEN_AT = 16;

const KEY_RE = /^[A-Za-z0-9][A-Za-z0-9_.:/@+=-]{0,254}$/;

interface Entry extends Info {
  id: string;
}

interface Intent {
  op: 'snapshot' | 'import' | 'flatten';
  key: string;
  startedAt: string;
}

interface Meta {
  version: 1;
  entries: Record<string, Entry>;
  intents: Record<string, Intent>;
}

export interface OpenReport {
  /** Layer directories removed because no entry named them (interrupted copies or removals). */
  removed: string[];
  /** Copies that were in flight when the process stopped. */
  interrupted: Intent[];
}

const bad = (code: string, message: string, status = 400) => new LoomError(status, code, message);

function checkKey(key: string): void {
  if (!KEY_RE.test(key)) throw bad('INVALID_KEY', `invalid layer key ${JSON.stringify(key)}`);
}

export class OverlaySnapshotter implements Snapshotter {
  private meta: Meta = { version: 1, entries: {}, intents: {} };
  private readonly lock = new KeyedMutex();
  private btrfs = false;
  readonly layers: string;
  /** Background flattening: one at a time, in commit order. */
  private flattening: Promise<void> = Promise.resolve();
  private readonly pendingFlatten = new Set<string>();
  /** Told about background work that failed (the store stays consistent either way). */
  onBackgroundError: (key: string, err: unknown) => void = () => undefined;
  /** Chain depth (lower layers of a snapshot) from which rebase() runs in the background. */
  flattenAt = FLATTEN_AT;

  private constructor(readonly root: string) {
    this.layers = join(root, 'l');
  }

  /** Opens (or creates) the store at root and cleans up what an interrupted process left. */
  static async open(root: string): Promise<{ snapshotter: OverlaySnapshotter; report: OpenReport }> {
    const s = new OverlaySnapshotter(root);
    const report = await s.load();
    return { snapshotter: s, report };
  }

  private async load(): Promise<OpenReport> {
    await fsp.mkdir(this.layers, { recursive: true });
    try {
      this.btrfs = fsType(this.layers) === 'btrfs';
    } catch {
      this.btrfs = false;
    }
    const text = await fsp.readFile(join(this.root, 'metadata.json'), 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return null;
      throw e;
    });
    if (text !== null) {
      const m = JSON.parse(text) as Meta;
      if (m.version !== 1) throw bad('SNAPSHOTTER_VERSION', `unknown snapshotter metadata version ${String(m.version)}`, 500);
      this.meta = m;
    }
    const report: OpenReport = { removed: [], interrupted: Object.values(this.meta.intents) };
    const ids = new Set(Object.values(this.meta.entries).map((e) => e.id));
    for (const d of await fsp.readdir(this.layers)) {
      if (ids.has(d)) continue;
      await removeTree(join(this.layers, d));
      report.removed.push(d);
    }
    for (const e of Object.values(this.meta.entries)) {
      // An active layer whose work dir went missing cannot be mounted again; recreate it empty.
      if (e.kind === 'active') await fsp.mkdir(join(this.layers, e.id, 'work'), { recursive: true });
    }
    if (report.interrupted.length || text === null) {
      this.meta.intents = {};
      await this.save();
    }
    return report;
  }

  /**
   * Replaces metadata.json atomically. `durable` (the default) fsyncs the file and the directory;
   * an intent is saved without (losing it in a crash loses nothing: open() removes every directory
   * no entry names, intent or not), which spares two journal commits per snapshot on ext4.
   */
  private async save(durable = true): Promise<void> {
    const file = join(this.root, 'metadata.json');
    const tmp = `${file}.tmp`;
    const fh = await fsp.open(tmp, 'w', 0o600);
    try {
      await fh.writeFile(JSON.stringify(this.meta));
      if (durable) await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
    if (!durable) return;
    const dh = await fsp.open(this.root, fsc.O_RDONLY | fsc.O_DIRECTORY);
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  }

  /** Metadata changes are serialized; copies run outside the lock. */
  private mutate<T>(fn: () => Promise<T>): Promise<T> {
    return this.lock.run('meta', fn);
  }

  private newId(): string {
    for (;;) {
      const id = randomBytes(5).toString('hex');
      if (!Object.values(this.meta.entries).some((e) => e.id === id) && !this.meta.intents[id]) return id;
    }
  }

  private entry(key: string): Entry {
    const e = this.meta.entries[key];
    if (!e) throw bad('LAYER_NOT_FOUND', `layer ${JSON.stringify(key)} not found`, 404);
    return e;
  }

  private reserved(key: string): boolean {
    return !!this.meta.entries[key] || Object.values(this.meta.intents).some((i) => i.key === key);
  }

  private info(e: Entry): Info {
    const { id: _id, ...rest } = e;
    return { ...rest, labels: { ...e.labels } };
  }

  /** The directory of a layer's tree (for callers that read a committed layer's files). */
  path(key: string): string {
    return join(this.layers, this.entry(key).id, 'fs');
  }

  stat(key: string): Info | null {
    const e = this.meta.entries[key];
    return e ? this.info(e) : null;
  }

  list(): Info[] {
    const out: Info[] = [];
    const done = new Set<string>();
    const visit = (e: Entry) => {
      if (done.has(e.key)) return;
      if (e.parent && this.meta.entries[e.parent]) visit(this.meta.entries[e.parent]!);
      done.add(e.key);
      out.push(this.info(e));
    };
    for (const e of Object.values(this.meta.entries)) visit(e);
    return out;
  }

  private chainEntries(key: string): Entry[] {
    const out: Entry[] = [];
    let p = this.entry(key).parent;
    while (p) {
      const e = this.entry(p);
      out.push(e);
      p = e.parent;
    }
    return out;
  }

  chain(key: string): Info[] {
    return this.chainEntries(key).map((e) => this.info(e));
  }

  children(key: string): string[] {
    return Object.values(this.meta.entries).filter((e) => e.parent === key).map((e) => e.key);
  }

  private checkParent(parent: string, bounded = true): Entry {
    const p = this.entry(parent);
    if (p.kind !== 'committed') throw bad('LAYER_NOT_COMMITTED', `layer ${JSON.stringify(parent)} is ${p.kind}; only committed layers can be stacked on`, 409);
    if (bounded && this.chainEntries(parent).length + 1 > MAX_CHAIN) throw bad('CHAIN_TOO_LONG', `a layer on ${JSON.stringify(parent)} would have more than ${MAX_CHAIN} lower layers; flatten it first`, 409);
    return p;
  }

  private async add(key: string, kind: Kind, parent: string | null, labels: Record<string, string>, bounded = true): Promise<Mount[]> {
    checkKey(key);
    await this.mutate(async () => {
      if (this.reserved(key)) throw bad('LAYER_EXISTS', `layer ${JSON.stringify(key)} already exists`, 409);
      if (parent) this.checkParent(parent, bounded);
      const id = this.newId();
      const dir = join(this.layers, id);
      // On btrfs an active layer's directory is a subvolume (upper and work dir must share it),
      // so its snapshot is one ioctl.
      if (kind === 'active' && this.btrfs) await createSubvolume(dir);
      else await fsp.mkdir(dir);
      if (kind === 'active') {
        await fsp.mkdir(join(dir, 'fs'));
        await fsp.mkdir(join(dir, 'work'));
      }
      this.meta.entries[key] = { key, id, kind, parent, labels: { ...labels }, createdAt: new Date().toISOString() };
      await this.save();
    });
    return this.mounts(key);
  }

  prepare(key: string, parent: string | null, labels: Record<string, string> = {}): Promise<Mount[]> {
    return this.add(key, 'active', parent, labels);
  }

  view(key: string, parent: string, labels: Record<string, string> = {}): Promise<Mount[]> {
    return this.add(key, 'view', parent, labels);
  }

  mounts(key: string): Mount[] {
    const e = this.entry(key);
    if (e.kind === 'committed') throw bad('LAYER_COMMITTED', `layer ${JSON.stringify(key)} is committed; prepare or view a layer on it`, 409);
    const lowers = this.chainEntries(key).map((p) => `${p.id}/fs`);
    if (e.kind === 'view') {
      if (lowers.length === 1) return [{ type: 'bind', source: join(this.layers, lowers[0]!), options: ['ro', 'rbind'] }];
      return [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${lowers.join(':')}`], cwd: this.layers }];
    }
    if (lowers.length === 0) return [{ type: 'bind', source: join(this.layers, e.id, 'fs'), options: ['rw', 'rbind'] }];
    return [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${lowers.join(':')}`, `upperdir=${e.id}/fs`, `workdir=${e.id}/work`], cwd: this.layers }];
  }

  async mount(key: string, target: string): Promise<void> {
    for (const m of this.mounts(key)) {
      const args = m.type === 'bind' ? ['--bind', m.source, target] : ['-t', m.type, '-o', m.options.join(','), m.source, target];
      const r = await run('mount', args, m.cwd ? { cwd: m.cwd } : {});
      if (r.code !== 0) throw bad('MOUNT_FAILED', `mounting layer ${JSON.stringify(key)} failed: ${r.stderr.trim()}`, 500);
      if (m.type === 'bind' && m.options.includes('ro')) {
        const ro = await run('mount', ['-o', 'remount,bind,ro', target]);
        if (ro.code !== 0) {
          await unmountAll(target);
          throw bad('MOUNT_FAILED', `read-only remount of ${JSON.stringify(key)} failed: ${ro.stderr.trim()}`, 500);
        }
      }
    }
  }

  unmount(target: string): Promise<void> {
    return unmountAll(target);
  }

  async commit(name: string, key: string, labels: Record<string, string> = {}): Promise<Info> {
    checkKey(name);
    return this.mutate(async () => {
      const e = this.entry(key);
      if (e.kind !== 'active') throw bad('LAYER_NOT_ACTIVE', `layer ${JSON.stringify(key)} is ${e.kind}, not active`, 409);
      if (this.reserved(name)) throw bad('LAYER_EXISTS', `layer ${JSON.stringify(name)} already exists`, 409);
      const usage = await usageOf(join(this.layers, e.id, 'fs'));
      delete this.meta.entries[key];
      this.meta.entries[name] = { ...e, key: name, kind: 'committed', labels: { ...e.labels, ...labels }, usage, strategy: 'rename' };
      await this.save();
      await fsp.rm(join(this.layers, e.id, 'work'), { recursive: true, force: true }).catch(() => undefined);
      return this.info(this.meta.entries[name]!);
    });
  }

  /** Copies src into a new committed layer under an intent (see the file comment). */
  /**
   * Copies into a new committed layer under an intent (see the file comment). `src` is a tree
   * that becomes the layer's fs/, or {layer} — an active layer's directory copied whole (fs/ and
   * its work dir, which on btrfs makes one subvolume snapshot) whose work dir is then dropped.
   */
  private async copyIn(op: Intent['op'], name: string, src: string | { layer: string }, parent: string | null, labels: Record<string, string>, signal?: AbortSignal): Promise<Info> {
    checkKey(name);
    const id = await this.mutate(async () => {
      if (this.reserved(name)) throw bad('LAYER_EXISTS', `layer ${JSON.stringify(name)} already exists`, 409);
      const id = this.newId();
      this.meta.intents[id] = { op, key: name, startedAt: new Date().toISOString() };
      await this.save(false);
      return id;
    });
    const tmp = join(this.layers, `${id}.tmp`);
    const finalDir = join(this.layers, id);
    try {
      const copyOpts = signal ? { signal } : {};
      let r;
      if (typeof src === 'string') {
        await fsp.mkdir(tmp);
        r = await copyTree(src, join(tmp, 'fs'), copyOpts);
      } else {
        r = await copyTree(src.layer, tmp, copyOpts);
        await removeTree(join(tmp, 'work'));
      }
      // A subvolume snapshot is not walked; measure what it holds (the upper: what changed).
      const usage = r.strategy === 'subvolume' ? await usageOf(join(tmp, 'fs')) : { bytes: r.bytes, inodes: r.files + r.dirs + r.symlinks + r.specials };
      await fsp.rename(tmp, finalDir);
      return await this.mutate(async () => {
        delete this.meta.intents[id];
        this.meta.entries[name] = { key: name, id, kind: 'committed', parent, labels: { ...labels }, createdAt: new Date().toISOString(), usage, strategy: r.strategy };
        await this.save();
        return this.info(this.meta.entries[name]!);
      });
    } catch (e) {
      await removeTree(tmp).catch(() => undefined);
      await removeTree(finalDir).catch(() => undefined);
      await this.mutate(async () => {
        delete this.meta.intents[id];
        await this.save();
      }).catch(() => undefined);
      throw e;
    }
  }

  async snapshot(name: string, activeKey: string, labels: Record<string, string> = {}, opts: { signal?: AbortSignal } = {}): Promise<Info> {
    const e = this.entry(activeKey);
    if (e.kind !== 'active') throw bad('LAYER_NOT_ACTIVE', `layer ${JSON.stringify(activeKey)} is ${e.kind}, not active`, 409);
    const info = await this.copyIn('snapshot', name, { layer: join(this.layers, e.id) }, e.parent, labels, opts.signal);
    if (this.chainEntries(name).length >= this.flattenAt) this.flattenLater(name);
    return info;
  }

  private flattenLater(key: string): void {
    if (this.pendingFlatten.has(key)) return;
    this.pendingFlatten.add(key);
    this.flattening = this.flattening.then(async () => {
      try {
        if (this.meta.entries[key]) await this.rebase(key);
      } catch (e) {
        this.onBackgroundError(key, e);
      } finally {
        this.pendingFlatten.delete(key);
      }
    });
  }

  /** Resolves when the background flattening queued so far is done (tests, shutdown). */
  idle(): Promise<void> {
    return this.flattening;
  }

  /**
   * Flattens a committed layer in place: its merged tree becomes one base layer under the same
   * key (what stacks on it later mounts one lower). The old tree stays as `retired/<old id>` with
   * the old parent while layers mounted on the old chain exist (active and view layers below key
   * now), and goes with the last of them.
   */
  async rebase(key: string): Promise<Info> {
    const e = this.entry(key);
    if (e.kind !== 'committed') throw bad('LAYER_NOT_COMMITTED', `layer ${JSON.stringify(key)} is ${e.kind}; only committed layers are flattened`, 409);
    if (!e.parent) return this.info(e);
    const tmpKey = `flatten/${randomBytes(6).toString('hex')}`;
    const flat = await this.flatten(tmpKey, key);
    return this.mutate(async () => {
      const cur = this.meta.entries[key];
      const f = this.meta.entries[tmpKey];
      if (!cur || !f || cur.id !== e.id) {
        // key went (or was rebased) meanwhile: drop the copy.
        if (f) delete this.meta.entries[tmpKey];
        await this.save();
        if (f) await removeTree(join(this.layers, f.id)).catch(() => undefined);
        return cur ? this.info(cur) : this.info(flat as Entry);
      }
      const mountedOn = Object.values(this.meta.entries)
        .filter((x) => (x.kind === 'active' || x.kind === 'view') && this.chainEntries(x.key).some((c) => c.key === key))
        .map((x) => x.key);
      delete this.meta.entries[tmpKey];
      this.meta.entries[key] = { ...cur, id: f.id, parent: null, usage: f.usage ?? { bytes: 0, inodes: 0 }, strategy: f.strategy ?? 'copy', labels: { ...cur.labels, 'loom.flattened': 'true' } };
      let drop: string | null = null;
      if (mountedOn.length) {
        const rk = `retired/${cur.id}`;
        this.meta.entries[rk] = { key: rk, id: cur.id, kind: 'committed', parent: cur.parent, labels: { 'loom.retired-from': key, 'loom.mounted-on': mountedOn.join(' ') }, createdAt: cur.createdAt };
      } else drop = cur.id;
      await this.save();
      if (drop) await removeTree(join(this.layers, drop)).catch(() => undefined);
      return this.info(this.meta.entries[key]!);
    });
  }

  /** Retired trees whose mounted layers are all gone go (and, recursively, parents only they pinned stay entries: they are someone's). */
  private async sweepRetired(): Promise<void> {
    const gone: string[] = [];
    await this.mutate(async () => {
      for (const r of Object.values(this.meta.entries)) {
        if (!r.key.startsWith('retired/')) continue;
        const users = (r.labels['loom.mounted-on'] ?? '').split(' ').filter(Boolean);
        if (users.some((u) => this.meta.entries[u]) || this.children(r.key).length) continue;
        delete this.meta.entries[r.key];
        gone.push(r.id);
      }
      if (gone.length) await this.save();
    });
    for (const id of gone) await removeTree(join(this.layers, id)).catch(() => undefined);
  }

  importTree(name: string, src: string, labels: Record<string, string> = {}, opts: { signal?: AbortSignal } = {}): Promise<Info> {
    return this.copyIn('import', name, src, null, labels, opts.signal);
  }

  /**
   * A committed base layer that refers to a read-only tree another part owns (an unpacked image)
   * instead of copying it: l/<id>/fs is a symlink to it (overlayfs follows it when mounting, and
   * mount options still carry only the short relative path). The owner must keep the tree.
   */
  async importRef(name: string, target: string, labels: Record<string, string> = {}): Promise<Info> {
    checkKey(name);
    return this.mutate(async () => {
      const existing = this.meta.entries[name];
      if (existing) return this.info(existing);
      if (this.reserved(name)) throw bad('LAYER_EXISTS', `layer ${JSON.stringify(name)} already exists`, 409);
      const id = this.newId();
      await fsp.mkdir(join(this.layers, id));
      await fsp.symlink(target, join(this.layers, id, 'fs'));
      this.meta.entries[name] = { key: name, id, kind: 'committed', parent: null, labels: { ...labels }, createdAt: new Date().toISOString(), usage: { bytes: 0, inodes: 0 }, strategy: 'ref' };
      await this.save();
      return this.info(this.meta.entries[name]!);
    });
  }

  /** A committed base layer holding the merged tree of key's chain (key committed): the way out of a deep chain. */
  async flatten(name: string, key: string, labels: Record<string, string> = {}, opts: { signal?: AbortSignal } = {}): Promise<Info> {
    const e = this.entry(key);
    if (e.kind !== 'committed') throw bad('LAYER_NOT_COMMITTED', `layer ${JSON.stringify(key)} is ${e.kind}; only committed layers are flattened`, 409);
    if (!e.parent) return this.copyIn('flatten', name, join(this.layers, e.id, 'fs'), null, labels, opts.signal);
    const viewKey = `flatten-view/${randomBytes(6).toString('hex')}`;
    const target = join(this.root, `mnt-${viewKey.slice(-12)}`);
    await fsp.mkdir(target);
    try {
      // A view on key has key's whole chain as its lowers: the merged tree. Not bounded, as
      // flattening is how a chain at the bound is shortened.
      await this.add(viewKey, 'view', key, {}, false);
      await this.mount(viewKey, target);
      try {
        return await this.copyIn('flatten', name, target, null, labels, opts.signal);
      } finally {
        await this.unmount(target);
      }
    } finally {
      await this.remove(viewKey).catch(() => undefined);
      await fsp.rmdir(target).catch(() => undefined);
    }
  }

  async remove(key: string): Promise<void> {
    const id = await this.mutate(async () => {
      const e = this.meta.entries[key];
      if (!e) return null;
      const kids = this.children(key);
      if (kids.length) throw bad('SNAPSHOT_IN_USE', `layer ${JSON.stringify(key)} is the parent of ${kids.length} other layer(s): ${kids.slice(0, 5).join(', ')}`, 409);
      delete this.meta.entries[key];
      await this.save();
      return e.id;
    });
    if (!id) return;
    // Forgotten first: a crash from here leaves a directory open() removes.
    try {
      await removeTree(join(this.layers, id));
    } catch (e) {
      throw bad('LAYER_REMOVE_FAILED', `removing layer ${JSON.stringify(key)} failed (it may still be mounted): ${errorMessage(e)}`, 500);
    }
    await this.sweepRetired();
  }

  async usage(key: string): Promise<Usage> {
    const e = this.entry(key);
    if (e.kind === 'committed' && e.usage) return e.usage;
    return usageOf(join(this.layers, e.id, 'fs'));
  }
}

/** Allocated bytes and inodes under dir, each inode once, not crossing into other filesystems. */
export async function usageOf(dir: string): Promise<Usage> {
  const seen = new Set<string>();
  let bytes = 0;
  let inodes = 0;
  const root = await fsp.lstat(dir, { bigint: true }).catch(() => null);
  if (!root) return { bytes: 0, inodes: 0 };
  const walk = async (d: string): Promise<void> => {
    const dh = await fsp.opendir(d).catch(() => null);
    if (!dh) return;
    for await (const ent of dh) {
      const p = join(d, ent.name);
      const st = await fsp.lstat(p, { bigint: true }).catch(() => null);
      if (!st) continue;
      const ino = `${st.dev}:${st.ino}`;
      if (seen.has(ino)) continue;
      seen.add(ino);
      bytes += Number(st.blocks) * 512;
      inodes++;
      if (ent.isDirectory() && st.dev === root.dev) await walk(p);
    }
  };
  await walk(dir);
  return { bytes, inodes };
}
