/**
 * Kubernetes: the sidecar filters its own pod. Its cgroup (from /proc/self/cgroup, the unified
 * "0::" line) is the sidecar container's; the parent directory is the pod's, which holds the
 * weaver container's cgroup too. The pod's id is registered with ancestor matching down to its
 * level, and the sidecar's own cgroup is excluded.
 */
import { readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';

export function podCgroup(procCgroup = '/proc/self/cgroup', root = process.env.LOOM_AUDIT_CGROUP_ROOT ?? '/sys/fs/cgroup'): { podId: bigint; selfId: bigint; level: number } {
  const line = readFileSync(procCgroup, 'utf8').split('\n').find((l) => l.startsWith('0::'));
  if (!line) throw new Error('no cgroup v2 membership in /proc/self/cgroup');
  const self = line.slice(3).trim();
  if (self === '/' || !self.startsWith('/')) throw new Error(`the sidecar is not in a pod cgroup (${self}); it must not share the host cgroup namespace root`);
  const pod = dirname(self);
  const level = pod.split('/').filter(Boolean).length;
  return { podId: BigInt(statSync(join(root, pod), { bigint: true }).ino), selfId: BigInt(statSync(join(root, self), { bigint: true }).ino), level };
}
