/**
 * Attach performance through the real server: keystroke round trip (a byte typed into a weaver
 * and its echo back) and output throughput, over the WebSocket (ours) beside the backend's own
 * terminal stream to the same weaver (the floor: conmon's socket through the relay, no server,
 * no WebSocket), measured in the same run. Run as root after `npm run build`:
 *   npx tsx bench/weaver/attach.ts [keystrokes=2000] [MiB=256]
 */
import { spawnSync } from 'node:child_process';
import { pino } from 'pino';
import { startServer } from '../../tests/support/server.js';
import { AttachClient, waitUntil } from '../../tests/support/attach.js';
import { LocalProvisioner } from '../../src/provisioners/local/index.js';
import type { TerminalStream } from '../../src/weaver/provisioner.js';

const KEYS = Number(process.argv[2] ?? 2000);
const MIB = Number(process.argv[3] ?? 256);
const pct = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;

/** Something that can send bytes and tells us about received bytes. */
interface Pipe {
  send(b: Buffer): void;
  onData(cb: (b: Buffer) => void): void;
}

async function roundTrips(pipe: Pipe, n: number): Promise<number[]> {
  let waiting: ((b: Buffer) => void) | null = null;
  pipe.onData((b) => waiting?.(b));
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const ch = String.fromCharCode(97 + (i % 26));
    const t0 = performance.now();
    await new Promise<void>((resolve) => {
      waiting = (b) => {
        if (b.includes(ch)) {
          waiting = null;
          resolve();
        }
      };
      pipe.send(Buffer.from(ch));
    });
    out.push(performance.now() - t0);
    if (i % 64 === 63) pipe.send(Buffer.from('\x15')); // Ctrl+U: keep the line short
  }
  return out;
}

async function throughput(pipe: Pipe, bytes: number): Promise<number> {
  let got = 0;
  let t0 = 0;
  const done = new Promise<number>((resolve) => {
    pipe.onData((b) => {
      if (!t0) return;
      got += b.length;
      if (got >= bytes) resolve(performance.now() - t0);
    });
  });
  t0 = performance.now();
  pipe.send(Buffer.from(`head -c ${bytes} /dev/zero; echo\n`));
  const ms = await done;
  return (bytes / 1048576) / (ms / 1000);
}

async function main(): Promise<void> {
  const srv = await startServer();
  const tok = await srv.token('bench');
  let direct: LocalProvisioner | null = null;
  try {
    const create = async () => {
      const r = await srv.api<{ id: string }>('POST', '/api/weaver', tok, { command: ['/bin/sh', '-c', 'stty -echo; exec cat'] });
      await waitUntil(async () => (await srv.api<{ status: string }>('GET', `/api/weaver/${r.body.id}`, tok)).body.status === 'running', 'running');
      return r.body.id;
    };
    // Keystrokes: cat echoes each byte after the pty line discipline delivers it (raw mode).
    const keyId = await create();
    const ws = await AttachClient.connect(srv.url, keyId, { token: tok });
    const wsPipe: Pipe = { send: (b) => ws.ws.send(b, { binary: true }), onData: (cb) => ws.ws.on('message', (d: Buffer, bin: boolean) => bin && cb(d)) };

    direct = new LocalProvisioner({ dataDir: srv.dataDir, log: pino({ level: 'silent' }), prepareDefaultImage: false });
    await direct.start();
    const stream: TerminalStream = await direct.attach(keyId);
    const directPipe: Pipe = { send: (b) => stream.write(b), onData: (cb) => stream.onData(cb) };

    // cat in cooked mode echoes nothing (stty -echo) and prints a line on newline: send a byte + \n.
    const lineTrips = async (pipe: Pipe, n: number) => {
      const wrapped: Pipe = { send: (b) => pipe.send(b.length === 1 && b[0] !== 0x15 ? Buffer.concat([b, Buffer.from('\n')]) : Buffer.alloc(0)), onData: pipe.onData };
      return roundTrips(wrapped, n);
    };
    await lineTrips(directPipe, 100); // warm-up
    await lineTrips(wsPipe, 100);
    const floorKeys = await lineTrips(directPipe, KEYS);
    const oursKeys = await lineTrips(wsPipe, KEYS);
    stream.close();
    await ws.close();

    // Throughput: a shell that writes MiB of output to its terminal.
    const tpId = (await srv.api<{ id: string }>('POST', '/api/weaver', tok, {})).body.id;
    await waitUntil(async () => (await srv.api<{ status: string }>('GET', `/api/weaver/${tpId}`, tok)).body.status === 'running', 'running');
    const ws2 = await AttachClient.connect(srv.url, tpId, { token: tok });
    await ws2.waitFor(/\$ /);
    const ws2Pipe: Pipe = { send: (b) => ws2.ws.send(b, { binary: true }), onData: (cb) => ws2.ws.on('message', (d: Buffer, bin: boolean) => bin && cb(d)) };
    const oursMBs = await throughput(ws2Pipe, MIB * 1048576);
    await ws2.close();
    const stream2 = await direct.attach(tpId);
    await new Promise((r) => setTimeout(r, 500));
    const floorMBs = await throughput({ send: (b) => stream2.write(b), onData: (cb) => stream2.onData(cb) }, MIB * 1048576);
    stream2.close();

    // The pty itself, with no container, conmon or server: util-linux `script` copying a pty to /dev/null.
    const t0 = performance.now();
    spawnSync('script', ['-q', '-c', `head -c ${MIB * 1048576} /dev/zero`, '/dev/null'], { stdio: ['ignore', 'ignore', 'inherit'] });
    const ptyMBs = MIB / ((performance.now() - t0) / 1000);

    const row = (name: string, o: number, f: number, unit: string) =>
      `${name.padEnd(26)} ${o.toFixed(3).padStart(10)} ${f.toFixed(3).padStart(10)} ${(o / f).toFixed(2).padStart(7)}x  ${unit}`;
    console.log(`attach bench: ${KEYS} keystrokes, ${MIB} MiB of output`);
    console.log(`${'figure'.padEnd(26)} ${'ours(ws)'.padStart(10)} ${'floor'.padStart(10)} ${'ratio'.padStart(8)}`);
    console.log(row('keystroke RTT p50', pct(oursKeys, 0.5), pct(floorKeys, 0.5), 'ms (target p99 < 5 ms)'));
    console.log(row('keystroke RTT p99', pct(oursKeys, 0.99), pct(floorKeys, 0.99), 'ms'));
    console.log(row('output throughput', oursMBs, floorMBs, 'MB/s (target >= 200 MB/s)'));
    console.log(row('  vs a bare pty (script)', oursMBs, ptyMBs, 'MB/s: the ceiling of any terminal path on this host'));
  } finally {
    await direct?.close();
    for (const w of (await srv.api<{ weavers: { id: string }[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
    await srv.stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
