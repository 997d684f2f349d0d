/**
 * The bench's TCP ends. `server <addr> <port>`: the first byte of a connection picks sink ('S':
 * count bytes, answer the count at end) or echo ('E'). `client <addr> <port> <bytes> <round trips>`:
 * prints JSON {seconds, bytes, rttsUs[]} for one bulk transfer and sequential 1-byte echoes.
 */
import { connect, createServer, type Socket } from 'node:net';
import { once } from 'node:events';

const [mode, addr, portArg, bytesArg, rttArg] = process.argv.slice(2);
const port = Number(portArg);

if (mode === 'server') {
  const server = createServer((s) => {
    s.setNoDelay(true);
    let kind = '';
    let count = 0;
    s.on('data', (d: Buffer) => {
      if (!kind) {
        kind = String.fromCharCode(d[0]!);
        d = d.subarray(1);
      }
      if (kind === 'S') count += d.length;
      else if (d.length) s.write(d);
    });
    s.on('end', () => {
      if (kind === 'S') {
        const b = Buffer.alloc(8);
        b.writeBigUInt64BE(BigInt(count));
        s.end(b);
      } else s.end();
    });
    s.on('error', () => {});
  });
  server.listen(port, addr, () => process.stdout.write('listening\n'));
} else if (mode === 'client') {
  const total = Number(bytesArg);
  const rtts = Number(rttArg);
  const open = async (): Promise<Socket> => {
    const s = connect({ host: addr, port });
    await once(s, 'connect');
    s.setNoDelay(true);
    return s;
  };
  const bulk = await open();
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  const reply: Buffer[] = [];
  bulk.on('data', (d: Buffer) => reply.push(d));
  const started = process.hrtime.bigint();
  bulk.write('S');
  for (let sent = 0; sent < total; sent += chunk.length) {
    if (!bulk.write(chunk.subarray(0, Math.min(chunk.length, total - sent)))) await once(bulk, 'drain');
  }
  bulk.end();
  await once(bulk, 'close');
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const received = Number(Buffer.concat(reply).readBigUInt64BE(0));
  if (received !== total) throw new Error(`server received ${received} of ${total} bytes`);

  const echo = await open();
  echo.write('E');
  const rttsUs: number[] = [];
  const one = Buffer.from('x');
  for (let i = 0; i < rtts; i++) {
    const t0 = process.hrtime.bigint();
    const got = once(echo, 'data');
    echo.write(one);
    await got;
    rttsUs.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  echo.end();
  process.stdout.write(JSON.stringify({ seconds, bytes: total, rttsUs }) + '\n');
  process.exit(0);
} else {
  process.stderr.write('usage: tcp-tool server ADDR PORT | client ADDR PORT BYTES RTTS\n');
  process.exit(2);
}
