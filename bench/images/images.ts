/**
 * Issue 17 figures, each beside a baseline measured in the same run:
 * 1. image build: `loom-server admin build-image` of the dev image (mmdebstrap + our additions +
 *    deterministic layer + store import) vs a bare `mmdebstrap` of the same packages to a tar;
 * 2. `loom new` → first prompt byte (create through the API, wait running, attach, first "$ ")
 *    on the dev image vs on the busybox image loom/minimal;
 * 3. weaver network throughput through slirp4netns (HTTP download from a server in another
 *    network namespace joined by a veth) vs the same download on the host's loopback.
 * Run as root after `npm run build`:  npx tsx bench/images/images.ts [news=5] [MiB=256] [--no-build-baseline]
 */
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { SERVER_BIN, freshDataDir, run, startServer, type TestServer } from '../../tests/support/server.js';
import { AttachClient, waitUntil } from '../../tests/support/attach.js';
import { DEV_IMAGE_REQUEST } from '../../src/images/builder.js';

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const NEWS = Number(args[0] ?? 5);
const MIB = Number(args[1] ?? 256);
const buildBaseline = !process.argv.includes('--no-build-baseline');
const onlyNet = process.argv.includes('--only-net');
const execFileP = promisify(execFile);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const ratio = (a: number, b: number) => (a / b).toFixed(2);

async function main(): Promise<void> {
  const dataDir = freshDataDir('loom-bench-img-');
  if (onlyNet) {
    const srv = await startServer({ dataDir });
    const tok = await srv.token('bench', true);
    try {
      await throughput(srv, tok);
    } catch (e) {
      console.error(e);
    } finally {
      for (const w of (await srv.api<{ weavers: { id: string }[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
      await srv.stop();
    }
    return;
  }
  // 1. build time
  let t0 = performance.now();
  const b = await run(process.execPath, [SERVER_BIN, 'admin', 'build-image'], { env: { ...process.env, LOOM_DATA_DIR: dataDir }, timeoutMs: 3_600_000 });
  if (b.code !== 0) throw new Error(b.stderr);
  const oursBuild = (performance.now() - t0) / 1000;
  let baseBuild = NaN;
  if (buildBaseline) {
    const tmp = mkdtempSync(join(tmpdir(), 'loom-bench-mmdeb-'));
    t0 = performance.now();
    const r = spawnSync('mmdebstrap', ['--mode=root', '--variant=apt', '--quiet', `--include=${DEV_IMAGE_REQUEST.packages.join(',')}`, 'bookworm', join(tmp, 'root.tar'), 'deb http://deb.debian.org/debian bookworm main'], { stdio: 'ignore' });
    baseBuild = (performance.now() - t0) / 1000;
    rmSync(tmp, { recursive: true, force: true });
    if (r.status !== 0) baseBuild = NaN;
  }
  console.log(`image build (dev image, ${DEV_IMAGE_REQUEST.packages.length} packages): loom ${oursBuild.toFixed(1)} s, bare mmdebstrap ${baseBuild.toFixed(1)} s, ratio ${ratio(oursBuild, baseBuild)}`);

  const srv = await startServer({ dataDir });
  const tok = await srv.token('bench', true);
  try {
    // 2. new → first prompt byte
    const firstPrompt = async (image: string): Promise<number[]> => {
      const out: number[] = [];
      for (let i = 0; i < NEWS + 1; i++) {
        const s = performance.now();
        const r = await srv.api<{ id: string }>('POST', '/api/weaver', tok, { image });
        await waitUntil(async () => ((await srv.api<{ status: string }>('GET', `/api/weaver/${r.body.id}`, tok)).body.status === 'running' ? true : null), 'running', 120_000, 10);
        const a = await AttachClient.connect(srv.url, r.body.id, { token: tok });
        await a.waitFor(/\$ /, 60_000);
        if (i > 0) out.push(performance.now() - s); // the first one warms the unpack
        await a.close();
        await srv.api('DELETE', `/api/weaver/${r.body.id}`, tok);
      }
      return out;
    };
    const dev = await firstPrompt('loom/dev:bookworm');
    const mini = await firstPrompt('loom/minimal');
    console.log(`loom new → first prompt byte (median of ${NEWS}): dev image ${median(dev).toFixed(0)} ms, busybox ${median(mini).toFixed(0)} ms, ratio ${ratio(median(dev), median(mini))}`);

    // 3. slirp throughput vs host loopback
    await throughput(srv, tok);
  } finally {
    for (const w of (await srv.api<{ weavers: { id: string }[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
    await srv.stop();
  }
}

async function throughput(srv: TestServer, tok: string): Promise<void> {
  const ns = `loom-bench-${process.pid}`;
  const vh = `lbh${process.pid % 100000}`;
  const vn = `lbn${process.pid % 100000}`;
  const ip = (...a: string[]) => execFileSync('ip', a);
  const bytes = MIB * 1048576;
  const serve = `const b=Buffer.alloc(1<<20);require('http').createServer((q,r)=>{r.writeHead(200,{'content-length':${bytes}});let n=${MIB};const w=()=>{while(n>0){n--;if(!r.write(b))return r.once('drain',w)}r.end()};w()}).listen(0,process.argv[1],function(){console.log(this.address().port)})`;
  let inet: ReturnType<typeof spawn> | null = null;
  try {
    ip('netns', 'add', ns);
    ip('link', 'add', vh, 'type', 'veth', 'peer', 'name', vn);
    ip('link', 'set', vn, 'netns', ns);
    ip('addr', 'add', '198.51.100.249/30', 'dev', vh);
    ip('link', 'set', vh, 'up');
    ip('-n', ns, 'addr', 'add', '198.51.100.250/30', 'dev', vn);
    ip('-n', ns, 'link', 'set', vn, 'up');
    const inet2 = (inet = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', serve, '198.51.100.250'], { stdio: ['ignore', 'pipe', 'inherit'] }));
    const [pl] = (await once(inet2.stdout!, 'data')) as [Buffer];
    const port = Number(pl.toString().trim());
    const local = createServer((_q, r) => {
      const chunk = Buffer.alloc(1 << 20);
      r.writeHead(200, { 'content-length': bytes });
      let n = MIB;
      const w = () => {
        while (n > 0) {
          n--;
          if (!r.write(chunk)) return void r.once('drain', w);
        }
        r.end();
      };
      w();
    }).listen(0, '127.0.0.1');
    await once(local, 'listening');
    const lport = (local.address() as AddressInfo).port;
    const w = await srv.api<{ id: string }>('POST', '/api/weaver', tok, { image: 'loom/minimal' });
    await waitUntil(async () => ((await srv.api<{ status: string }>('GET', `/api/weaver/${w.body.id}`, tok)).body.status === 'running' ? true : null), 'running', 60_000);
    const execMs = async (command: string[]) => {
      const s = performance.now();
      const r = await srv.api<{ exit_code: number; stderr: string }>('POST', `/api/weaver/${w.body.id}/exec`, tok, { command, timeout_secs: 300 });
      if (r.body.exit_code !== 0) throw new Error(`${command.join(' ')}: ${r.status} ${JSON.stringify(r.body)}`);
      return performance.now() - s;
    };
    const overhead = await execMs(['true']);
    const slirpMs = (await execMs(['wget', '-q', '-O', '/dev/null', `http://198.51.100.250:${port}/`])) - overhead;
    let s = performance.now();
    await execFileP('busybox', ['wget', '-q', '-O', '/dev/null', `http://127.0.0.1:${lport}/`]); // async: the server is in this process
    const loMs = performance.now() - s;
    s = performance.now();
    await execFileP('busybox', ['wget', '-q', '-O', '/dev/null', `http://198.51.100.250:${port}/`]);
    const vethMs = performance.now() - s;
    const mbps = (ms: number) => MIB / (ms / 1000);
    console.log(`download ${MIB} MiB (busybox wget): weaver via slirp4netns ${mbps(slirpMs).toFixed(0)} MiB/s, host loopback ${mbps(loMs).toFixed(0)} MiB/s, ratio ${ratio(mbps(slirpMs), mbps(loMs))} (host via the veth: ${mbps(vethMs).toFixed(0)} MiB/s)`);
    local.close();
    await srv.api('DELETE', `/api/weaver/${w.body.id}`, tok);
  } finally {
    inet?.kill('SIGKILL');
    try {
      ip('link', 'del', vh);
    } catch {
      /* not made */
    }
    try {
      ip('netns', 'del', ns);
    } catch {
      /* not made */
    }
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
