/**
 * Pure mapping of a weaver pod (as the API server or a watch event gives it) to what the
 * lifecycle layer sees: a status and a reason a user can act on.
 */
import type { V1ContainerStatus, V1Pod } from '@kubernetes/client-node';
import type { BackendWeaver } from '../../weaver/provisioner.js';
import { AUDIT_CONTAINER, CLONE_CONTAINER, MAIN_CONTAINER, WEAVER_ID_ANNOTATION, WEAVER_ID_LABEL } from './labels.js';

/**
 * Waiting reasons that will not fix themselves: the weaver is reported failed right away
 * (the lifecycle layer then deletes the pod) instead of sitting in pending until the ready timeout.
 */
export const FATAL_WAITING_REASONS: ReadonlySet<string> = new Set([
  'ErrImagePull',
  'ImagePullBackOff',
  'InvalidImageName',
  'ErrImageNeverPull',
  'CreateContainerConfigError',
  'CreateContainerError',
  'RunContainerError',
  'CrashLoopBackOff',
]);

/** Timestamps are Date objects from the typed client and strings from raw watch events. */
export function toDate(v: unknown): Date | undefined {
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? undefined : v;
  if (typeof v === 'string' && v) {
    const d = new Date(v);
    return Number.isNaN(d.getTime()) ? undefined : d;
  }
  return undefined;
}

/** The weaver id of a pod, or null when the pod is not a weaver pod. */
export function weaverIdOf(pod: V1Pod): string | null {
  const ann = pod.metadata?.annotations?.[WEAVER_ID_ANNOTATION];
  if (ann) return ann;
  const label = pod.metadata?.labels?.[WEAVER_ID_LABEL];
  return label || null;
}

const oneLine = (s: string): string => s.replace(/\s+/g, ' ').trim();

/** The useful part of git's output: its fatal/error lines, else the last non-empty line. */
export function gitFailureMessage(text: string): string {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  const fatal = lines.filter((l) => /^(fatal|error):/i.test(l));
  const picked = fatal.length > 0 ? fatal : lines.slice(-1);
  return picked.join('; ').slice(0, 500);
}

function waitingReason(reason: string, message?: string): string {
  return message ? `${reason}: ${oneLine(message)}` : reason;
}

function terminatedText(t: { exitCode: number; reason?: string; message?: string }): string {
  if (t.reason === 'OOMKilled') return `OOMKilled: exited with code ${t.exitCode} (memory limit reached)`;
  return `exited with code ${t.exitCode}`;
}

/** Failure of an init container (the clone or the audit sidecar), if any. */
function initFailure(statuses: V1ContainerStatus[]): string | undefined {
  for (const cs of statuses) {
    const label = cs.name === CLONE_CONTAINER ? 'git clone failed' : cs.name === AUDIT_CONTAINER ? 'audit sidecar failed' : `init container ${cs.name} failed`;
    const w = cs.state?.waiting;
    if (w?.reason && FATAL_WAITING_REASONS.has(w.reason)) return `${label}: ${waitingReason(w.reason, w.message)}`;
    const t = cs.state?.terminated;
    // A native sidecar that stops once the main container has ended is not a failure.
    if (t && t.exitCode !== 0 && cs.name !== AUDIT_CONTAINER) {
      const detail = t.message ? gitFailureMessage(t.message) : t.reason && t.reason !== 'Error' ? t.reason : '';
      return `${label}: ${detail || `exited with code ${t.exitCode}`}`;
    }
  }
  return undefined;
}

/** Maps a pod to a weaver status. Returns null for a pod that is not a weaver pod. */
export function podToWeaver(pod: V1Pod): BackendWeaver | null {
  const id = weaverIdOf(pod);
  if (!id) return null;
  const status = pod.status ?? {};
  const phase = status.phase ?? 'Pending';
  const main = (status.containerStatuses ?? []).find((c) => c.name === MAIN_CONTAINER);
  const running = main?.state?.running;
  const startedAt = toDate(running?.startedAt) ?? toDate(main?.state?.terminated?.startedAt);
  const base: BackendWeaver = { id, status: 'unknown', ...(startedAt ? { startedAt } : {}) };

  if (pod.metadata?.deletionTimestamp) return { ...base, status: 'terminating' };

  const initFail = initFailure(status.initContainerStatuses ?? []);
  if (initFail) return { ...base, status: 'failed', reason: initFail };

  const term = main?.state?.terminated;
  if (term) {
    const exitCode = term.exitCode;
    if (exitCode === 0 && term.reason !== 'OOMKilled') return { ...base, status: 'succeeded', reason: 'exited with code 0', exitCode };
    return { ...base, status: 'failed', reason: terminatedText(term), exitCode };
  }

  const waiting = main?.state?.waiting;
  if (waiting?.reason && FATAL_WAITING_REASONS.has(waiting.reason)) {
    return { ...base, status: 'failed', reason: waitingReason(waiting.reason, waiting.message) };
  }

  switch (phase) {
    case 'Failed': {
      if (status.reason === 'DeadlineExceeded') return { ...base, status: 'failed', reason: 'lifetime expired (DeadlineExceeded)' };
      const why = status.reason ? waitingReason(status.reason, status.message) : status.message ? oneLine(status.message) : 'pod failed';
      return { ...base, status: 'failed', reason: why };
    }
    case 'Succeeded':
      return { ...base, status: 'succeeded' };
    case 'Running':
      if (running) return { ...base, status: 'running' };
      // Running with the main container not (yet) running: still starting.
      return { ...base, status: 'pending', ...(waiting?.reason ? { reason: waiting.reason } : {}) };
    case 'Pending': {
      const unsched = (status.conditions ?? []).find((c) => c.type === 'PodScheduled' && c.status === 'False');
      if (unsched?.reason) return { ...base, status: 'pending', reason: waitingReason(unsched.reason, unsched.message) };
      const initWaiting = (status.initContainerStatuses ?? []).find((c) => c.state?.running && c.name === CLONE_CONTAINER);
      if (initWaiting) return { ...base, status: 'pending', reason: 'cloning repository' };
      return { ...base, status: 'pending', ...(waiting?.reason ? { reason: waiting.reason } : {}) };
    }
    default:
      return { ...base, status: 'unknown', ...(status.reason ? { reason: status.reason } : {}) };
  }
}
