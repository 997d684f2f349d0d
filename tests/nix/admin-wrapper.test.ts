// loom-server-admin's script (nixos-modules/lib/admin-wrapper.sh) run for real, as root, with a
// stand-in loom-server that prints who it runs as and what it got: the unit's user and groups,
// the unit's environment plus its environment file (read as root, overriding Environment= as
// systemd does), none of the caller's environment, the arguments untouched.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO } from './nix.js';

const asRoot = process.getuid?.() === 0;
const skip = asRoot ? false : 'setpriv needs root to switch users (run the suite as root, as CI does)';
if (skip && process.env.CI === 'true') throw new Error(`admin-wrapper test cannot run: ${skip}`);

t.test('runs as the unit runs, with nothing of the caller', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'loom-admin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  const fake = join(dir, 'loom-server');
  writeFileSync(fake, '#!/bin/sh\necho "user=$(id -un) groups=$(id -Gn)"\nenv | sort\nprintf "arg=%s\\n" "$@"\n');
  chmodSync(fake, 0o755);
  const envFile = join(dir, 'loom.env');
  writeFileSync(envFile, [
    '# a comment',
    '; another',
    '',
    'LOOM_LOG_LEVEL=debug',
    '  SECRET_TOKEN = "s3cret with spaces"',
    "QUOTED='single'",
    'EMPTY=',
  ].join('\n'));
  chmodSync(envFile, 0o600); // root's only: read before the switch to the unit's user

  const wrapper = (envFileValue: string, user = 'nobody') => [
    `unit_user=${user}`,
    `unit_group=$(id -gn ${user})`,
    `unit_dir=${dir}`,
    'unit_path=/usr/sbin:/usr/bin:/sbin:/bin',
    "unit_env=('LOOM_LOG_LEVEL=info' 'KUBECONFIG=/var/lib/loom-k3s/loom-server.kubeconfig')",
    `env_file=${envFileValue}`,
    `loom_server=${fake}`,
    `source ${join(REPO, 'nixos-modules/lib/admin-wrapper.sh')}`,
  ].join('\n');
  const run = (script: string, args: string[]) =>
    spawnSync('bash', ['-c', script, 'loom-server-admin', ...args], { encoding: 'utf8', env: { PATH: process.env.PATH, CALLER_SECRET: 'leak', HOME: '/root' } });

  const r = run(wrapper(envFile), ['token', '--user', 'alice smith', '--admin']);
  t.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.match(lines[0], /^user=nobody groups=/);
  const env = Object.fromEntries(lines.filter((l) => !l.startsWith('arg=') && !l.startsWith('user=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  t.same(env, {
    EMPTY: '',
    HOME: dir,
    KUBECONFIG: '/var/lib/loom-k3s/loom-server.kubeconfig',
    LOOM_LOG_LEVEL: 'debug',
    PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
    PWD: dir,
    QUOTED: 'single',
    SECRET_TOKEN: 's3cret with spaces',
  }, 'the unit environment, the file overriding it, nothing of the caller');
  t.same(lines.filter((l) => l.startsWith('arg=')), ['arg=admin', 'arg=token', 'arg=--user', 'arg=alice smith', 'arg=--admin']);

  const noFile = run(wrapper(''), ['x']);
  t.equal(noFile.status, 0, noFile.stderr);
  t.match(noFile.stdout, /^LOOM_LOG_LEVEL=info$/m);

  const missing = run(wrapper(join(dir, 'absent.env')), []);
  t.not(missing.status, 0);
  t.match(missing.stderr, /cannot read the environment file/);

  writeFileSync(envFile, 'not a pair\n');
  const bad = run(wrapper(envFile), []);
  t.not(bad.status, 0);
  t.match(bad.stderr, /loom\.env:1: not KEY=VALUE/);
});

t.test('refuses to run as a user other than root', { skip }, async (t) => {
  const r = spawnSync('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', 'bash', '-c', `unit_user=nobody unit_group=nogroup unit_dir=/ unit_path=/bin unit_env=() env_file= loom_server=/bin/true; source ${join(REPO, 'nixos-modules/lib/admin-wrapper.sh')}`], { encoding: 'utf8' });
  t.not(r.status, 0);
  t.match(r.stderr, /run as root/);
});
