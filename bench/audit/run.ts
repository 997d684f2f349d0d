/**
 * bench/audit: the cost of the audit on syscalls, process creation and a realistic job, audit off
 * (no BPF programs loaded) vs on (the sidecar's programs attached), interleaved rep by rep, for
 * a process in an audited cgroup (registered exactly as a weaver's is) and for an unaudited host
 * process; then the sustained rate the pipeline captures with nothing lost.
 *   node --import tsx bench/audit/run.ts [--reps 7] [--scale 1] [--budget 240]   (root; needs the audit addon built)
 * Sized to finish in a few minutes on a busy 2-core machine: each rep is short, off and on alternate
 * rep by rep (order flipping), and once --budget seconds have passed no new rep starts (at least 3 run).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, rmdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_SENSITIVE, ensureTracefs, loadAuditAddon, openAudit, type AuditBpf } from '../../src/audit/bpf.js';
import { records } from '../../src/audit/decode.js';

const arg = (name: string, def: number) => (process.argv.includes(name) ? Number(process.argv[process.argv.indexOf(name) + 1]) : def);
const reps = arg('--reps', 7);
const budgetMs = arg('--budget', 240) * 1000;
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

/** Runs a shell line, in the audited cgroup or not; returns its stdout. */
function sh(line: string, audited: boolean): string {
  const r = spawnSync('sh', ['-c', audited ? `echo $$ > ${cg}/cgroup.procs && ${line}` : line], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${line}: ${r.stderr}`);
  return r.stdout;
}
const timed = (line: string, audited: boolean) => {
  const t0 = process.hrtime.bigint();
  sh(line, audited);
  return Number(process.hrtime.bigint() - t0) / 1e6;
};

const cases: { name: string; unit: string; run: (audited: boolean) => number }[] = [
  { name: 'open+close (O_WRONLY)', unit: 'ns/op', run: (a) => Number(sh(`${ops} openclose ${n(20000)} ${work}/oc-${a}`, a)) },
  { name: 'getppid', unit: 'ns/op', run: (a) => Number(sh(`${ops} getppid ${n(200000)}`, a)) },
  { name: 'fork+exec /bin/true', unit: 'ns/op', run: (a) => Number(sh(`${ops} forkexec ${n(200)}`, a)) },
  { name: `tar -xf + rm -rf (${fixtureFiles} headers)`, unit: 'ms', run: (a) => timed(`d=$(mktemp -d -p ${work}); tar -C $d -xf ${fixture}; rm -rf $d`, a) },
];

type Row = { off: number[]; on: number[] };
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
        row[phase as 'off' | 'on'].push(c.run(audited));
        results.set(key, row);
      }
    }
    if (phase === 'on') off();
  }
  done++;
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
console.log(`\naudit overhead, median of ${done} interleaved reps, hook family ${family} (kernel ${execFileSync('uname', ['-r']).toString().trim()}, ${execFileSync('nproc').toString().trim()} CPUs)`);
console.log(['case', 'process', 'audit off (baseline)', 'audit on (ours)', 'ratio', 'ratio range (rep by rep)'].join(' | '));
for (const [key, r] of results) {
  const [name, who] = key.split('|');
  const unit = cases.find((c) => c.name === name)!.unit;
  const a = median(r.off), b = median(r.on);
  const per = r.on.map((x, i) => x / r.off[i]!);
  console.log(`${name} | ${who} | ${a.toFixed(1)} ${unit} | ${b.toFixed(1)} ${unit} | ${(b / a).toFixed(3)} | ${Math.min(...per).toFixed(2)}–${Math.max(...per).toFixed(2)}`);
}

// sustained rate: N write-opens in the audited cgroup, consumer running; captured vs lost
on();
captured = 0;
const N = n(100_000);
mkdirSync(join(work, 'rate'));
const t0 = process.hrtime.bigint();
sh(`${ops} files ${N} ${work}/rate`, true);
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
// wait until every record is consumed (or the kernel counted it lost)
const deadline = Date.now() + 30_000;
const lostNow = () => bpf!.lost(1).reduce((a, [, , n]) => a + n, 0);
while (Date.now() < deadline) {
  if (captured + lostNow() >= N) break;
  await new Promise((r) => setTimeout(r, 50));
}
const lost = lostNow();
console.log(`\nsustained: ${N} file events in ${secs.toFixed(2)} s = ${Math.round(N / secs)} events/s generated; captured ${captured} file_open events, lost ${lost} (kernel loss counters)`);
off();
