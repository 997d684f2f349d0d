/** Helpers of the branching tests: a busybox fixture rootfs, operation polling and cleanup. */
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestServer } from '../support/server.js';
import type { Operation } from '../../src/branching/store.js';

/** The API's operation object with its status URL. */
export type Op = Operation & { status_url?: string };

export const BUSYBOX = '/bin/busybox';

/** <tmp>/rootfs with busybox (sh, sleep, mv, cat, echo) and hello.txt; returns the rootfs path. */
export function makeFixture(): { dir: string; rootfs: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'loom-branch-fx-'));
  const rootfs = join(dir, 'rootfs');
  mkdirSync(join(rootfs, 'bin'), { recursive: true });
  copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
  execFileSync('chmod', ['755', join(rootfs, 'bin', 'busybox')]);
  for (const a of ['sh', 'sleep', 'mv', 'cat', 'echo', 'true']) symlinkSync('busybox', join(rootfs, 'bin', a));
  writeFileSync(join(rootfs, 'hello.txt'), 'hello\n');
  return { dir, rootfs, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A container's root filesystem: the mount of its active layer in its bundle on the local runtime stack. */
export const rootfsOf = (dataDir: string, containerId: string) => join(dataDir, 'local', 'containers', containerId, 'rootfs');
export const containerDirOf = (dataDir: string, containerId: string) => join(dataDir, 'local', 'containers', containerId);

interface LayerMeta { entries: Record<string, { id: string; parent: string | null }> }
const layersDir = (dataDir: string) => join(dataDir, 'local', 'layers');
function layerMeta(dataDir: string): LayerMeta {
  try {
    return JSON.parse(readFileSync(join(layersDir(dataDir), 'metadata.json'), 'utf8')) as LayerMeta;
  } catch {
    return { entries: {} };
  }
}

/** Whether the snapshot's committed layer is in the layer store (its entry and its directory). */
export function snapshotExists(dataDir: string, snapshotId: string): boolean {
  const e = layerMeta(dataDir).entries[`snapshot/${snapshotId}`];
  return !!e && existsSync(join(layersDir(dataDir), 'l', e.id));
}

/**
 * A file as the snapshot shows it: its own layer first, then its parents' (overlayfs lookup
 * order, read straight from the layer store without mounting). null when no layer has it or a
 * whiteout hides it.
 */
export function snapshotFile(dataDir: string, snapshotId: string, rel: string): string | null {
  const meta = layerMeta(dataDir);
  let key: string | null = `snapshot/${snapshotId}`;
  while (key) {
    const e: { id: string; parent: string | null } | undefined = meta.entries[key];
    if (!e) return null;
    const p = join(layersDir(dataDir), 'l', e.id, 'fs', rel);
    try {
      const st = lstatSync(p);
      if (st.isCharacterDevice() && st.rdev === 0) return null;
      return readFileSync(p, 'utf8');
    } catch {
      key = e.parent;
    }
  }
  return null;
}

/** Long-polls the operation until it is final. */
export async function waitOp(srv: TestServer, token: string, id: string, timeoutMs = 60_000): Promise<Op> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await srv.api<Op>('GET', `/api/operations/${id}?wait=10`, token);
    if (r.status !== 200) throw new Error(`GET operation ${id}: ${r.status} ${JSON.stringify(r.body)}`);
    if (!['accepted', 'queued', 'running'].includes(r.body.status)) return r.body;
    if (Date.now() > deadline) throw new Error(`operation ${id} still ${r.body.status}`);
  }
}

/** Runs a mutation and waits for its operation; throws unless 202. */
export async function mutate(srv: TestServer, token: string, method: string, path: string, body?: unknown): Promise<Op> {
  const r = await srv.api<Op>(method, path, token, body);
  if (r.status !== 202) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return waitOp(srv, token, r.body.operation_id);
}

export function runtimeState(dataDir: string, id: string): string | null {
  const r = spawnSync('runc', ['--root', join(dataDir, 'local', 'runc'), 'state', id], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  return (JSON.parse(r.stdout) as { status: string }).status;
}

/** Deletes every branching container through the API, then forces whatever the runtime still has. */
export async function cleanupContainers(srv: TestServer, tokens: string[]): Promise<void> {
  for (const t of tokens) {
    const r = await srv.api<{ containers: { id: string }[] }>('GET', '/api/containers', t).catch(() => null);
    for (const c of r?.body.containers ?? []) {
      const d = await srv.api<Op>('DELETE', `/api/containers/${c.id}`, t).catch(() => null);
      if (d?.status === 202) await waitOp(srv, t, d.body.operation_id, 30_000).catch(() => undefined);
    }
  }
  forceRuntimeCleanup(srv.dataDir);
}

/** Forces away the runtime containers of this data dir's seed containers (not its weavers). */
export function forceRuntimeCleanup(dataDir: string): void {
  const root = join(dataDir, 'local', 'runc');
  const r = spawnSync('runc', ['--root', root, 'list', '--format', 'json'], { encoding: 'utf8' });
  let list: Array<{ id: string; bundle: string }> = [];
  try {
    list = (JSON.parse(r.stdout || 'null') as Array<{ id: string; bundle: string }> | null) ?? [];
  } catch {
    list = [];
  }
  const mine = `${join(dataDir, 'local', 'containers')}/`;
  for (const c of list) if (c.bundle.startsWith(mine)) spawnSync('runc', ['--root', root, 'delete', '--force', c.id], { stdio: 'ignore' });
}

