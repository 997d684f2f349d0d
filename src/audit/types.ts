import type { AuditEventType } from './decode.js';

/** One audit event as shipped, stored and served (the envelope of issue 13). */
export interface AuditEvent {
  weaver_id: string;
  org_id: string;
  owner_user_id: string;
  /** The sidecar run that produced it: (weaver_id, boot_id, seq) is unique. */
  boot_id: string;
  seq: number;
  /** Wall clock, ns since the epoch, as a decimal string (beyond 2^53). */
  timestamp_ns: string;
  pid: number;
  ppid: number;
  tid: number;
  uid: number;
  comm: string;
  exec_id: string;
  parent_exec_id: string;
  event_type: AuditEventType;
  ret: number;
  details: Record<string, unknown>;
}

/** A weaver the sidecar reports for. */
export interface WeaverIdentity {
  weaver_id: string;
  org_id: string;
  owner_user_id: string;
}
