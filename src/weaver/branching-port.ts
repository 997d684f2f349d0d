/**
 * The seam between weavers and branching. Branching owns snapshot records, operations and
 * lineage; the weaver component owns weavers and their backend. Each reaches the other only
 * through these interfaces (set on AppContext at start), never through the other's tables or paths.
 */
import type { User } from '../server/auth/users.js';
import type { LayerSnapshotResult, WeaverResources, WeaverStatus } from './provisioner.js';
import type { Weaver } from './store.js';

/** A weaver as branching needs it, env values included (they go into the snapshot for forks). */
export interface WeaverForBranching {
  id: string;
  org_id: string;
  owner_user_id: string;
  backend: string;
  status: WeaverStatus;
  image: string;
  command?: string[];
  env: Record<string, string>;
  resources: WeaverResources;
}

/** What a weaver made from a snapshot inherits. */
export interface SnapshotForWeaver {
  id: string;
  org_id: string;
  image: string;
  command?: string[];
  env: Record<string, string>;
  resources: WeaverResources;
  /** The weaver the snapshot was taken of. */
  parent_weaver_id: string;
}

export interface ForkOverrides {
  lifetime_hours?: number;
  tags?: Record<string, string>;
  env?: Record<string, string>;
}

/** Offered by the weaver component to branching. */
export interface WeaverBranchingPort {
  /** The weaver when the user is a member of its org; null otherwise (the caller answers 404). */
  weaver(user: User, id: string): WeaverForBranching | null;
  /** Why weavers of this backend cannot be snapshotted, or null. */
  unsupported(): string | null;
  /** Checked before a fork's snapshot is taken: 400 for bad overrides, 429 when no further weaver may start now. */
  checkFork(req: ForkOverrides): void;
  snapshot(weaverId: string, snapshotId: string, opts: { freeze: boolean; signal?: AbortSignal }): Promise<LayerSnapshotResult>;
  /** Throws 409 SNAPSHOT_IN_USE while weavers run on the snapshot. */
  removeSnapshot(snapshotId: string): Promise<void>;
  /** Removes snapshot layers with no record; returns their ids. */
  pruneSnapshots(knownIds: string[]): Promise<string[]>;
  /** A new weaver from the snapshot, as POST /api/weaver with from_snapshot. */
  createFromSnapshot(user: User, snap: SnapshotForWeaver, req: ForkOverrides & { org_id?: string }): Promise<Weaver>;
  /** Weavers made from a snapshot that the user can see. */
  madeFrom(user: User, snapshotId: string): Array<Pick<Weaver, 'id' | 'status' | 'created_at'>>;
}

/** Offered by branching to the weaver component (POST /api/weaver with from_snapshot). */
export interface SnapshotLookupPort {
  /** The snapshot if the user may see it and it is a ready weaver snapshot: 404 / 409 otherwise. */
  snapshotForWeaver(user: User, snapshotId: string): SnapshotForWeaver;
}
