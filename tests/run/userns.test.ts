/** The id range of `loom run` container jobs: the variable, the host check, the spec it gives (no containers here; tests/run/container.test.ts runs them). */
import t from 'tap';
import { buildOciSpec } from '../../src/provisioners/local/spec.js';
import { checkUsernsHost, DEFAULT_RUN_USERNS_BASE, runIdMap } from '../../src/run/userns.js';

t.test('LOOM_RUN_USERNS_BASE: default, override, bad values', async (t) => {
  t.same(runIdMap(undefined), { base: DEFAULT_RUN_USERNS_BASE });
  t.equal(DEFAULT_RUN_USERNS_BASE, 100000, 'the same default as LOOM_SERVER_WEAVER_USERNS_BASE');
  t.same(runIdMap(''), { base: 100000 });
  t.same(runIdMap('300000'), { base: 300000 });
  for (const bad of ['0', '65535', '-1', '1e6', 'abc', '4294901760', '99999999999']) t.throws(() => runIdMap(bad), /LOOM_RUN_USERNS_BASE must be/, bad);
});

t.test('a host without user namespaces is refused with the reason', async (t) => {
  t.doesNotThrow(() => checkUsernsHost(() => '1000\n'));
  t.throws(() => checkUsernsHost(() => '0\n'), /user namespaces are disabled on this host \(sysctl user.max_user_namespaces=0\)/);
  t.throws(() => checkUsernsHost(() => { throw new Error('ENOENT'); }), /this kernel has none/);
});

t.test('spec: a user-namespaced container on the host network binds /sys read-only instead of mounting sysfs', async (t) => {
  const base = { rootfs: '/r', args: ['sh'], env: {}, cwd: '/', uid: 0, gid: 0, terminal: false, hostname: 'h', cgroupsPath: '/x' };
  const sys = (s: ReturnType<typeof buildOciSpec>) => s.mounts.find((m) => m.destination === '/sys');
  const run = buildOciSpec({ ...base, privateNetwork: false, usernsBase: 100000 });
  t.same(sys(run), { destination: '/sys', type: 'bind', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] });
  t.same(run.linux.uidMappings, [{ containerID: 0, hostID: 100000, size: 65536 }]);
  t.ok(run.linux.namespaces.some((n) => n.type === 'user'));
  t.notOk(run.linux.namespaces.some((n) => n.type === 'network'));
  // Weavers (own network namespace) keep their own sysfs.
  t.equal(sys(buildOciSpec({ ...base, usernsBase: 100000 }))?.type, 'sysfs');
  t.equal(sys(buildOciSpec({ ...base, privateNetwork: false }))?.type, 'sysfs');
});
