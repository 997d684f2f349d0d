/**
 * The snapshotter seam of the local backend, modelled on containerd's snapshotter.
 *
 * Every root filesystem Loom runs locally is a chain of layers kept in ONE store: image layers,
 * committed snapshots and the active (writable) layers of running weavers and containers are
 * entries of it, each with a key, a kind and a parent. How to use it:
 *
 *   // 1. An image (or a registered rootfs_path) becomes a committed base layer, copied once:
 *   await s.importTree('image/sha256:abc', '/path/to/unpacked/rootfs');
 *
 *   // 2. A weaver gets an active layer on it and mounts it as its root filesystem:
 *   await s.prepare('weaver/W1', 'image/sha256:abc');
 *   await s.mount('weaver/W1', '/…/W1/rootfs');        // overlayfs: lower = chain, upper = W1's layer
 *
 *   // 3. A snapshot of the running weaver copies what its layer holds now (only what changed
 *   //    since the image, through the one copy primitive) into a committed layer whose parent is
 *   //    the weaver's parent. The weaver keeps running on its own layer:
 *   await s.snapshot('snap/S1', 'weaver/W1');
 *
 *   // 4. A fork is a new active layer on that snapshot and a mount — no file is copied:
 *   await s.prepare('weaver/W2', 'snap/S1');
 *   await s.mount('weaver/W2', '/…/W2/rootfs');
 *
 *   // 5. Teardown: unmount, then remove the active layer; a committed layer with children
 *   //    (S1 while W2 exists) is refused with 409 SNAPSHOT_IN_USE.
 *   await s.unmount('/…/W2/rootfs'); await s.remove('weaver/W2'); await s.remove('snap/S1');
 *
 * `commit(name, key)` is containerd's commit: an active layer that nobody uses any more becomes a
 * committed one in place (no copy). `snapshot(name, activeKey)` is containerd's optional
 * SnapshotRestorer: a read-only copy of an active layer while the original stays mounted and
 * writable. A snapshot of a mounted upper is crash-consistent (as if the power had gone at some
 * moment during the copy, per file); freeze the writers around it for an app-consistent one.
 */

export type Kind = 'committed' | 'active' | 'view';

export interface Info {
  key: string;
  kind: Kind;
  /** The key of the committed layer this one stacks on, or null for a base layer. */
  parent: string | null;
  labels: Record<string, string>;
  createdAt: string;
  /** Bytes and inodes of this layer alone (not its parents); known for committed layers. */
  usage?: Usage;
  /** How the layer's files were written: the copy primitive's strategy, or 'rename' (commit in place). */
  strategy?: string;
}

export interface Usage {
  /** Allocated bytes (st_blocks × 512), so holes and reflinks shared with nothing count as written. */
  bytes: number;
  inodes: number;
}

/** A mount as the kernel takes it. `cwd` is where relative paths in `options` are resolved. */
export interface Mount {
  type: 'overlay' | 'bind';
  source: string;
  options: string[];
  cwd?: string;
}

export interface Snapshotter {
  stat(key: string): Info | null;
  /** All entries, parents before their children. */
  list(): Info[];
  /** The parent chain of key, nearest first (key itself excluded). */
  chain(key: string): Info[];
  /** Keys whose parent is key. */
  children(key: string): string[];
  /** A new empty active layer on parent (a committed key) or on nothing. */
  prepare(key: string, parent: string | null, labels?: Record<string, string>): Promise<Mount[]>;
  /** A read-only view of a committed layer. */
  view(key: string, parent: string, labels?: Record<string, string>): Promise<Mount[]>;
  /** The mounts of an active layer or view. */
  mounts(key: string): Mount[];
  /** Mounts key's layer at target (an existing empty directory). */
  mount(key: string, target: string): Promise<void>;
  unmount(target: string): Promise<void>;
  /** Active → committed in place; the active key is gone afterwards. It must not be mounted. */
  commit(name: string, key: string, labels?: Record<string, string>): Promise<Info>;
  /** A committed copy of an active layer as it is now; the active layer stays as it is. */
  snapshot(name: string, activeKey: string, labels?: Record<string, string>, opts?: { signal?: AbortSignal }): Promise<Info>;
  /** A committed base layer holding a copy of a directory tree. */
  importTree(name: string, src: string, labels?: Record<string, string>, opts?: { signal?: AbortSignal }): Promise<Info>;
  /** Removes a layer; refused (409 SNAPSHOT_IN_USE) while others stack on it. Unknown keys are a no-op. */
  remove(key: string): Promise<void>;
  usage(key: string): Promise<Usage>;
}
