/**
 * Exec and files on the kubernetes backend: the real loom-server against the K8S STAND-IN API
 * server (tests/support/k8s-standin: not a real cluster; it speaks the pod exec subresource's
 * channel protocol, v5 and v4, and runs each command chrooted in a per-pod busybox root).
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { K8sStandin, STANDIN_BANNER } from '../support/k8s-standin/index.js';
import { startServer, tempDir } from '../support/server.js';
import { LoomClient, BadRequestError, NotFoundError } from '../../src/client/index.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
t.comment(`these tests run loom-server against the ${STANDIN_BANNER}`);

t.test('exec and files through the pod exec API', async (t) => {
  const standin = await K8sStandin.start({ kubelet: 'auto', kubeletDelayMs: 20 });
  t.teardown(() => standin.close());
  const kubeconfig = join(tempDir('loom-kube-'), 'config');
  writeFileSync(kubeconfig, standin.kubeconfigYaml());
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_BACKEND: 'kubernetes', KUBECONFIG: kubeconfig, LOOM_SERVER_WEAVER_DEFAULT_IMAGE: 'docker.io/library/busybox:1.36' } });
  t.teardown(() => srv.stop());
  const loom = new LoomClient({ serverUrl: srv.url, token: await srv.token('kube') });
  const outsider = new LoomClient({ serverUrl: srv.url, token: await srv.token('outsider') });
  const w = await loom.waitUntilRunning((await loom.createWeaver({})).id);
  const pod = `weaver-${w.id}`;

  await t.test('one-shot: exit codes and separate streams', async (t) => {
    const r = await loom.exec(w.id, ['sh', '-c', 'echo out; echo err >&2; exit 3']);
    t.same([r.exit_code, r.stdout, r.stderr], [3, 'out\n', 'err\n']);
    t.equal((await loom.exec(w.id, ['true'])).exit_code, 0);
    t.equal((await loom.exec(w.id, ['sh', '-c', 'kill -9 $$'])).exit_code, 137);
    const last = standin.execs[standin.execs.length - 1]!;
    t.same([last.pod, last.command], [pod, ['sh', '-c', 'kill -9 $$']], 'argv reached the exec API as command= parameters');
    t.equal(last.protocol, 'v5.channel.k8s.io', 'v5 negotiated (stdin can be closed)');
    const e = await loom.exec(w.id, ['sh', '-c', 'echo "$A"; pwd'], { env: { A: 'x; y' }, cwd: '/tmp' });
    t.equal(e.stdout, 'x; y\n/tmp\n', 'env and cwd applied through an argv wrapper');
    await t.rejects(outsider.exec(w.id, ['true']), NotFoundError);
  });

  await t.test('streaming: stdin to cat ends with v5 close; stdout and stderr apart', async (t) => {
    const data = randomBytes(512 * 1024);
    const s = await loom.execStream(w.id, ['cat']);
    const parts: Buffer[] = [];
    s.stdout.on('data', (b: Buffer) => parts.push(b));
    s.write(data);
    s.end();
    t.equal(await s.exit, 0);
    t.equal(sha(Buffer.concat(parts)), sha(data));
    const two = await loom.execStream(w.id, ['sh', '-c', 'echo o; echo e >&2'], { stdin: false });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    two.stdout.on('data', (b: Buffer) => out.push(b));
    two.stderr.on('data', (b: Buffer) => err.push(b));
    t.equal(await two.exit, 0);
    t.same([Buffer.concat(out).toString(), Buffer.concat(err).toString()], ['o\n', 'e\n']);
  });

  await t.test('files through tar and cat in the pod', async (t) => {
    const data = randomBytes(2 * 1024 * 1024);
    await loom.writeFile(w.id, '/workspace/f.bin', data, { mode: '640' });
    t.equal(sha(await loom.readFile(w.id, '/workspace/f.bin')), sha(data));
    const st = await loom.stat(w.id, '/workspace/f.bin');
    t.same([st.type, st.size, st.mode], ['file', data.length, '640']);
    await loom.exec(w.id, ['sh', '-c', 'mkdir -p /workspace/d/sub && echo hi > /workspace/d/sub/x && ln -s sub/x /workspace/d/l']);
    const tar = await loom.download(w.id, '/workspace/d');
    t.equal(tar.type, 'directory');
    const parts: Buffer[] = [];
    for await (const c of tar.body) parts.push(c as Buffer);
    await loom.uploadTar(w.id, '/workspace/copy', Buffer.concat(parts));
    t.equal((await loom.exec(w.id, ['sh', '-c', 'cat /workspace/copy/sub/x; readlink /workspace/copy/l'])).stdout, 'hi\nsub/x\n');
    await t.rejects(loom.readFile(w.id, '/workspace/none'), NotFoundError);
    await t.rejects(loom.stat(w.id, '/workspace/../etc'), BadRequestError);
  });
});
