// API overhead of a snapshot: Loom's POST /api/containers/:id/snapshot → operation succeeded
// (long-polled with GET /api/operations/:id?wait=…) beside the bare copy primitive on the same
// tree, with the server's data dir on loop filesystems (btrfs, XFS, ext4). Target: ≤ 10 ms overhead.
//   npm run build && npx tsx bench/clone/api.ts [--reps N] [--files N] [--fs btrfs,xfs,ext4]
// Needs root. Warm caches for both (the difference is what matters, not the cold copy time).
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { copyTree, removeTree } from '../../src/branching/copy.js';
import { startServer } from '../../tests/support/server.js';
import { buildCloneFixture, makeLoopFs, median, type BenchFs } from './fixture.js';

interface Op { operation_id: string; status: string; snapshot_id?: string; container_id?: string; reason_message?: string }

const { values } = parseArgs({ options: { reps: { type: 'string', default: '5' }, files: { type: 'string', default: '50000' }, fs: { type: 'string', default: 'btrfs,xfs,ext4' } } });
const reps = Number(values.reps);
const files = Number(values.files);
const filesystems = values.fs!.split(',') as BenchFs[];

const rows: string[][] = [];
for (const kind of filesystems) {
  const loop = makeLoopFs(kind, 5);
  let srv: Awaited<ReturnType<typeof startServer>> | null = null;
  try {
    const fixture = join(loop.mnt, 'fixture');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(fixture);
    const st = buildCloneFixture(fixture, { files });
    // Registration from a host path: a server admin, under an import root.
    srv = await startServer({ dataDir: join(loop.mnt, 'data'), env: { LOOM_SERVER_WEAVER_ENABLED: 'false', LOOM_BRANCHING_IMPORT_ROOTS: fixture } });
    const token = await srv.token('bench', true);
    const s = srv;
    const waitOp = async (id: string): Promise<Op> => {
      for (;;) {
        const r = await s.api<Op>('GET', `/api/operations/${id}?wait=30`, token);
        if (!['accepted', 'queued', 'running'].includes(r.body.status)) return r.body;
      }
    };
    const reg = await s.api<Op>('POST', '/api/containers', token, { name: 'bench', rootfs_path: fixture, command: ['/bin/true'] });
    const regOp = await waitOp(reg.body.operation_id);
    if (regOp.status !== 'succeeded') throw new Error(`register: ${regOp.reason_message}`);
    const cid = regOp.container_id!;
    const vol = join(s.dataDir, 'branching', 'containers', cid, 'vol');

    const api: number[] = [];
    const bare: number[] = [];
    let strategy = '';
    for (let i = 0; i < reps + 1; i++) {
      // bare primitive on the same volume
      const dest = join(loop.mnt, `bare-${i}`);
      const t0 = performance.now();
      const r = await copyTree(vol, dest);
      const bareMs = performance.now() - t0;
      strategy = r.strategy;
      await removeTree(dest);
      // through the API
      const t1 = performance.now();
      const acc = await s.api<Op>('POST', `/api/containers/${cid}/snapshot`, token, { consistency_mode: 'crash-consistent' });
      const done = await waitOp(acc.body.operation_id);
      const apiMs = performance.now() - t1;
      if (done.status !== 'succeeded') throw new Error(`snapshot: ${done.reason_message}`);
      await s.api('DELETE', `/api/snapshots/${done.snapshot_id}`, token);
      await new Promise((r) => setTimeout(r, kind === 'btrfs' ? 50 : 1500)); // let the background removal finish
      if (i === 0) continue; // warm-up
      bare.push(bareMs);
      api.push(apiMs);
    }
    const a = median(api);
    const b = median(bare);
    rows.push([kind, `${st.files} files, ${(st.bytes / 2 ** 20).toFixed(0)} MiB`, strategy, a.toFixed(1), b.toFixed(1), (a - b).toFixed(1), a - b <= 10 ? 'yes' : 'no']);
    await s.api('DELETE', `/api/containers/${cid}`, token);
  } catch (e) {
    console.error(`${kind}: ${e instanceof Error ? e.stack : String(e)}`);
    process.exitCode = 1;
  } finally {
    await srv?.stop();
    await new Promise((r) => setTimeout(r, 500));
    loop.cleanup();
  }
}

const head = ['fs', 'tree', 'strategy', 'API snapshot ms (median)', 'bare primitive ms (median)', 'overhead ms', '≤ 10 ms'];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
for (const r of [head, ...rows]) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join('  '));
console.log(`(${reps} runs each after a warm-up; warm caches; API = POST snapshot → operation succeeded, long-polled)`);
