/** The sidecar's health JSON (design/audit.md): 200 healthy or degraded, 503 unhealthy. */
export type Status = 'healthy' | 'degraded' | 'unhealthy';

export interface HealthInput {
  programsAttached: number;
  programsExpected: number;
  /** the hook family the load probe chose, and why */
  family: string;
  familyReason: string;
  serverReachable: boolean;
  lastSuccessfulSend: Date | null;
  bufferedEvents: number;
  bufferBytes: number;
  bufferMaxBytes: number;
}

export function health(h: HealthInput) {
  const ebpf: Status = h.programsAttached === 0 ? 'unhealthy' : h.programsAttached < h.programsExpected ? 'degraded' : 'healthy';
  const server: Status = h.serverReachable ? 'healthy' : 'degraded';
  const util = h.bufferMaxBytes ? (100 * h.bufferBytes) / h.bufferMaxBytes : 0;
  const buffer: Status = util >= 95 ? 'unhealthy' : util >= 50 ? 'degraded' : 'healthy';
  const all = [ebpf, server, buffer];
  const status: Status = all.includes('unhealthy') ? 'unhealthy' : all.includes('degraded') ? 'degraded' : 'healthy';
  return {
    code: status === 'unhealthy' ? 503 : 200,
    body: {
      status,
      components: {
        ebpf: { status: ebpf, programs_attached: h.programsAttached, programs_expected: h.programsExpected, family: h.family, family_reason: h.familyReason },
        server: { status: server, last_successful_send: h.lastSuccessfulSend?.toISOString() ?? null, buffered_events: h.bufferedEvents },
        buffer: { status: buffer, size_bytes: h.bufferBytes, utilization_percent: Math.round(util * 100) / 100 },
      },
    },
  };
}
