/**
 * Turns the kernel's records into audit events: maps a record's weaver index to the registered
 * weaver, numbers events per weaver (seq), places timestamps on the wall clock, and turns growth
 * of the kernel's per-CPU loss counters into audit_gap events for the weaver that lost them.
 */
import { EVENT_KINDS, decodeRecord, records } from '../decode.js';
import type { AuditBpf } from '../bpf.js';
import type { AuditEvent, WeaverIdentity } from '../types.js';

export interface CollectorStats {
  captured: number;
  /** by event type */
  capturedByType: Map<string, number>;
  kernelLost: number;
  /** records that matched no registered weaver (unregistered while still in the ring) or did not decode */
  unattributed: number;
}

interface Slot extends WeaverIdentity {
  idx: number;
  cgroupId: bigint;
  seq: number;
  retiredAt?: number;
}

/** Slots of unregistered weavers stay readable this long so records still in the ring map to them. */
const RETIRE_GRACE_MS = 10_000;
/** The value of a cgroup that is never reported (the sidecar's own container in a pod). */
export const EXCLUDED_IDX = 0xffffffff;

export class Collector {
  private readonly byIdx = new Map<number, Slot>();
  private readonly byWeaver = new Map<string, Slot>();
  private readonly lostSeen = new Map<string, number>();
  readonly stats: CollectorStats = { captured: 0, capturedByType: new Map(), kernelLost: 0, unattributed: 0 };

  constructor(
    private readonly bpf: AuditBpf,
    private readonly bootId: string,
    private readonly toWall: (bootNs: bigint) => bigint,
    private readonly emit: (events: AuditEvent[]) => void,
  ) {}

  registered(): (WeaverIdentity & { cgroupId: bigint })[] {
    return [...this.byWeaver.values()].map(({ weaver_id, org_id, owner_user_id, cgroupId }) => ({ weaver_id, org_id, owner_user_id, cgroupId }));
  }

  isRegistered(weaverId: string): boolean {
    return this.byWeaver.has(weaverId);
  }

  register(w: WeaverIdentity, cgroupId: bigint): void {
    const have = this.byWeaver.get(w.weaver_id);
    if (have) {
      if (have.cgroupId !== cgroupId) {
        this.bpf.removeCgroup(have.cgroupId);
        have.cgroupId = cgroupId;
      }
      this.bpf.addCgroup(cgroupId, have.idx);
      return;
    }
    this.reap();
    let idx = 0;
    while (this.byIdx.has(idx)) idx++;
    if (idx >= 4096) throw new Error('audit: too many weavers registered (4096)');
    const slot: Slot = { ...w, idx, cgroupId, seq: 0 };
    this.byIdx.set(idx, slot);
    this.byWeaver.set(w.weaver_id, slot);
    this.bpf.addCgroup(cgroupId, idx);
  }

  exclude(cgroupId: bigint): void {
    this.bpf.addCgroup(cgroupId, EXCLUDED_IDX);
  }

  unregister(weaverId: string): void {
    const s = this.byWeaver.get(weaverId);
    if (!s) return;
    this.bpf.removeCgroup(s.cgroupId);
    this.byWeaver.delete(weaverId);
    s.retiredAt = Date.now();
  }

  private reap(): void {
    const now = Date.now();
    for (const [idx, s] of this.byIdx) if (s.retiredAt !== undefined && now - s.retiredAt > RETIRE_GRACE_MS) this.byIdx.delete(idx);
  }

  private envelope(s: Slot, tsNs: bigint): Pick<AuditEvent, 'weaver_id' | 'org_id' | 'owner_user_id' | 'boot_id' | 'seq' | 'timestamp_ns'> {
    return { weaver_id: s.weaver_id, org_id: s.org_id, owner_user_id: s.owner_user_id, boot_id: this.bootId, seq: ++s.seq, timestamp_ns: tsNs.toString() };
  }

  /** One ring-buffer batch from the addon. */
  onBatch(batch: Buffer): void {
    const out: AuditEvent[] = [];
    for (const r of records(batch)) {
      const k = decodeRecord(r);
      const s = k ? this.byIdx.get(k.weaverIdx) : undefined;
      if (!k || !s) {
        this.stats.unattributed++;
        continue;
      }
      out.push({
        ...this.envelope(s, this.toWall(k.tsBootNs)),
        pid: k.pid, ppid: k.ppid, tid: k.tid, uid: k.uid, comm: k.comm,
        exec_id: k.exec_id, parent_exec_id: k.parent_exec_id,
        event_type: k.event_type, ret: k.ret, details: k.details,
      });
      this.stats.captured++;
      this.stats.capturedByType.set(k.event_type, (this.stats.capturedByType.get(k.event_type) ?? 0) + 1);
    }
    if (out.length) this.emit(out);
  }

  /** Reads the kernel's loss counters; new losses become one audit_gap event per weaver. */
  checkLosses(): number {
    const per = new Map<number, Record<string, number>>();
    let total = 0;
    for (const [idx, kind, count] of this.bpf.lost()) {
      const key = `${idx}:${kind}`;
      const prev = this.lostSeen.get(key) ?? 0;
      if (count <= prev) continue;
      this.lostSeen.set(key, count);
      const by = per.get(idx) ?? {};
      by[EVENT_KINDS[kind] ?? String(kind)] = count - prev;
      per.set(idx, by);
      total += count - prev;
    }
    this.stats.kernelLost += total;
    const gaps: AuditEvent[] = [];
    const now = BigInt(Date.now()) * 1_000_000n;
    for (const [idx, by] of per) {
      const s = this.byIdx.get(idx);
      if (!s) continue;
      const lost = Object.values(by).reduce((a, b) => a + b, 0);
      gaps.push({
        ...this.envelope(s, now),
        pid: 0, ppid: 0, tid: 0, uid: 0, comm: '', exec_id: '', parent_exec_id: '',
        event_type: 'audit_gap', ret: 0,
        details: { lost, by_type: by, stage: 'kernel', reason: 'ring_buffer_full' },
      });
    }
    if (gaps.length) this.emit(gaps);
    return total;
  }
}
