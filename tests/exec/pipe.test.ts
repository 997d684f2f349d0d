/**
 * The addon's pipe(): close-on-exec, its buffer grown (exec output and file transfers use it so a
 * 1 MiB write never blocks on a 64 KiB pipe), and bytes pass through it unchanged.
 */
import t from 'tap';
import { closeSync, readSync, writeSync, readlinkSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { nativeAddon } from '../../src/branching/copy.js';

t.test('pipe(size) grows the buffer and carries bytes', async (t) => {
  const p = nativeAddon().pipe(1 << 20);
  t.teardown(() => {
    closeSync(p.read);
    closeSync(p.write);
  });
  t.match(readlinkSync(`/proc/self/fd/${p.read}`), /^pipe:/);
  t.equal(readlinkSync(`/proc/self/fd/${p.read}`), readlinkSync(`/proc/self/fd/${p.write}`), 'both ends of one pipe');
  t.equal(p.size, 1 << 20, 'the kernel buffer is 1 MiB (pipe-max-size allows it)');
  const data = Buffer.alloc(p.size, 7);
  t.equal(writeSync(p.write, data), p.size, 'a write of the whole buffer does not block');
  const back = Buffer.alloc(p.size);
  t.equal(readSync(p.read, back), p.size);
  t.ok(back.equals(data));
  // Close-on-exec: a child started meanwhile does not hold our ends (or EOF would never come).
  const fds = execFileSync('sh', ['-c', 'ls /proc/$$/fd'], { encoding: 'utf8' }).split(/\s+/);
  t.notOk(fds.includes(String(p.write)), 'the write end is not inherited');
});

t.test('pipe() without a size keeps the default', async (t) => {
  const p = nativeAddon().pipe(0);
  t.teardown(() => {
    closeSync(p.read);
    closeSync(p.write);
  });
  t.ok(p.size >= 4096);
});
