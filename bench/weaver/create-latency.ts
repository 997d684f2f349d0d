/**
 * Create-to-running latency of local weavers (LocalProvisioner.create() → watch() 'running')
 * beside the floor: a raw `runc create` + `runc start` of a container from the same rootfs,
 * measured in the same run. Run as root: npx tsx bench/weaver/create-latency.ts [N]
 */
import { mkdtempSync, promises as fsp, openSync, closeSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { LocalProvisioner, DEFAULT_LOCAL_IMAGE, buildOciSpec, unmountAll } from '../../src/provisioners/local/index.js';
import type { WeaverSpec } from '../../src/weaver/provisioner.js';

const N = Number(process.argv[2] ?? 50);
const dataDir = mkdtempSync(join(tmpdir(), 'loom-bench-'));
const p = new LocalProvisioner({ dataDir, log: pino({ level: 'silent' }), stopGraceMs: 100 });

const pct = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};

function spec(): WeaverSpec {
  const now = new Date();
  return { id: randomUUID(), orgId: 'o', ownerUserId: 'u', image: DEFAULT_LOCAL_IMAGE, env: {}, resources: { cpu: '1', memory: '256Mi' },
    lifetimeHours: 1, createdAt: now, expiresAt: now, tags: {} };
}

async function ours(): Promise<number> {
  const s = spec();
  const t0 = performance.now();
  const running = new Promise<void>((resolve, reject) => {
    const off = p.watch((w) => {
      if (w.id !== s.id) return;
      if (w.status === 'running') { off(); resolve(); }
      if (w.status === 'failed') { off(); reject(new Error(w.reason)); }
    });
  });
  await p.create(s);
  await running;
  const ms = performance.now() - t0;
  await p.delete(s.id);
  return ms;
}

function runc(args: string[], fd?: number): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const c = spawn('runc', args, { stdio: fd === undefined ? 'ignore' : ['ignore', fd, fd] });
    c.on('error', reject);
    c.on('exit', resolve);
  });
}

async function floor(rootfs: string): Promise<number> {
  const id = `floor-${randomUUID()}`;
  const bundle = join(dataDir, 'floor', id);
  const root = join(dataDir, 'floor-runc');
  await fsp.mkdir(bundle, { recursive: true });
  const t0 = performance.now();
  const cfg = buildOciSpec({ rootfs, readonlyRootfs: true, args: ['/bin/sh', '-c', 'sleep 1000'], env: {}, cwd: '/', uid: 1000, gid: 1000,
    terminal: false, hostname: 'floor', cgroupsPath: `/loom/${id}`, cpu: '1', memory: '256Mi' });
  await fsp.writeFile(join(bundle, 'config.json'), JSON.stringify(cfg));
  const fd = openSync('/dev/null', 'w');
  if ((await runc(['--root', root, 'create', '--bundle', bundle, id], fd)) !== 0) throw new Error('runc create failed');
  closeSync(fd);
  if ((await runc(['--root', root, 'start', id])) !== 0) throw new Error('runc start failed');
  const ms = performance.now() - t0;
  await runc(['--root', root, 'delete', '--force', id]);
  await fsp.rm(bundle, { recursive: true, force: true });
  return ms;
}

try {
  await p.start();
  const img = await p.images.resolve(DEFAULT_LOCAL_IMAGE);
  await ours(); // warm-up (image unpack, relay build, page cache)
  await floor(img.rootfs);
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < N; i++) {
    a.push(await ours());
    b.push(await floor(img.rootfs));
  }
  const row = (name: string, xs: number[]) => `${name.padEnd(34)} p50 ${pct(xs, 0.5).toFixed(1).padStart(7)} ms   p95 ${pct(xs, 0.95).toFixed(1).padStart(7)} ms`;
  console.log(`create-to-running over ${N} weavers (${p.containerRuntime.info.name} ${p.containerRuntime.info.version})`);
  console.log(row('loom local (conmon, overlay, tty)', a));
  console.log(row('floor: runc create + start', b));
  const r50 = pct(a, 0.5) / pct(b, 0.5);
  console.log(`ratio p50 ${r50.toFixed(2)}x, p95 ${(pct(a, 0.95) / pct(b, 0.95)).toFixed(2)}x; target p50 <= 2x floor + 20 ms = ${(2 * pct(b, 0.5) + 20).toFixed(1)} ms: ${pct(a, 0.5) <= 2 * pct(b, 0.5) + 20 ? 'met' : 'NOT met'}`);
} finally {
  await p.reconcile([]);
  await p.close();
  await unmountAll(dataDir);
  await fsp.rm(dataDir, { recursive: true, force: true });
}
