/**
 * The two hook families and the load probe that picks one, with real BPF.
 *  - The probe (openAudit) loads the real fentry object: on a kernel that refuses BPF trampolines
 *    it must fall back to the tracepoint family and say why, and the sidecar's metrics and health
 *    must name the family in use.
 *  - Each family that this kernel loads runs the same known-count workload in a registered cgroup
 *    and must report exactly what the workload did, with its results. A family the kernel refuses
 *    is skipped with the kernel's own answer (that is a property of the kernel, not a missing
 *    prerequisite, so it skips in CI too: this machine class refuses fentry with EPERM).
 */
import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, rmdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { ROOT } from '../support/server.js';
import { ensureTracefs, loadAuditAddon, openAudit, DEFAULT_SENSITIVE, type AuditBpf, type HookFamily } from '../../src/audit/bpf.js';
import { decodeRecord, records, type KernelEvent } from '../../src/audit/decode.js';
import { bpfUnavailable, buildWorkload, skipOrFail } from './helpers.js';

const why = bpfUnavailable();
if (why) skipOrFail(t, why);
else {
  ensureTracefs();
  const addon = loadAuditAddon();
  /** The kernel's answer to loading the fentry family on its own: true, or its error. */
  const fentryVerdict = (): true | string => {
    try {
      new addon.AuditBpf({ family: 'fentry', ringBytes: 1 << 16 }).close();
      return true;
    } catch (e) {
      return (e as Error).message;
    }
  };
  const verdict = fentryVerdict();

  t.test('the load probe picks fentry where the kernel allows it, else tracepoints, and says why', async (t) => {
    const o = openAudit(addon, { ringBytes: 1 << 16 });
    t.teardown(() => o.bpf.close());
    t.equal(o.bpf.family, o.family, 'the opened object is the family reported');
    if (verdict === true) {
      t.equal(o.family, 'fentry');
      t.match(o.reason, /loaded and attached all \d+ fentry programs/);
    } else {
      t.equal(o.family, 'tracepoint', `the kernel refused fentry (${verdict}), so tracepoints`);
      t.equal(o.reason, verdict.replace(/^audit: /, ''), 'the reason is the kernel\'s answer to the real fentry object');
      t.match(o.reason, /refused the fentry family's BPF programs: \S/);
    }
    t.ok(o.bpf.attached.length > 40, `${o.bpf.attached.length} programs attached`);
    t.same(o.bpf.failed, [], 'none failed to attach');
  });

  t.test('an unknown family is refused by the addon', async (t) => {
    t.throws(() => new addon.AuditBpf({ family: 'kprobe' as HookFamily }), /unknown hook family kprobe/);
  });

  t.test('the sidecar names its family in metrics and health', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'loom-audit-family-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/audit/sidecar/main.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        // nothing listens on port 1: events would be buffered; this test reads metrics and health only
        LOOM_AUDIT_SERVER_URL: 'http://127.0.0.1:1',
        LOOM_AUDIT_TOKEN: 'unused',
        LOOM_AUDIT_BUFFER_DIR: join(dir, 'buffer'),
        LOOM_AUDIT_METRICS_PORT: '0',
        LOOM_AUDIT_HEALTH_PORT: '0',
        LOOM_AUDIT_LISTEN_ADDR: '127.0.0.1',
        LOOM_AUDIT_RING_BYTES: '65536',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    t.teardown(async () => {
      child.kill('SIGTERM');
      await exited;
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const ready = await new Promise<{ metrics_port: number; health_port: number; family: string; family_reason: string }>((resolve, reject) => {
      createInterface({ input: child.stdout }).on('line', (l) => {
        const j = JSON.parse(l) as { ready?: boolean };
        if (j.ready) resolve(j as never);
      });
      child.once('exit', (c) => reject(new Error(`sidecar exited ${c}: ${stderr}`)));
    });
    const expected = verdict === true ? 'fentry' : 'tracepoint';
    t.equal(ready.family, expected, 'the ready line names the family');
    const metrics = await (await fetch(`http://127.0.0.1:${ready.metrics_port}/metrics`)).text();
    t.match(metrics, new RegExp(`^loom_weaver_audit_ebpf_hook_family\\{family="${expected}"\\} 1$`, 'm'));
    const other = expected === 'fentry' ? 'tracepoint' : 'fentry';
    t.match(metrics, new RegExp(`^loom_weaver_audit_ebpf_hook_family\\{family="${other}"\\} 0$`, 'm'));
    const h = (await (await fetch(`http://127.0.0.1:${ready.health_port}/health`)).json()) as { components: { ebpf: { family: string; family_reason: string; programs_attached: number } } };
    t.equal(h.components.ebpf.family, expected);
    t.equal(h.components.ebpf.family_reason, ready.family_reason);
    if (verdict !== true) t.equal(h.components.ebpf.family_reason, verdict.replace(/^audit: /, ''), 'health says why not fentry');
    t.ok(h.components.ebpf.programs_attached > 40);
  });

  /** Runs the workload in a fresh cgroup registered with `family`'s programs; returns its events and RESULT. */
  async function capture(t: Test, family: HookFamily, workload: string) {
    const work = mkdtempSync(join(tmpdir(), `loom-audit-${family}-`));
    const cg = `/sys/fs/cgroup/unified/loom-audit-family-${process.pid}-${family}`;
    t.teardown(() => {
      rmSync(work, { recursive: true, force: true });
      try {
        rmdirSync(cg);
      } catch {
        /* the workload has exited; nothing else uses it */
      }
    });
    mkdirSync(cg);
    const cgId = BigInt(statSync(cg, { bigint: true }).ino);
    const bpf: AuditBpf = new addon.AuditBpf({ family, ringBytes: 1 << 22, sensitive: DEFAULT_SENSITIVE });
    t.teardown(() => bpf.close());
    const events: KernelEvent[] = [];
    bpf.addCgroup(cgId, 0);
    bpf.start((b) => {
      for (const r of records(b)) {
        const e = decodeRecord(r);
        if (e) events.push(e);
      }
    });
    mkdirSync(join(work, 'files'));
    // the shell moves itself into the cgroup, then becomes the workload
    const r = spawnSync('sh', ['-c', `echo $$ > ${cg}/cgroup.procs && exec ${workload} run 4 6 3 ${join(work, 'files')}`], { encoding: 'utf8' });
    t.equal(r.status, 0, r.stderr);
    const result = JSON.parse(/RESULT (.*)/.exec(r.stdout)![1]!) as Record<string, number>;
    // the workload's last event is its exit; wait for it to be consumed
    const exitOf = () => events.find((e) => e.event_type === 'process_exit' && e.pid === result.pid);
    while (!exitOf()) {
      if (bpf.lost(1).length) break;
      await new Promise((r) => setImmediate(r));
    }
    t.same(bpf.lost(1), [], 'nothing lost');
    return { events, result };
  }

  const workload = buildWorkload(t);
  for (const family of ['tracepoint', 'fentry'] as const) {
    const skip = family === 'fentry' && verdict !== true ? `this kernel refuses the fentry family: ${verdict}` : false;
    t.test(`the ${family} family reports the known workload exactly`, { skip }, async (t) => {
      const { events, result } = await capture(t, family, workload);
      const of = (type: string) => events.filter((e) => e.event_type === type);
      t.equal(result.markers, 4);
      const markers = of('process_exec').filter((e) => (e.details.argv as string[] | undefined)?.[1] === 'marker');
      t.equal(markers.length, 4, 'every marker exec');
      t.equal(of('process_exit').filter((e) => markers.some((m) => m.pid === e.pid) && e.ret === 7).length, 4, 'their exits with code 7');
      const files = of('file_open').filter((e) => String(e.details.path).includes('audit-file-') && e.details.create === true);
      t.equal(files.length, 6, 'every file creation');
      t.ok(files.every((e) => e.ret >= 0), 'with its fd');
      const connects = of('network_connect').filter((e) => e.details.remote_port === result.port);
      t.equal(connects.length, 3, 'every loopback connect');
      t.ok(connects.every((e) => e.ret === 0 && e.details.remote_addr === '127.0.0.1'));
      t.equal(of('network_accept').filter((e) => e.details.local_port === result.port && e.ret >= 0).length, 3, 'every accept');
      t.equal(of('network_listen').filter((e) => e.details.local_port === result.port).length, 1);
      const setuid = of('privilege_change').filter((e) => e.details.syscall === 'setuid');
      t.same(setuid.map((e) => e.ret), [result.setuid], 'setuid with its result');
      t.same(of('sandbox_escape').filter((e) => e.details.syscall === 'unshare').map((e) => e.ret), [result.unshare], 'unshare with its result');
      t.same(of('memory_exec').map((e) => `${e.details.syscall}:${e.ret}`).sort(), [`memfd_create:${result.memfd}`, `mprotect:${result.mprotect}`].sort());
      t.ok(events.every((e) => e.weaverIdx === 0), 'only the registered cgroup');
    });
  }
}
