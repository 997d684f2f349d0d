import t from 'tap';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_LOCAL_IMAGE, hostnameFor } from '../../src/provisioners/local/index.js';
import type { BackendWeaver } from '../../src/weaver/provisioner.js';
import {
  localDataDir, newLocal, weaverSpec, waitStatus, TermReader, cgroupLimits, processesMentioning, mountsMentioning,
} from '../support/local-helpers.js';
import { leftovers } from '../support/reap.js';
import { waitUntil } from '../support/attach.js';

/** The tty size the shell reports ("rows cols"). */
async function ttySize(a: TermReader): Promise<string> {
  const mark = a.out.length;
  a.send('stty size\n');
  const m = await a.expect(/(?:^|\n)(\d+) (\d+)\r?\n/, 10_000, mark);
  return `${m[1]} ${m[2]}`;
}

const dataDir = localDataDir(t);
const p = newLocal(dataDir);
t.teardown(() => p.close());

t.test('start builds the default image and reports health', async (t) => {
  await p.start();
  const imgs = await p.images.list();
  t.ok(imgs.some((i) => i.name === DEFAULT_LOCAL_IMAGE && i.digest.startsWith('sha256:')), 'default image listed');
  const h = await p.health();
  t.equal(h.ok, true);
  t.match(h.detail, /^(runc|crun) \S+/);
});

t.test('weaver lifecycle: pending → running, attach, resize, detach, reattach, exit code', async (t) => {
  const spec = weaverSpec({ env: { GREETING: 'hello-env' }, resources: { cpu: '500m', memory: '256Mi' } });
  const events: BackendWeaver[] = [];
  const off = p.watch((w) => w.id === spec.id && events.push(w));
  t.teardown(off);
  const running = waitStatus(p, spec.id, ['running', 'failed']);
  await p.create(spec);
  t.notOk(events.some((e) => e.status === 'running'), 'create returns before the weaver runs (it does not wait)');
  const w = await running;
  t.equal(w.status, 'running', `running (${w.reason ?? ''})`);
  t.ok(w.startedAt instanceof Date, 'startedAt set');
  t.same(events.map((e) => e.status).slice(0, 2), ['pending', 'running']);
  t.equal((await p.get(spec.id))?.status, 'running');
  t.ok((await p.list()).some((x) => x.id === spec.id && x.status === 'running'));

  const a = new TermReader(await p.attach(spec.id, { cols: 90, rows: 20 }));
  a.send('echo hi-$((1+2))\n');
  await a.expect(/hi-3/);
  // The resize reaches the tty through conmon's winsz fifo, asynchronously: ask the tty until it
  // reports the new size (a resize that never arrives times out).
  a.s.resize(123, 45);
  await waitUntil(async () => (await ttySize(a)) === '45 123', 'the tty to report 45 rows and 123 columns', 10_000);
  let mark = a.out.length;
  a.send('echo "u=$(id -u) h=$(hostname) g=$GREETING home=$HOME pwd=$(pwd)"\n');
  const m = await a.expect(/u=(\d+) h=(\S+) g=(\S+) home=(\S+) pwd=(\S+)\r?\n/, 10_000, mark);
  t.equal(m[1], '1000', 'non-root uid 1000');
  t.equal(m[2], hostnameFor(spec.id), 'own hostname');
  t.equal(m[3], 'hello-env', 'env passed');
  t.equal(m[4], '/workspace');
  t.equal(m[5], '/workspace');

  mark = a.out.length;
  a.send('echo "ifs=$(ls /sys/class/net | tr "\\n" ,) n=$(ip -o link | wc -l) lo=$(ip -o link show lo | grep -c UP)" && touch /workspace/f && echo ws-$((1+1))ok\n');
  const net = await a.expect(/ifs=(\S*) n=\s*(\d+) lo=(\d+)/, 10_000, mark);
  await a.expect(/ws-2ok/, 10_000, mark);
  t.equal(net[1], 'lo,', 'only lo in /sys/class/net');
  t.equal(net[2], '1', 'ip link shows one interface');
  t.equal(net[3], '1', 'lo is up');

  // cgroup limits, read from the host
  const st = await p.containerRuntime.state(spec.id);
  t.ok(st && st.pid > 0);
  const lim = cgroupLimits(st!.pid);
  t.equal(lim.memory, 256 * 1024 * 1024, 'memory limit');
  t.equal(lim.cpuQuota, 50_000, 'cpu quota 500m');
  t.equal(lim.cpuPeriod, 100_000);
  // pause/resume (cgroup freezer), as the branching feature uses them
  await p.containerRuntime.pause(spec.id);
  t.equal((await p.containerRuntime.state(spec.id))?.status, 'paused');
  t.equal((await p.get(spec.id))?.status, 'running', 'a paused weaver still reports running');
  await p.containerRuntime.resume(spec.id);
  t.equal((await p.containerRuntime.state(spec.id))?.status, 'running');
  // own pid namespace: the shell is pid 1
  mark = a.out.length;
  a.send('echo pid=$$\n');
  await a.expect(/pid=1\r?\n/, 10_000, mark);

  // a second simultaneous attach
  const b = new TermReader(await p.attach(spec.id));
  b.send('echo from-b-$((40+2))\n');
  await b.expect(/from-b-42/);
  await a.expect(/from-b-42/);

  // detach both; the weaver keeps running
  a.s.close();
  b.s.close();
  t.same(await a.waitClosed(), {}, 'a detached (its relay to conmon closed, no exit code)');
  t.same(await b.waitClosed(), {}, 'b detached');
  const c = new TermReader(await p.attach(spec.id));
  c.send('echo again-$((2*3)) pid=$$\n');
  await c.expect(/again-6 pid=1\r?\n/);
  t.equal((await p.get(spec.id))?.status, 'running', 'still running after detach: the same shell (pid 1) answers a new attach');

  const ended = waitStatus(p, spec.id, ['failed', 'succeeded']);
  c.send('exit 3\n');
  const fin = await ended;
  t.equal(fin.status, 'failed');
  t.equal(fin.reason, 'exited with code 3');
  t.equal(fin.exitCode, 3);
  const closed = await c.waitClosed();
  t.same(closed, { exitCode: 3 }, 'stream closes with the exit code');
  t.equal((await p.get(spec.id))?.reason, 'exited with code 3');
  await t.rejects(p.attach(spec.id), { code: 'not_running' });

  // logs: the terminal output is in conmon's log
  const lines: string[] = [];
  for await (const l of p.logs(spec.id, { follow: false })) lines.push(l.toString());
  t.ok(lines.some((l) => l.includes('hi-3')), 'logs have the output');
  const tail: string[] = [];
  for await (const l of p.logs(spec.id, { follow: false, tail: 2 })) tail.push(l.toString());
  t.equal(tail.length, 2, 'tail 2');

  // delete leaves nothing behind
  const cgPaths = ['memory', 'cpu', 'pids'].map((c) => `/sys/fs/cgroup/${c}/loom/${spec.id}`);
  await p.delete(spec.id);
  await p.delete(spec.id); // idempotent
  t.equal(await p.get(spec.id), null);
  t.same(mountsMentioning(spec.id), [], 'no mounts');
  t.same(processesMentioning(spec.id).filter((x) => x.cmd.includes('conmon')), [], 'no conmon');
  t.equal(await p.containerRuntime.state(spec.id), null, 'no runc state');
  t.notOk(existsSync(join(dataDir, 'local', 'runc', spec.id)), 'no runc state dir');
  t.notOk(existsSync(join(dataDir, 'local', 'weavers', spec.id)), 'no weaver dir');
  for (const cg of cgPaths) t.notOk(existsSync(cg), `no cgroup ${cg}`);
});

t.test('a command that succeeds; logs follow until exit', async (t) => {
  const spec = weaverSpec({ command: ['/bin/sh', '-c', 'for i in 1 2 3; do echo line$i; sleep 0.2; done'] });
  await p.create(spec);
  await waitStatus(p, spec.id, ['running', 'succeeded']);
  const got: string[] = [];
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 15_000);
  for await (const chunk of p.logs(spec.id, { follow: true, signal: ac.signal })) got.push(chunk.toString());
  clearTimeout(timer);
  t.notOk(ac.signal.aborted, 'follow ended by itself at exit');
  t.match(got.join(''), /line1\r?\nline2\r?\nline3/);
  const fin = await waitStatus(p, spec.id, ['succeeded', 'failed']);
  t.equal(fin.status, 'succeeded');
  t.equal(fin.exitCode, 0);
  await p.delete(spec.id);
});

t.test('logs follow honours AbortSignal', async (t) => {
  const spec = weaverSpec({ command: ['/bin/sh', '-c', 'echo first; sleep 60'] });
  await p.create(spec);
  await waitStatus(p, spec.id, ['running']);
  const ac = new AbortController();
  const got: string[] = [];
  // The container sleeps 60 s: the loop can only end here because the signal stopped it.
  for await (const chunk of p.logs(spec.id, { follow: true, signal: ac.signal })) {
    got.push(chunk.toString());
    if (got.join('').includes('first')) ac.abort();
  }
  t.ok(ac.signal.aborted, 'the follow ended because it was aborted');
  t.equal((await p.get(spec.id))?.status, 'running', 'stopped on abort while the weaver still runs');
  t.match(got.join(''), /first/);
  await p.delete(spec.id);
});

t.test('unknown image fails fast with a clear reason', async (t) => {
  const spec = weaverSpec({ image: 'nonexistent.invalid/loom-test/foo:1' });
  const seen: string[] = [];
  const off = p.watch((w) => w.id === spec.id && seen.push(w.status));
  t.teardown(off);
  await p.create(spec);
  t.notOk(seen.includes('failed'), 'create does not wait for the pull');
  const w = await waitStatus(p, spec.id, ['failed', 'running'], 30_000);
  t.equal(w.status, 'failed');
  t.match(w.reason, /^image "nonexistent\.invalid\/loom-test\/foo:1" is not in the local store and could not be pulled: /);
  await p.delete(spec.id);
  await t.rejects(p.create(weaverSpec({ image: '--bad image' })), { code: 'bad_image', status: 400 });
});

t.test('a delete while create is still in flight leaves nothing behind', async (t) => {
  for (let i = 0; i < 5; i++) {
    const spec = weaverSpec();
    const creating = p.create(spec);
    await p.delete(spec.id); // before create() has returned
    await creating.catch(() => undefined);
    // delete() waited for the provisioning it aborted; a second delete queues behind anything
    // still scheduled for this id (one mutex per id), so once it returns nothing more can happen.
    await p.delete(spec.id);
    t.equal(await p.get(spec.id), null, `round ${i}: the backend knows no such weaver`);
    t.same(mountsMentioning(spec.id), [], `round ${i}: no mount left`);
    t.same(processesMentioning(spec.id), [], `round ${i}: no conmon left`);
    t.equal(await p.containerRuntime.state(spec.id), null, `round ${i}: no runc container`);
    t.notOk(existsSync(join(dataDir, 'local', 'weavers', spec.id)), `round ${i}: no weaver dir`);
    t.same(leftovers(dataDir, [spec.id]).cgroups, [], `round ${i}: no cgroup`);
  }
});

t.test('git clone failure fails the weaver with git\'s message, also in the logs', async (t) => {
  const spec = weaverSpec({ repo: 'https://nonexistent.invalid/x.git' });
  await p.create(spec);
  const w = await waitStatus(p, spec.id, ['failed', 'running'], 60_000);
  t.equal(w.status, 'failed');
  t.match(w.reason, /^git clone failed: cannot resolve the repository host nonexistent\.invalid/);
  const logs: string[] = [];
  for await (const l of p.logs(spec.id, { follow: false })) logs.push(l.toString());
  t.match(logs.join(''), /git clone failed: cannot resolve the repository host/);
  await p.delete(spec.id);
});

t.test('a non-https repository is refused by the backend too (defence in depth), with no clone made', async (t) => {
  const { execFileSync } = await import('node:child_process');
  const src = join(dataDir, 'src-repo');
  execFileSync('git', ['init', '-q', '-b', 'main', src]);
  execFileSync('git', ['-C', src, '-c', 'user.email=t@t', '-c', 'user.name=t', 'commit', '-q', '--allow-empty', '-m', 'init']);
  const spec = weaverSpec({ repo: `file://${src}`, branch: 'main' });
  await p.create(spec);
  const w = await waitStatus(p, spec.id, ['running', 'failed']);
  t.equal(w.status, 'failed');
  t.match(w.reason, /^git clone failed: the repository URL must be https without credentials/);
  await p.delete(spec.id);
});
