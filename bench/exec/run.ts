/**
 * Exec and files through the real server, each beside a baseline measured in the same run on the
 * same weaver:
 *   - one-shot exec of `true` (POST /exec round trip, p50/p99) vs `runc exec <id> true` run directly;
 *   - exec stdout throughput over the WebSocket vs `runc exec <id> cat <file>` read by a local process;
 *   - file upload/download (PUT/GET /files) vs `cat` through the same exec WebSocket.
 * Run as root after `npm run build`:  npx tsx bench/exec/run.ts [reps=100] [MiB=256]
 */
import { execFile, spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { startServer } from '../../tests/support/server.js';
import { LoomClient } from '../../src/client/index.js';

const REPS = Number(process.argv[2] ?? 100);
const MIB = Number(process.argv[3] ?? 256);
const BYTES = MIB * 1024 * 1024;
const pct = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;
const f1 = (n: number) => n.toFixed(1);

function runc(root: string, args: string[], sink?: (b: Buffer) => void): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = spawn('runc', ['--root', root, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    c.stdout.on('data', (b: Buffer) => sink?.(b));
    c.on('error', reject);
    c.on('close', (code) => resolve(code ?? -1));
  });
}

async function main(): Promise<void> {
  const srv = await startServer();
  const token = await srv.token('bench');
  const loom = new LoomClient({ serverUrl: srv.url, token });
  const root = `${srv.dataDir}/local/runc`;
  let id = '';
  try {
    id = (await loom.waitUntilRunning((await loom.createWeaver({ resources: { cpu: '2', memory: '2Gi' } })).id)).id;
    for (let i = 0; i < 5; i++) {
      await loom.exec(id, ['true']);
      await runc(root, ['exec', id, 'true']);
    }

    // 1. one-shot `true`, interleaved so neither inherits the other's aftermath.
    const ours: number[] = [];
    const raw: number[] = [];
    for (let i = 0; i < REPS; i++) {
      let t0 = performance.now();
      const r = await loom.exec(id, ['true']);
      ours.push(performance.now() - t0);
      if (r.exit_code !== 0) throw new Error(`exec true: ${JSON.stringify(r)}`);
      t0 = performance.now();
      if ((await runc(root, ['exec', id, 'true'])) !== 0) throw new Error('runc exec failed');
      raw.push(performance.now() - t0);
    }
    console.log(`one-shot exec of \`true\` (${REPS} reps)`);
    console.log(`  loom POST /exec     p50 ${f1(pct(ours, 0.5))} ms  p99 ${f1(pct(ours, 0.99))} ms`);
    console.log(`  runc exec (direct)  p50 ${f1(pct(raw, 0.5))} ms  p99 ${f1(pct(raw, 0.99))} ms`);
    console.log(`  ratio p50 ${(pct(ours, 0.5) / pct(raw, 0.5)).toFixed(2)}x  p99 ${(pct(ours, 0.99) / pct(raw, 0.99)).toFixed(2)}x   (target p50 <= 1.5x; peers quote 20-50 ms for docker exec)`);

    // 2. files: PUT/GET vs cat through the same exec.
    const mbs = (ms: number) => MIB / (ms / 1000);
    let t0 = 0;
    const chunk = randomBytes(1024 * 1024);
    const body = () => Readable.from((function* () {
      for (let i = 0; i < MIB; i++) yield chunk;
    })());
    t0 = performance.now();
    await loom.writeFile(id, '/workspace/bench.bin', body());
    const upMs = performance.now() - t0;
    t0 = performance.now();
    const d = await loom.download(id, '/workspace/bench.bin');
    let down = 0;
    for await (const c of d.body) down += (c as Buffer).length;
    const downMs = performance.now() - t0;
    if (down !== BYTES) throw new Error(`download got ${down}`);

    t0 = performance.now();
    const up = await loom.execStream(id, ['sh', '-c', 'cat > /workspace/bench-cat.bin']);
    for (let i = 0; i < MIB; i++) if (!up.write(chunk)) await up.drained();
    up.end();
    if ((await up.exit) !== 0) throw new Error('cat upload failed');
    const catUpMs = performance.now() - t0;
    t0 = performance.now();
    const dn = await loom.execStream(id, ['cat', '/workspace/bench-cat.bin'], { stdin: false });
    let catDown = 0;
    dn.stdout.on('data', (b: Buffer) => (catDown += b.length));
    await dn.exit;
    await new Promise((r) => dn.stdout.once('end', r).resume());
    const catDownMs = performance.now() - t0;
    if (catDown !== BYTES) throw new Error(`cat download got ${catDown}`);
    console.log(`file transfer (${MIB} MiB, loopback)`);
    console.log(`  upload   PUT /files ${f1(mbs(upMs))} MiB/s   cat through exec ${f1(mbs(catUpMs))} MiB/s   ratio ${(mbs(upMs) / mbs(catUpMs)).toFixed(2)}x   (target >= 200 MB/s)`);
    console.log(`  download GET /files ${f1(mbs(downMs))} MiB/s   cat through exec ${f1(mbs(catDownMs))} MiB/s   ratio ${(mbs(downMs) / mbs(catDownMs)).toFixed(2)}x`);

    // 3. the same PUT/GET with curl as the client: the server's own rate, without Node on both ends.
    const local = `${srv.dataDir}/bench-upload.bin`;
    writeFileSync(local, Buffer.concat(Array.from({ length: MIB }, () => chunk)));
    const curl = (args: string[]) => promisify(execFile)('curl', ['-sS', '-f', '-o', '/dev/null', '-H', `authorization: Bearer ${token}`, ...args]);
    const url = `${srv.url}/api/weaver/${id}/files?path=/workspace/bench-curl.bin`;
    t0 = performance.now();
    await curl(['-T', local, '-H', 'content-type: application/octet-stream', url]);
    const curlUpMs = performance.now() - t0;
    t0 = performance.now();
    await curl([url]);
    const curlDownMs = performance.now() - t0;
    rmSync(local, { force: true });
    console.log(`  with curl as the client: upload ${f1(mbs(curlUpMs))} MiB/s   download ${f1(mbs(curlDownMs))} MiB/s`);

    // 4. stdout throughput: the file written above, read by `cat` over the WebSocket and by runc directly.
    let rawGot = 0;
    t0 = performance.now();
    await runc(root, ['exec', id, 'cat', '/workspace/bench.bin'], (b) => (rawGot += b.length));
    const rawMs = performance.now() - t0;
    if (rawGot !== BYTES) throw new Error(`runc exec cat got ${rawGot}`);
    console.log(`exec stdout throughput (${MIB} MiB, cat of a file)`);
    console.log(`  loom exec WebSocket ${f1(mbs(catDownMs))} MiB/s   runc exec (direct) ${f1(mbs(rawMs))} MiB/s   ratio ${(mbs(catDownMs) / mbs(rawMs)).toFixed(2)}x`);
  } finally {
    if (id) await loom.deleteWeaver(id).catch(() => undefined);
    await srv.stop();
  }
}

await main();
