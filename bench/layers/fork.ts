/**
 * Fork latency of a running local weaver on the default data dir (os.tmpdir(), ext4 here):
 * LocalProvisioner.snapshot() of the parent's layer + create({fromSnapshot}) → watch() 'running'
 * (fork → running), then → the first byte read from the fork's terminal through the attach relay
 * (→ first attach byte: attach, send a newline, the shell's answer), beside the floor measured in the same run: a raw `runc create` + `runc start`
 * of a container from the same image rootfs. Run as root: npx tsx bench/layers/fork.ts [N]
 *
 * This is the backend's part of POST /api/weaver/:id/fork (the HTTP request adds a few ms of
 * routing and SQLite); the parent has written 1 MB into its layer before the runs.
 */
import { mkdtempSync, promises as fsp, openSync, closeSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { LocalProvisioner, DEFAULT_LOCAL_IMAGE, buildOciSpec, unmountAll } from '../../src/provisioners/local/index.js';
import type { WeaverSpec } from '../../src/weaver/provisioner.js';

const N = Number(process.argv[2] ?? 20);
const dataDir = mkdtempSync(join(tmpdir(), 'loom-bench-fork-'));
// The provisioner's 'weaver running' line carries where each start spent its time (phases).
const phases = new Map<string, Record<string, number>>();
const sink = { write(line: string) {
  const j = JSON.parse(line) as { msg?: string; weaver?: string; phases?: Record<string, number> };
  if (j.msg === 'weaver running' && j.weaver && j.phases) phases.set(j.weaver, j.phases);
} };
const p = new LocalProvisioner({ dataDir, log: pino({ level: 'info' }, sink), stopGraceMs: 100 });

const pct = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;

function spec(over: Partial<WeaverSpec> = {}): WeaverSpec {
  const now = new Date();
  return { id: randomUUID(), orgId: 'o', ownerUserId: 'u', image: DEFAULT_LOCAL_IMAGE, env: {}, resources: { cpu: '1', memory: '256Mi' }, lifetimeHours: 1, createdAt: now, expiresAt: now, tags: {}, ...over };
}

function running(id: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const off = p.watch((w) => {
      if (w.id !== id) return;
      if (w.status === 'running') { off(); resolve(); }
      if (w.status === 'failed') { off(); reject(new Error(w.reason)); }
    });
  });
}

async function fork(parent: string): Promise<{ running: number; firstByte: number; snapshot: number; id: string }> {
  const sid = randomUUID();
  const s = spec({ fromSnapshot: sid });
  const t0 = performance.now();
  await p.snapshot(parent, sid, { freeze: false });
  const tSnap = performance.now() - t0;
  const up = running(s.id);
  await p.create(s);
  await up;
  const t1 = performance.now();
  const term = await p.attach(s.id);
  // The shell printed its prompt before we attached: a newline makes it answer with one.
  const first = new Promise<void>((resolve) => term.onData(() => resolve()));
  term.write(Buffer.from('\n'));
  await first;
  const t2 = performance.now();
  term.close();
  await p.delete(s.id);
  await p.removeSnapshot(sid);
  return { running: t1 - t0, firstByte: t2 - t0, snapshot: tSnap, id: s.id };
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

const parent = spec();
try {
  await p.start();
  const img = await p.images.resolve(DEFAULT_LOCAL_IMAGE);
  const up = running(parent.id);
  await p.create(parent);
  await up;
  await fsp.writeFile(join(dataDir, 'local', 'weavers', parent.id, 'rootfs', 'workspace', 'state.bin'), Buffer.alloc(1 << 20, 1));
  await fork(parent.id); // warm-up
  await floor(img.rootfs);
  const run: number[] = [];
  const byte: number[] = [];
  const fl: number[] = [];
  const snap: number[] = [];
  const ids: string[] = [];
  for (let i = 0; i < N; i++) {
    const r = await fork(parent.id);
    run.push(r.running);
    byte.push(r.firstByte);
    snap.push(r.snapshot);
    ids.push(r.id);
    fl.push(await floor(img.rootfs));
  }
  const row = (name: string, xs: number[]) => `${name.padEnd(40)} p50 ${pct(xs, 0.5).toFixed(1).padStart(7)} ms   p95 ${pct(xs, 0.95).toFixed(1).padStart(7)} ms`;
  console.log(`fork of a running weaver over ${N} forks (${p.containerRuntime.info.name} ${p.containerRuntime.info.version}, data dir ${dataDir})`);
  console.log(row('fork -> running', run));
  console.log(row('fork -> first attach byte', byte));
  console.log(row('floor: runc create + start', fl));
  console.log('where fork -> running goes (p50 of each part):');
  console.log(row('  snapshot of the parent layer', snap));
  const names = [...new Set(ids.flatMap((id) => Object.keys(phases.get(id) ?? {})))];
  for (const n of names) console.log(row(`  start: ${n}`, ids.map((id) => phases.get(id)?.[n] ?? 0)));
  console.log(`ratio p50: running ${(pct(run, 0.5) / pct(fl, 0.5)).toFixed(2)}x, first byte ${(pct(byte, 0.5) / pct(fl, 0.5)).toFixed(2)}x the floor; targets running <= 100 ms: ${pct(run, 0.5) <= 100 ? 'met' : 'NOT met'}, first byte <= 150 ms: ${pct(byte, 0.5) <= 150 ? 'met' : 'NOT met'}`);
} finally {
  await p.delete(parent.id).catch(() => undefined);
  await p.reconcile([]);
  await p.close();
  await unmountAll(dataDir);
  await fsp.rm(dataDir, { recursive: true, force: true });
}
