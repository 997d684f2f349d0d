import t from 'tap';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { buildDefaultRootfs, writeSingleLayerLayout, normalizeRef } from '../../src/provisioners/local/index.js';
import { localDataDir, newLocal, weaverSpec, waitStatus } from '../support/local-helpers.js';

const dataDir = localDataDir(t);
const p = newLocal(dataDir, { prepareDefaultImage: false });
t.teardown(() => p.close());

t.test('normalizeRef', async (t) => {
  t.equal(normalizeRef('busybox'), 'busybox:latest');
  t.equal(normalizeRef('reg:5000/a/b'), 'reg:5000/a/b:latest');
  t.equal(normalizeRef('a/b:1'), 'a/b:1');
});

t.test('import an OCI archive and a docker-archive, then run weavers from them', async (t) => {
  await p.start();
  t.same(await p.images.list(), [], 'no default image when not prepared');
  // An image built offline: busybox rootfs, no User (→ uid 1000), its own Cmd and Env.
  const work = join(dataDir, 'img-src');
  await buildDefaultRootfs(join(work, 'rootfs'));
  await writeSingleLayerLayout(join(work, 'rootfs'), join(work, 'layout'), {
    cmd: ['/bin/sh', '-c', 'echo "img-ok uid=$(id -u) foo=$IMG_FOO pwd=$(pwd)"'],
    env: ['PATH=/bin:/usr/bin:/sbin:/usr/sbin', 'IMG_FOO=from-image'],
    workingDir: '/tmp',
    user: '',
  });
  const ociTar = join(work, 'test-image.tar');
  execFileSync('tar', ['-C', join(work, 'layout'), '-cf', ociTar, '.']);
  const img = await p.images.import(ociTar, 'test/oci-img:1');
  t.equal(img.name, 'test/oci-img:1');
  t.match(img.digest, /^sha256:[0-9a-f]{64}$/);

  const dockerTar = join(work, 'docker.tar');
  execFileSync('skopeo', ['--insecure-policy', 'copy', `oci:${join(work, 'layout')}:latest`, `docker-archive:${dockerTar}:test/docker-img:2`], { stdio: 'ignore' });
  const img2 = await p.images.import(dockerTar);
  t.equal(img2.name, 'test/docker-img:2', 'name recorded in the docker archive');
  t.same((await p.images.list()).map((i) => i.name), ['test/docker-img:2', 'test/oci-img:1']);

  for (const name of ['test/oci-img:1', 'test/docker-img:2']) {
    const spec = weaverSpec({ image: name });
    await p.create(spec);
    const w = await waitStatus(p, spec.id, ['succeeded', 'failed']);
    t.equal(w.status, 'succeeded', `${name}: ${w.reason ?? ''}`);
    const out: string[] = [];
    for await (const l of p.logs(spec.id, { follow: false })) out.push(l.toString());
    t.match(out.join(''), /img-ok uid=1000 foo=from-image pwd=\/tmp/, `${name} honours Cmd, Env, WorkingDir`);
    await p.delete(spec.id);
  }

  // A command overrides the image's
  const spec = weaverSpec({ image: 'test/oci-img:1', command: ['/bin/sh', '-c', 'exit 7'] });
  await p.create(spec);
  const w = await waitStatus(p, spec.id, ['succeeded', 'failed']);
  t.equal(w.reason, 'exited with code 7');
  await p.delete(spec.id);

  await t.rejects(p.images.import(join(work, 'rootfs')), { code: 'bad_image' });
  t.ok(await p.images.remove('test/oci-img:1'));
  t.same((await p.images.list()).map((i) => i.name), ['test/docker-img:2']);
});
