import { pino } from 'pino';
import type { WeaverSpec } from '../../src/weaver/provisioner.js';
import type { KubernetesWeaverConfig } from '../../src/provisioners/kubernetes/provisioner.js';
import type { Logger } from '../../src/common/log.js';

export const silentLog = (): Logger => pino({ level: 'silent' });

let n = 0;
export function spec(over: Partial<WeaverSpec> = {}): WeaverSpec {
  n++;
  const created = new Date('2026-01-01T00:00:00Z');
  const id = `0b1e7f6a-1c2d-4e5f-8a9b-${String(n).padStart(12, '0')}`;
  return {
    id,
    orgId: '5f0c2a4e-9d7b-4c1a-8e3f-2b6d9a1c7e00',
    ownerUserId: '7a3e1b2c-4d5f-4a6b-9c8d-0e1f2a3b4c5d',
    image: 'ghcr.io/loom/weaver:1.0',
    env: {},
    resources: { cpu: '1', memory: '1Gi' },
    lifetimeHours: 4,
    createdAt: created,
    expiresAt: new Date(created.getTime() + 4 * 3600_000),
    tags: {},
    ...over,
  };
}

export function k8sConfig(over: Partial<KubernetesWeaverConfig> = {}): KubernetesWeaverConfig {
  return {
    k8sNamespace: 'loom-weavers',
    kubeconfig: '',
    imagePullSecrets: [],
    audit: { enabled: false, image: '', batchIntervalMs: 100, bufferMaxBytes: 268435456, metricsPort: 9090, healthPort: 9091, serverUrl: '', retentionDays: 30, maxEventsPerWeaver: 1000000 },
    ...over,
  };
}

/** Resolves when pred holds, polling a condition the test drives (not the backend). */
export async function until(pred: () => boolean | Promise<boolean>, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}
