/** Helpers of the branching tests: a busybox fixture rootfs, operation polling and cleanup. */
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
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

export const rootfsOf = (dataDir: string, containerId: string) => join(dataDir, 'branching', 'containers', containerId, 'vol', 'rootfs');
export const snapshotDirOf = (dataDir: string, snapshotId: string) => join(dataDir, 'branching', 'snapshots', snapshotId);

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
  const r = spawnSync('runc', ['--root', join(dataDir, 'branching', 'runc'), 'state', id], { encoding: 'utf8' });
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

export function forceRuntimeCleanup(dataDir: string): void {
  const root = join(dataDir, 'branching', 'runc');
  const r = spawnSync('runc', ['--root', root, 'list', '-q'], { encoding: 'utf8' });
  for (const id of (r.stdout ?? '').split('\n').filter(Boolean)) spawnSync('runc', ['--root', root, 'delete', '--force', id], { stdio: 'ignore' });
}

