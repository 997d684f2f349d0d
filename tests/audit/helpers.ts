/**
 * Shared pieces of the audit tests: the static workload (built with gcc -static at test time),
 * an image that holds it (the default busybox rootfs plus /bin/audit-workload, imported through
 * the real image API), the sidecar's announced ports from the server log, and paging the audit API.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { ROOT, type TestServer } from '../support/server.js';
import { buildDefaultRootfs, writeSingleLayerLayout } from '../../src/provisioners/local/default-image.js';

import type { AuditEventView } from '../../src/client/index.js';
export type { AuditEventView };

export interface Teardown {
  teardown(fn: () => unknown): void;
}

/** Why BPF tests cannot run here, or null. In CI a missing prerequisite fails instead of skipping. */
export function bpfUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (CAP_BPF, cgroups, runc)';
  if (!existsSync('/sys/kernel/btf/vmlinux')) return 'the kernel has no BTF (/sys/kernel/btf/vmlinux)';
  if (!existsSync(join(ROOT, 'native/build/Release/loom_audit.node'))) return 'the audit addon is not built (npm ci with clang, bpftool, libbpf-dev)';
  if (spawnSync('gcc', ['--version']).status !== 0) return 'gcc is missing (the workload is built with gcc -static)';
  return null;
}

export function skipOrFail(t: Test, why: string): void {
  if (process.env.CI === 'true') t.fail(`prerequisite missing in CI: ${why}`);
  else t.pass('audit BPF tests', { skip: why });
}

export function buildWorkload(t: Teardown): string {
  const dir = mkdtempSync(join(tmpdir(), 'loom-audit-workload-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'audit-workload');
  execFileSync('gcc', ['-static', '-O2', '-o', out, join(ROOT, 'tests/audit/workload.c')]);
  return out;
}

/** Imports an image holding the workload at /bin/audit-workload (user 1000, like the default). */
export async function importWorkloadImage(t: Teardown, srv: TestServer, adminToken: string, workload: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'loom-audit-image-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  await buildDefaultRootfs(join(dir, 'rootfs'));
  copyFileSync(workload, join(dir, 'rootfs/bin/audit-workload'));
  chmodSync(join(dir, 'rootfs/bin/audit-workload'), 0o755);
  await writeSingleLayerLayout(join(dir, 'rootfs'), join(dir, 'layout'), {
    cmd: ['/bin/sh'],
    env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'],
    workingDir: '/tmp',
    user: '1000:1000',
  });
  execFileSync('tar', ['-C', join(dir, 'layout'), '-cf', join(dir, 'image.tar'), '.']);
  const name = `loom/audit-test-${Math.random().toString(36).slice(2, 8)}:latest`;
  const res = await fetch(`${srv.url}/api/images?name=${encodeURIComponent(name)}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/x-tar' },
    body: readFileSync(join(dir, 'image.tar')),
  });
  if (res.status !== 200 && res.status !== 201) throw new Error(`image import: ${res.status} ${await res.text()}`);
  return name;
}

/** The sidecar's ready announcement, as the server logged it (ports are chosen at start: 0 = any). */
export function sidecarReady(srv: TestServer): { metrics_port: number; health_port: number; boot_id: string; attached: number } | null {
  for (const l of [...srv.logs].reverse()) {
    try {
      const j = JSON.parse(l) as { msg?: string; metrics_port?: number; health_port?: number; boot_id?: string; attached?: number };
      if (j.msg === 'audit sidecar ready' && j.metrics_port) return j as { metrics_port: number; health_port: number; boot_id: string; attached: number };
    } catch {
      /* not JSON */
    }
  }
  return null;
}

/** Every stored event of a weaver (following next_cursor), plus the gaps. */
export async function allEvents(srv: TestServer, token: string, id: string, query = ''): Promise<{ events: AuditEventView[]; gaps: AuditEventView[] }> {
  const events: AuditEventView[] = [];
  let gaps: AuditEventView[] = [];
  let cursor: string | null = null;
  do {
    const q = new URLSearchParams(query);
    q.set('limit', '5000');
    if (cursor) q.set('cursor', cursor);
    const r = await srv.api<{ events: AuditEventView[]; gaps: AuditEventView[]; next_cursor: string | null }>('GET', `/api/weaver/${id}/audit?${q}`, token);
    if (r.status !== 200) throw new Error(`audit API: ${r.status} ${JSON.stringify(r.body)}`);
    events.push(...r.body.events);
    gaps = r.body.gaps;
    cursor = r.body.next_cursor;
  } while (cursor);
  return { events, gaps };
}

/** The weaver's output (the logs API, not followed). */
export async function weaverOutput(srv: TestServer, token: string, id: string): Promise<string> {
  const res = await fetch(`${srv.url}/api/weaver/${id}/logs?follow=false`, { headers: { authorization: `Bearer ${token}` } });
  const text = await res.text();
  return text
    .split('\n')
    .filter((l) => l.startsWith('data: '))
    .map((l) => l.slice(6))
    .join('\n');
}
