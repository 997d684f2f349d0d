import t from 'tap';
import type { V1Pod, V1ContainerStatus } from '@kubernetes/client-node';
import { podToWeaver, gitFailureMessage } from '../../src/provisioners/kubernetes/status.js';

const ID = '0b1e7f6a-1c2d-4e5f-8a9b-00000000abcd';

function pod(status: V1Pod['status'], meta: Partial<NonNullable<V1Pod['metadata']>> = {}): V1Pod {
  return {
    metadata: { name: `weaver-${ID}`, labels: { 'loom.dev/weaver-id': ID }, ...meta },
    spec: { containers: [{ name: 'weaver', image: 'x' }] },
    status,
  };
}
const main = (state: V1ContainerStatus['state']): V1ContainerStatus => ({ name: 'weaver', image: 'x', imageID: '', ready: false, restartCount: 0, state });
const init = (name: string, state: V1ContainerStatus['state']): V1ContainerStatus => ({ name, image: 'x', imageID: '', ready: false, restartCount: 0, state });

t.test('not a weaver pod', async (t) => {
  t.equal(podToWeaver({ metadata: { name: 'x' }, spec: { containers: [] } }), null);
});

t.test('pending', async (t) => {
  t.match(podToWeaver(pod({ phase: 'Pending' })), { id: ID, status: 'pending' });
  t.match(podToWeaver(pod({ phase: 'Pending', containerStatuses: [main({ waiting: { reason: 'ContainerCreating' } })] })), { status: 'pending', reason: 'ContainerCreating' });
  t.match(
    podToWeaver(pod({ phase: 'Pending', conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message: '0/1 nodes are available: 1 Insufficient memory.' }] })),
    { status: 'pending', reason: 'Unschedulable: 0/1 nodes are available: 1 Insufficient memory.' },
  );
  t.match(podToWeaver(pod({ phase: 'Pending', initContainerStatuses: [init('git-clone', { running: { startedAt: new Date() } })] })), { status: 'pending', reason: 'cloning repository' });
});

t.test('running, with startedAt from a Date or a wire string', async (t) => {
  const a = podToWeaver(pod({ phase: 'Running', containerStatuses: [main({ running: { startedAt: new Date('2026-01-01T00:00:05Z') } })] }));
  t.match(a, { status: 'running' });
  t.equal(a?.startedAt?.toISOString(), '2026-01-01T00:00:05.000Z');
  const b = podToWeaver(pod({ phase: 'Running', containerStatuses: [main({ running: { startedAt: '2026-01-01T00:00:06Z' as unknown as Date } })] }));
  t.equal(b?.startedAt?.toISOString(), '2026-01-01T00:00:06.000Z');
  t.notOk(b?.reason);
});

for (const reason of ['ErrImagePull', 'ImagePullBackOff', 'InvalidImageName', 'CreateContainerConfigError', 'CrashLoopBackOff']) {
  t.test(`waiting ${reason} is failed at once`, async (t) => {
    const w = podToWeaver(pod({ phase: 'Pending', containerStatuses: [main({ waiting: { reason, message: 'Back-off pulling image\n "x"' } })] }));
    t.match(w, { status: 'failed', reason: `${reason}: Back-off pulling image "x"` });
  });
}

t.test('OOMKilled', async (t) => {
  const w = podToWeaver(pod({ phase: 'Failed', containerStatuses: [main({ terminated: { exitCode: 137, reason: 'OOMKilled' } })] }));
  t.match(w, { status: 'failed', exitCode: 137 });
  t.match(w?.reason, /^OOMKilled/);
});

t.test('exit codes', async (t) => {
  t.match(podToWeaver(pod({ phase: 'Failed', containerStatuses: [main({ terminated: { exitCode: 3, reason: 'Error' } })] })), { status: 'failed', reason: 'exited with code 3', exitCode: 3 });
  t.match(podToWeaver(pod({ phase: 'Succeeded', containerStatuses: [main({ terminated: { exitCode: 0, reason: 'Completed' } })] })), { status: 'succeeded', exitCode: 0 });
});

t.test('git clone failure from the init container message', async (t) => {
  const w = podToWeaver(
    pod({
      phase: 'Failed',
      initContainerStatuses: [init('git-clone', { terminated: { exitCode: 128, reason: 'Error', message: "Cloning into '/workspace/nope'...\nfatal: repository 'https://github.com/acme/nope/' not found\n" } })],
      containerStatuses: [main({ waiting: { reason: 'PodInitializing' } })],
    }),
  );
  t.match(w, { status: 'failed', reason: "git clone failed: fatal: repository 'https://github.com/acme/nope/' not found" });
  const noMsg = podToWeaver(pod({ phase: 'Failed', initContainerStatuses: [init('git-clone', { terminated: { exitCode: 128, reason: 'Error' } })] }));
  t.match(noMsg, { status: 'failed', reason: 'git clone failed: exited with code 128' });
  const pull = podToWeaver(pod({ phase: 'Pending', initContainerStatuses: [init('git-clone', { waiting: { reason: 'ErrImagePull', message: 'not found' } })] }));
  t.match(pull, { status: 'failed', reason: 'git clone failed: ErrImagePull: not found' });
  t.equal(gitFailureMessage('a\nb\n'), 'b');
});

t.test('audit sidecar image failure; sidecar stopped after main exit is not a failure', async (t) => {
  t.match(
    podToWeaver(pod({ phase: 'Pending', initContainerStatuses: [init('audit-sidecar', { waiting: { reason: 'ImagePullBackOff', message: 'nope' } })] })),
    { status: 'failed', reason: 'audit sidecar failed: ImagePullBackOff: nope' },
  );
  t.match(
    podToWeaver(pod({ phase: 'Succeeded', initContainerStatuses: [init('audit-sidecar', { terminated: { exitCode: 143, reason: 'Error' } })], containerStatuses: [main({ terminated: { exitCode: 0 } })] })),
    { status: 'succeeded' },
  );
});

t.test('deadline exceeded, evicted, unknown', async (t) => {
  t.match(podToWeaver(pod({ phase: 'Failed', reason: 'DeadlineExceeded', message: 'Pod was active on the node longer than the specified deadline' })), { status: 'failed', reason: 'lifetime expired (DeadlineExceeded)' });
  t.match(podToWeaver(pod({ phase: 'Failed', reason: 'Evicted', message: 'The node was low on resource: memory.' })), { status: 'failed', reason: 'Evicted: The node was low on resource: memory.' });
  t.match(podToWeaver(pod({ phase: 'Unknown' })), { status: 'unknown' });
});

t.test('deletionTimestamp is terminating', async (t) => {
  t.match(podToWeaver(pod({ phase: 'Running', containerStatuses: [main({ running: {} })] }, { deletionTimestamp: new Date() })), { status: 'terminating' });
  t.match(podToWeaver(pod({ phase: 'Running' }, { deletionTimestamp: '2026-01-01T00:00:00Z' as unknown as Date })), { status: 'terminating' });
});

t.test('the annotation carries an id that could not be a label value', async (t) => {
  const w = podToWeaver(pod({ phase: 'Pending' }, { annotations: { 'loom.dev/weaver-id': 'Odd Id' }, labels: { 'loom.dev/weaver-id': 'Odd-Id' } }));
  t.equal(w?.id, 'Odd Id');
});
