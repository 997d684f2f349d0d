import t from 'tap';
import { RuntimeHooks, type RuntimeHook } from '../../src/provisioners/local/hooks.js';
import { buildOciSpec } from '../../src/provisioners/local/spec.js';

const spec = () => buildOciSpec({ rootfs: '/r', args: ['sh'], env: {}, cwd: '/', uid: 1000, gid: 1000, terminal: false, hostname: 'h', cgroupsPath: '/loom/x' });

t.test('hooks run in order, see the spec, and get their own state dirs', async (t) => {
  const hooks = new RuntimeHooks();
  const seen: string[] = [];
  const mk = (name: string): RuntimeHook => ({
    name,
    spec: (ctx, s) => {
      seen.push(`${name}:spec:${ctx.stateDir}`);
      s.mounts.push({ destination: `/run/${name}`, type: 'tmpfs', source: 'tmpfs' });
    },
    created: (ctx) => void seen.push(`${name}:created:${ctx.pid}:${ctx.cgroupsPath}`),
    removed: () => void seen.push(`${name}:removed`),
  });
  hooks.add(mk('a'));
  hooks.add(mk('b'));
  t.throws(() => hooks.add(mk('a')), /registered twice/);
  const s = spec();
  await hooks.spec({ id: 'w1', kind: 'weaver' }, s, (h) => `/state/${h}`);
  await hooks.created({ id: 'w1', kind: 'weaver', pid: 42, cgroupsPath: '/loom/w1' }, (h) => `/state/${h}`);
  const failures = await hooks.removed({ id: 'w1', kind: 'weaver' }, (h) => `/state/${h}`);
  t.same(failures, []);
  t.same(seen, ['a:spec:/state/a', 'b:spec:/state/b', 'a:created:42:/loom/w1', 'b:created:42:/loom/w1', 'b:removed', 'a:removed']);
  t.same(s.mounts.slice(-2).map((m) => m.destination), ['/run/a', '/run/b']);
});

t.test('a failing created() stops the phase; removed() runs every hook and reports failures', async (t) => {
  const hooks = new RuntimeHooks();
  const ran: string[] = [];
  hooks.add({ name: 'bad', created: () => { throw new Error('no map'); }, removed: () => { throw new Error('gone'); } });
  hooks.add({ name: 'good', created: () => void ran.push('good:created'), removed: () => void ran.push('good:removed') });
  await t.rejects(hooks.created({ id: 'w', kind: 'container', pid: 1, cgroupsPath: '/loom/w' }, () => '/s'), /no map/);
  t.same(ran, []);
  const failures = await hooks.removed({ id: 'w', kind: 'container' }, () => '/s');
  t.same(ran, ['good:removed']);
  t.equal(failures.length, 1);
  t.equal(failures[0]!.hook, 'bad');
});
