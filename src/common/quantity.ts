/** Kubernetes-style resource quantities, parsed once for validation, limits and quotas. */

const CPU_RE = /^(\d+(?:\.\d+)?)(m?)$/;
const MEM_RE = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$/;
const MEM_UNITS: Record<string, number> = {
  '': 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4,
};

/** "500m" → 500, "2" → 2000, "1.5" → 1500; null when not a quantity. */
export function cpuMillis(q: string): number | null {
  const m = CPU_RE.exec(q.trim());
  if (!m) return null;
  const n = m[2] === 'm' ? Number(m[1]) : Number(m[1]) * 1000;
  return Number.isFinite(n) ? Math.round(n) : null;
}

/** "512Mi" → 536870912; null when not a quantity. */
export function memoryBytes(q: string): number | null {
  const m = MEM_RE.exec(q.trim());
  if (!m) return null;
  const n = Math.floor(Number(m[1]) * MEM_UNITS[m[2] ?? '']!);
  return Number.isFinite(n) ? n : null;
}

/** 2000 → "2", 500 → "500m". */
export function formatCpu(millis: number): string {
  return millis % 1000 === 0 ? String(millis / 1000) : `${millis}m`;
}

/** Bytes in the largest binary unit that divides them evenly (for messages). */
export function formatBytes(b: number): string {
  for (const [u, n] of [['Ti', 1024 ** 4], ['Gi', 1024 ** 3], ['Mi', 1024 ** 2], ['Ki', 1024]] as const) {
    if (b >= n && b % n === 0) return `${b / n}${u}`;
  }
  return `${b}`;
}
