/**
 * One place for resource limits over weavers and branching containers: the per-request maximum
 * (400 naming the limit), per-user and per-org quotas on count, CPU and memory (429 naming the
 * quota) and the free-space floor of the data dir (507). Each component that holds resources
 * registers a UsageSource over its own table; no component reads another's.
 *
 * Checks are synchronous on purpose: a caller checks and inserts its row without an await in
 * between, so two concurrent requests cannot both pass on the same headroom.
 */
import { statfsSync } from 'node:fs';
import { LoomError } from '../common/errors.js';
import { cpuMillis, formatBytes, formatCpu, memoryBytes } from '../common/quantity.js';
import type { Config, QuotaLimit } from '../server/config/load.js';

export interface Usage {
  count: number;
  cpuMillis: number;
  memoryBytes: number;
}

export type Owner = { userId: string } | { orgId: string };

/**
 * What a component holds for a user or an org: `count` every weaver or container that exists
 * (live weavers; containers that are not failed), CPU and memory only what runs.
 */
export interface UsageSource {
  readonly name: string;
  usage(owner: Owner): Usage;
}

/** Parsed, checked resources of one request. */
export interface Ask {
  cpu: string;
  memory: string;
  cpuMillis: number;
  memoryBytes: number;
}

/** Smallest limits a weaver can run with: below these it would fail later, not now. */
export const MIN_CPU_MILLIS = 10;
export const MIN_MEMORY_BYTES = 16 * 1024 * 1024;

export class Quotas {
  private readonly sources: UsageSource[] = [];
  private readonly maxCpu: number;
  private readonly maxMemory: number;

  constructor(
    private readonly limits: { user: QuotaLimit; org: QuotaLimit; maxCpu: string; maxMemory: string; defaultCpu: string; defaultMemory: string; minFreeDiskBytes: number },
    private readonly dataDir: string,
  ) {
    this.maxCpu = cpuMillis(limits.maxCpu)!;
    this.maxMemory = memoryBytes(limits.maxMemory)!;
  }

  static fromConfig(c: Config): Quotas {
    return new Quotas(
      { user: c.quota.user, org: c.quota.org, maxCpu: c.weaver.maxCpu, maxMemory: c.weaver.maxMemory, defaultCpu: c.weaver.defaultCpu, defaultMemory: c.weaver.defaultMemory, minFreeDiskBytes: c.minFreeDiskBytes },
      c.dataDir,
    );
  }

  addSource(s: UsageSource): void {
    if (!this.sources.some((x) => x.name === s.name)) this.sources.push(s);
  }

  /** The resources of a request (defaults filled in), or a 400 naming the field or the limit. */
  resources(req: { cpu?: string | undefined; memory?: string | undefined } | undefined, code = 'invalid_resources'): Ask {
    const cpu = req?.cpu ?? this.limits.defaultCpu;
    const memory = req?.memory ?? this.limits.defaultMemory;
    const c = cpuMillis(cpu);
    const m = memoryBytes(memory);
    if (c === null) throw new LoomError(400, code, `invalid cpu ${JSON.stringify(cpu)}: a quantity such as 500m or 2`);
    if (m === null) throw new LoomError(400, code, `invalid memory ${JSON.stringify(memory)}: a quantity such as 512Mi or 2Gi`);
    if (c < MIN_CPU_MILLIS) throw new LoomError(400, code, `cpu ${JSON.stringify(cpu)} is below the minimum of ${formatCpu(MIN_CPU_MILLIS)}`);
    if (m < MIN_MEMORY_BYTES) throw new LoomError(400, code, `memory ${JSON.stringify(memory)} is below the minimum of ${formatBytes(MIN_MEMORY_BYTES)}`);
    if (c > this.maxCpu) throw new LoomError(400, 'resources_too_large', `cpu ${JSON.stringify(cpu)} is over the limit of ${this.limits.maxCpu} per weaver (LOOM_SERVER_WEAVER_MAX_CPU)`);
    if (m > this.maxMemory) throw new LoomError(400, 'resources_too_large', `memory ${JSON.stringify(memory)} is over the limit of ${this.limits.maxMemory} per weaver (LOOM_SERVER_WEAVER_MAX_MEMORY)`);
    return { cpu, memory, cpuMillis: c, memoryBytes: m };
  }

  usage(owner: Owner): Usage {
    const u: Usage = { count: 0, cpuMillis: 0, memoryBytes: 0 };
    for (const s of this.sources) {
      const x = s.usage(owner);
      u.count += x.count;
      u.cpuMillis += x.cpuMillis;
      u.memoryBytes += x.memoryBytes;
    }
    return u;
  }

  /**
   * Throws 429 naming the first quota that `ask` would pass: one more holder (unless `newHolder`
   * is false: a stopped container starting again) with that CPU and memory.
   */
  admit(userId: string, orgId: string, ask: Pick<Ask, 'cpuMillis' | 'memoryBytes'>, newHolder = true): void {
    const scopes = [
      ['user', ['LOOM_QUOTA_USER_COUNT', 'LOOM_QUOTA_USER_CPU', 'LOOM_QUOTA_USER_MEMORY'], this.limits.user, { userId }],
      ['org', ['LOOM_QUOTA_ORG_COUNT', 'LOOM_QUOTA_ORG_CPU', 'LOOM_QUOTA_ORG_MEMORY'], this.limits.org, { orgId }],
    ] as const;
    for (const [who, [countVar, cpuVar, memVar], lim, owner] of scopes) {
      const u = this.usage(owner);
      const what = 'weavers and branching containers';
      if (newHolder && lim.count > 0 && u.count + 1 > lim.count) {
        throw new LoomError(429, `${who}_quota_count`, `the ${who} quota of ${lim.count} ${what} is used up (${u.count} held; ${countVar}); delete one first`);
      }
      if (lim.cpuMillis > 0 && u.cpuMillis + ask.cpuMillis > lim.cpuMillis) {
        throw new LoomError(429, `${who}_quota_cpu`, `the ${who} CPU quota of ${formatCpu(lim.cpuMillis)} would be passed (${formatCpu(u.cpuMillis)} held, ${formatCpu(ask.cpuMillis)} asked; ${cpuVar})`);
      }
      if (lim.memoryBytes > 0 && u.memoryBytes + ask.memoryBytes > lim.memoryBytes) {
        throw new LoomError(429, `${who}_quota_memory`, `the ${who} memory quota of ${formatBytes(lim.memoryBytes)} would be passed (${formatBytes(u.memoryBytes)} held, ${formatBytes(ask.memoryBytes)} asked; ${memVar})`);
      }
    }
  }

  /** 507 while the data dir's filesystem has less free space than LOOM_MIN_FREE_DISK. */
  requireFreeSpace(): void {
    if (this.limits.minFreeDiskBytes <= 0) return;
    let free: number;
    try {
      const s = statfsSync(this.dataDir);
      free = s.bavail * s.bsize;
    } catch {
      return;
    }
    if (free < this.limits.minFreeDiskBytes) {
      throw new LoomError(507, 'insufficient_storage', `the server is low on disk space (${formatBytes(free - (free % (1024 * 1024)))} free, below the floor of ${formatBytes(this.limits.minFreeDiskBytes)}; LOOM_MIN_FREE_DISK); nothing new can be created until space is freed`);
    }
  }
}

/** Sums quantity strings of rows into a Usage (rows with unparsable values count as zero). */
export function sumUsage(rows: { cpu: string; memory: string }[]): Usage {
  const u: Usage = { count: rows.length, cpuMillis: 0, memoryBytes: 0 };
  for (const r of rows) {
    u.cpuMillis += cpuMillis(r.cpu) ?? 0;
    u.memoryBytes += memoryBytes(r.memory) ?? 0;
  }
  return u;
}
