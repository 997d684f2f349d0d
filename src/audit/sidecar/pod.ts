/**
 * Kubernetes: the sidecar filters its own pod. The pod's cgroup is found under the host's cgroup
 * hierarchy (mounted read-only at LOOM_AUDIT_CGROUP_ROOT) by the pod UID, which both cgroup
 * drivers put in the directory name (…/pod<uid> or …-pod<uid_with_underscores>.slice). It is
 * registered with ancestor matching down to its depth; the sidecar's own container cgroup (the
 * one /proc/self/cgroup names, when the cgroup namespace shows it) is excluded.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

function findPodDir(root: string, uid: string, depth = 0): string | null {
  if (depth > 5) return null;
  const a = `pod${uid}`;
  const b = `pod${uid.replace(/-/g, '_')}`;
  let entries: string[];
  try {
    entries = readdirSync(root, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
  } catch {
    return null;
  }
  for (const e of entries) if (e === a || e.endsWith(`-${b}.slice`) || e === b) return join(root, e);
  for (const e of entries) {
    if (!/^kubepods|burstable|besteffort|guaranteed|\.slice$/.test(e)) continue;
    const hit = findPodDir(join(root, e), uid, depth + 1);
    if (hit) return hit;
  }
  return null;
}

export function podCgroup(root = process.env.LOOM_AUDIT_CGROUP_ROOT ?? '/sys/fs/cgroup', uid = process.env.LOOM_AUDIT_POD_UID ?? ''): { podId: bigint; selfId: bigint; level: number } {
  if (!/^[0-9a-f-]{36}$/.test(uid)) throw new Error('LOOM_AUDIT_POD_UID must be the pod UID (downward API metadata.uid)');
  const base = existsSync(join(root, 'unified', 'cgroup.controllers')) ? join(root, 'unified') : root;
  const pod = findPodDir(base, uid);
  if (!pod) throw new Error(`no cgroup for pod ${uid} under ${base}`);
  const level = pod.slice(base.length).split('/').filter(Boolean).length;
  // our own container: /proc/self/cgroup's unified line, relative to the host root when the
  // cgroup namespace is the host's, else "/" (then our cgroup is the namespace root: its inode)
  const line = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::')) ?? '0::/';
  const self = line.slice(3).trim();
  const selfDir = self !== '/' && existsSync(join(base, self)) ? join(base, self) : '/sys/fs/cgroup';
  return { podId: BigInt(statSync(pod, { bigint: true }).ino), selfId: BigInt(statSync(selfDir, { bigint: true }).ino), level };
}
