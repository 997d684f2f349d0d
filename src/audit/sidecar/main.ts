#!/usr/bin/env node
/**
 * loom-audit-sidecar: loads the audit BPF programs, reports events of the registered weavers to
 * loom-server. Local backend: one per host, started by loom-server, weavers registered over a
 * unix socket. Kubernetes: the native sidecar of a weaver pod, filtering its own pod's cgroup.
 * Settings come from the environment (LOOM_AUDIT_*), see README "Audit".
 */
import { createServer, type Server } from 'node:http';
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { bootToWall, ensureTracefs, loadAuditAddon, openAudit, DEFAULT_SENSITIVE } from '../bpf.js';
import { Collector } from './collector.js';
import { DiskBuffer } from './buffer.js';
import { SidecarMetrics } from './metrics.js';
import { HttpShipper, Pipeline } from './pipeline.js';
import { health } from './health.js';
import { cgroupIdOf, readRegistrationDir, serveControl, type Registration } from './control.js';
import { podCgroup } from './pod.js';

const log = pino({ base: { svc: 'loom-audit-sidecar' }, timestamp: pino.stdTimeFunctions.isoTime, formatters: { level: (l) => ({ level: l }) } }, pino.destination({ dest: 2, sync: true }));

function env(name: string, def?: string): string {
  const v = process.env[name];
  if (v !== undefined && v !== '') return v;
  if (def !== undefined) return def;
  throw new Error(`${name} must be set`);
}

function intEnv(name: string, def: number, min: number, max: number): number {
  const raw = env(name, String(def));
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < min || n > max) throw new Error(`${name} must be an integer from ${min} to ${max} (got ${raw})`);
  return n;
}

function listen(srv: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(port, host, () => resolve((srv.address() as AddressInfo).port));
  });
}

async function main(): Promise<void> {
  const serverUrl = env('LOOM_AUDIT_SERVER_URL');
  const tokenFile = process.env.LOOM_AUDIT_TOKEN_FILE;
  const tokenEnv = process.env.LOOM_AUDIT_TOKEN;
  if (!tokenFile && !tokenEnv) throw new Error('LOOM_AUDIT_TOKEN_FILE or LOOM_AUDIT_TOKEN must be set');
  const token = () => (tokenFile ? readFileSync(tokenFile, 'utf8').trim() : tokenEnv!);
  const batchIntervalMs = intEnv('LOOM_AUDIT_BATCH_INTERVAL_MS', 100, 1, 3_600_000);
  const bufferMaxBytes = intEnv('LOOM_AUDIT_BUFFER_MAX_BYTES', 256 << 20, 1024, 2 ** 34);
  const bufferDir = env('LOOM_AUDIT_BUFFER_DIR', '/var/lib/loom-audit/buffer');
  const metricsPort = intEnv('LOOM_AUDIT_METRICS_PORT', 9090, 0, 65535);
  const healthPort = intEnv('LOOM_AUDIT_HEALTH_PORT', 9091, 0, 65535);
  const listenAddr = env('LOOM_AUDIT_LISTEN_ADDR', '0.0.0.0');
  const ringBytes = intEnv('LOOM_AUDIT_RING_BYTES', 8 << 20, 4096, 1 << 30);
  const bootId = randomUUID();

  ensureTracefs();
  const addon = loadAuditAddon();
  // which program types this kernel loads at all (lsm is reported, not used: see ebpf/audit_fentry.bpf.c)
  const families = addon.probeFamilies();
  const pod = process.env.LOOM_AUDIT_WEAVER_ID ? podCgroup() : null;
  const { bpf, family, reason } = openAudit(addon, { ringBytes, ancestorLevels: pod?.level ?? 0, sensitive: DEFAULT_SENSITIVE });
  log.info({ families, family, reason }, `audit hook family: ${family}`);
  if (bpf.failed.length) log.warn({ failed: bpf.failed }, 'some audit programs did not attach');
  const metrics = new SidecarMetrics();
  for (const p of bpf.attached) metrics.programsAttached.set({ program: p }, 1);
  for (const f of bpf.failed) metrics.programsAttached.set({ program: f.program }, 0);
  for (const f of ['tracepoint', 'fentry'] as const) metrics.hookFamily.set({ family: f }, f === family ? 1 : 0);
  const expected = bpf.attached.length + bpf.failed.length;

  const buffer = new DiskBuffer(bufferDir, bufferMaxBytes);
  const pipeline = new Pipeline({ shipper: new HttpShipper(serverUrl, token), buffer, metrics, batchIntervalMs, log: (m, x) => log.warn(x ?? {}, m) });
  const collector = new Collector(bpf, bootId, bootToWall(), (evs) => pipeline.push(evs));

  const register = (r: Registration): bigint => {
    const id = cgroupIdOf(r.cgroup_path);
    collector.register(r, id);
    log.info({ weaver_id: r.weaver_id, cgroup_id: id.toString() }, 'weaver registered');
    return id;
  };
  if (pod) {
    collector.register({ weaver_id: env('LOOM_AUDIT_WEAVER_ID'), org_id: env('LOOM_AUDIT_ORG_ID'), owner_user_id: env('LOOM_AUDIT_OWNER_USER_ID') }, pod.podId);
    collector.exclude(pod.selfId);
  }
  const regDir = process.env.LOOM_AUDIT_REGISTRATION_DIR;
  if (regDir) {
    for (const r of readRegistrationDir(regDir)) {
      try {
        register(r);
      } catch (e) {
        log.warn({ weaver_id: r.weaver_id, err: (e as Error).message }, 'a registered weaver has no cgroup any more');
      }
    }
  }
  bpf.start((b) => collector.onBatch(b));
  pipeline.start();
  let lastLost = 0;
  const lossTimer = setInterval(() => {
    const n = collector.checkLosses();
    if (n) metrics.ringDropped.inc(n);
    lastLost += n;
    const u = bpf.ringUtilization();
    if (u !== null) metrics.ringUtilization.set(u);
  }, Math.max(50, Math.min(batchIntervalMs, 1000)));
  lossTimer.unref();

  const control = process.env.LOOM_AUDIT_CONTROL_SOCKET
    ? await serveControl(process.env.LOOM_AUDIT_CONTROL_SOCKET, {
        register,
        unregister: (id) => collector.unregister(id),
        ...(process.env.LOOM_AUDIT_TEST_CONTROLS === '1' ? { pause: () => bpf.pause(), resume: () => bpf.resume() } : {}),
      })
    : null;

  const metricsSrv = createServer((req, res) => {
    if (req.url !== '/metrics') return res.writeHead(404).end();
    void metrics.registry.metrics().then((text) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text));
  });
  const healthSrv = createServer((req, res) => {
    if (req.url !== '/health') return res.writeHead(404).end();
    const h = health({
      programsAttached: bpf.attached.length,
      programsExpected: expected,
      family,
      familyReason: reason,
      serverReachable: pipeline.serverReachable,
      lastSuccessfulSend: pipeline.lastSuccessfulSend,
      bufferedEvents: buffer.events,
      bufferBytes: buffer.bytes,
      bufferMaxBytes,
    });
    res.writeHead(h.code, { 'content-type': 'application/json' }).end(JSON.stringify(h.body));
  });
  const mPort = await listen(metricsSrv, metricsPort, listenAddr);
  const hPort = await listen(healthSrv, healthPort, listenAddr);
  // the supervisor waits for this line (ports may be 0 = any)
  process.stdout.write(JSON.stringify({ ready: true, boot_id: bootId, metrics_port: mPort, health_port: hPort, attached: bpf.attached.length, families, family, family_reason: reason }) + '\n');
  log.info({ metricsPort: mPort, healthPort: hPort, attached: bpf.attached.length }, 'audit sidecar ready');

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    clearInterval(lossTimer);
    control?.close();
    bpf.close();
    const n = collector.checkLosses();
    if (n) metrics.ringDropped.inc(n);
    await pipeline.stop();
    // whatever is not delivered now waits in the on-disk buffer for the next run
    await Promise.race([pipeline.flush(), new Promise((r) => setTimeout(r, 2000))]);
    metricsSrv.close();
    healthSrv.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  void lastLost;
}

main().catch((e: unknown) => {
  log.fatal({ err: (e as Error).message }, 'audit sidecar failed to start');
  process.stderr.write(`loom-audit-sidecar: ${(e as Error).message}\n`);
  process.exit(1);
});
