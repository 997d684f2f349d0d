/**
 * bench/audit: the cost of the audit on syscalls, process creation and a realistic job, audit off
 * (no BPF programs loaded) vs on (the sidecar's programs attached), interleaved rep by rep, for
 * a process in an audited cgroup (registered exactly as a weaver's is) and for an unaudited host
 * process; then the sustained rate the pipeline captures with nothing lost.
 *   node --import tsx bench/audit/run.ts [--reps 7] [--scale 1] [--budget 240]   (root; needs the audit addon built)
 * Sized to finish in a few minutes on a busy 2-core machine: each rep is short, off and on alternate
 * rep by rep (order flipping), and once --budget seconds have passed no new rep starts (at least 3 run).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, rmdirSync, statSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_SENSITIVE, ensureTracefs, loadAuditAddon, openAudit, type AuditBpf } from '../../src/audit/bpf.js';
import { records } from '../../src/audit/decode.js';

const arg = (name: string, def: number) => (process.argv.includes(name) ? Number(process.argv[process.argv.indexOf(name) + 1]) : def);
const reps = arg('--reps', 11);
const budgetMs = arg('--budget', 300) * 1000;
// --scale F multiplies every iteration count (a quick look on a busy machine: --scale 0.2)
const scale = arg('--scale', 1);
const n = (x: number) => Math.max(1, Math.round(x * scale));
const here = fileURLToPath(new URL('.', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'loom-bench-audit-'));
const ops = join(work, 'ops');
execFileSync('gcc', ['-O2', '-static', '-o', ops, join(here, 'ops.c')]);
const cg = `/sys/fs/cgroup/unified/loom-bench-audit-${process.pid}`;
mkdirSync(cg);
const cgId = BigInt(statSync(cg, { bigint: true }).ino);
const cleanup = () => {
  rmSync(work, { recursive: true, force: true });
  try {
    rmdirSync(cg);
  } catch {
    /* still has a process; the kernel frees it when empty */
  }
};
process.on('exit', cleanup);

// the fixture for the realistic job: a tar of kernel and libc headers (~1-2 thousand small files)
const fixture = join(work, 'fixture.tar');
const trees = ['include/linux', 'include/asm-generic', 'include/x86_64-linux-gnu/bits', 'include/x86_64-linux-gnu/sys'].filter((d) => existsSync(join('/usr', d)));
execFileSync('tar', ['-C', '/usr', '-cf', fixture, ...trees]);
const fixtureFiles = execFileSync('tar', ['-tf', fixture]).toString().split('\n').filter(Boolean).length;

ensureTracefs();
const addon = loadAuditAddon();
let bpf: AuditBpf | null = null;
// file_open records (the kind index at offset 40, src/audit/decode.ts): what the sustained run counts
const FILE_OPEN = 3;
let captured = 0;
let family = '';
const on = () => {
  // the family the sidecar's load probe would choose on this kernel
  const o = openAudit(addon, { ringBytes: 8 << 20, sensitive: DEFAULT_SENSITIVE });
  bpf = o.bpf;
  family = `${o.family} (${o.reason})`;
  bpf.addCgroup(cgId, 0);
  bpf.start((b) => {
    for (const r of records(b)) if (r.readUInt32LE(40) === FILE_OPEN) captured++;
  });
};
const off = () => {
  bpf?.close();
  bpf = null;
};

/**
 * Runs a shell line, in the audited cgroup or not; resolves with its stdout. Asynchronous on
 * purpose: the ring buffer's consumer runs on this process's event loop (as in the sidecar), and a
 * blocking spawnSync would stall it and turn every event into a kernel-counted loss.
 */
function sh(line: string, audited: boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn('sh', ['-c', audited ? `echo $$ > ${cg}/cgroup.procs && ${line}` : line], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${line}: ${err}`))));
  });
}
/** ops prints "CPU_NS WALL_NS" per operation (see ops.c) */
const figures = (out: string): [number, number] => {
  const [c, w] = out.trim().split(/\s+/).map(Number);
  return [c!, w!];
};

const cases: { name: string; unit: string; div: number; run: (audited: boolean) => Promise<[number, number]> }[] = [
  { name: 'open+close (O_WRONLY)', unit: 'ns/op', div: 1, run: async (a) => figures(await sh(`${ops} openclose ${n(20000)} ${work}/oc-${a}`, a)) },
  { name: 'getppid', unit: 'ns/op', div: 1, run: async (a) => figures(await sh(`${ops} getppid ${n(200000)}`, a)) },
  { name: 'fork+exec /bin/true', unit: 'µs/op', div: 1e3, run: async (a) => figures(await sh(`${ops} forkexec ${n(200)}`, a)) },
  {
    name: `tar -xf + rm -rf (${fixtureFiles} headers)`,
    unit: 'ms',
    div: 1e6,
    run: async (a) => figures(await sh(`${ops} cmd 1 sh -c 'd=$(mktemp -d -p ${work}); tar -C $d -xf ${fixture}; rm -rf $d'`, a)),
  },
];

type Row = { off: [number, number][]; on: [number, number][] };
const results = new Map<string, Row>();
const started = Date.now();
let done = 0;
for (let rep = 0; rep < reps; rep++) {
  if (rep >= 3 && Date.now() - started > budgetMs) break;
  process.stderr.write(`rep ${rep + 1}/${reps}\n`);
  // alternate the order so neither side always runs first
  for (const phase of rep % 2 ? ['on', 'off'] : ['off', 'on']) {
    if (phase === 'on') on();
    for (const c of cases) {
      for (const audited of [true, false]) {
        const key = `${c.name}|${audited ? 'audited cgroup' : 'unaudited host process'}`;
        const row = results.get(key) ?? { off: [], on: [] };
        row[phase as 'off' | 'on'].push(await c.run(audited));
        results.set(key, row);
      }
    }
    if (phase === 'on') off();
  }
  done++;
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
console.log(`\naudit overhead, ${done} interleaved reps, hook family ${family} (kernel ${execFileSync('uname', ['-r']).toString().trim()}, ${execFileSync('nproc').toString().trim()} CPUs, load average ${loadavg().map((x) => x.toFixed(1)).join(' ')})`);
console.log('CPU time (user+system of the workload and its children: excludes waiting for a CPU on a shared machine, includes the BPF programs, which run inside the syscalls)');
console.log(['case', 'process', 'audit off (baseline), median CPU', 'audit on (ours), median CPU', 'ratio of medians', 'ratio of minimums', 'wall-clock ratio of medians'].join(' | '));
for (const [key, r] of results) {
  const [name, who] = key.split('|');
  const c = cases.find((x) => x.name === name)!;
  const cpu = (xs: [number, number][]) => xs.map((x) => x[0] / c.div);
  const wall = (xs: [number, number][]) => xs.map((x) => x[1] / c.div);
  const a = median(cpu(r.off)), b = median(cpu(r.on));
  const ratioMin = Math.min(...cpu(r.on)) / Math.min(...cpu(r.off));
  const wallRatio = median(wall(r.on)) / median(wall(r.off));
  console.log(`${name} | ${who} | ${a.toFixed(1)} ${c.unit} | ${b.toFixed(1)} ${c.unit} | ${(b / a).toFixed(3)} | ${ratioMin.toFixed(3)} | ${wallRatio.toFixed(3)}`);
}

// sustained rate: N write-opens in the audited cgroup, consumer running; captured vs lost
on();
captured = 0;
const N = n(100_000);
mkdirSync(join(work, 'rate'));
const t0 = process.hrtime.bigint();
const cpu0 = process.cpuUsage();
await sh(`${ops} files ${N} ${work}/rate`, true);
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
// wait until every record is consumed (or the kernel counted it lost)
const deadline = Date.now() + 30_000;
const lostNow = () => bpf!.lost(1).reduce((a, [, , n]) => a + n, 0);
while (Date.now() < deadline) {
  if (captured + lostNow() >= N) break;
  await new Promise((r) => setTimeout(r, 50));
}
const lost = lostNow();
const consumer = process.cpuUsage(cpu0);
console.log(`\nsustained: ${N} file events in ${secs.toFixed(2)} s = ${Math.round(N / secs)} events/s generated; captured ${captured} file_open events, lost ${lost} (kernel loss counters); the consumer (ring buffer → JS, decoding the kind) used ${((consumer.user + consumer.system) / 1000).toFixed(0)} ms of CPU = ${((consumer.user + consumer.system) * 1000 / N).toFixed(0)} ns per event`);
off();
