// The NixOS modules evaluated with nix-instantiate and a stand-in for nixpkgs' lib
// (tests/nix/fixtures/fake-nixpkgs.nix): the generated option types and defaults, the unit's
// environment and sandbox by backend, and loom-k3s' flags, setup unit and secret handling.
import t from 'tap';
import { VARIABLES, type VariableSpec } from '../../src/server/config/load.js';
import { CANNOT_RUN_HERE, nixEval, nixEvalError, requireNix } from './nix.js';

t.comment(requireNix());
t.comment(CANNOT_RUN_HERE);

const FAKE = 'import (REPO + "/tests/nix/fixtures/fake-nixpkgs.nix")';
const json = (x: unknown) => `(builtins.fromJSON ${JSON.stringify(JSON.stringify(x))})`;

interface Unit {
  environment: Record<string, string>;
  path: string[];
  after: string[];
  serviceConfig: Record<string, unknown>;
}
interface Evaluated {
  config: {
    assertions: Array<{ assertion: boolean; message: string }>;
    warnings?: string[];
    systemd: { services: Record<string, Unit & { script?: string }> };
    users?: { users?: Record<string, unknown>; groups?: Record<string, unknown> };
    services?: Record<string, any>;
    networking?: { firewall?: Record<string, unknown> };
    environment?: { systemPackages?: unknown[] };
  };
  values: Record<string, any>;
}

const evalServer = (defs: unknown, otherConfig: unknown = {}): Evaluated =>
  nixEval(`let f = ${FAKE}; in f.evalModule { module = import (REPO + "/nixos-modules/loom-server.nix"); name = "loom-server"; defs = ${json(defs)}; otherConfig = ${json(otherConfig)}; }`);

const K3S_DEFAULTS_EXPR = `(let f = ${FAKE}; in f.defaultsOf ((import (REPO + "/nixos-modules/loom-k3s.nix") { config = { services = { }; }; inherit (f) lib pkgs; }).options.services.loom-k3s))`;
const evalK3s = (defs: unknown, otherConfig: unknown = { services: { k3s: { package: '<pkgs.k3s>' } } }): Evaluated =>
  nixEval(`let f = ${FAKE}; in f.evalModule { module = import (REPO + "/nixos-modules/loom-k3s.nix"); name = "loom-k3s"; defs = ${json(defs)}; otherConfig = ${json(otherConfig)}; }`);

function expectedType(v: VariableSpec): unknown {
  const optional = (v.type === 'string' || v.type === 'path') && v.default === '';
  let base: unknown;
  switch (v.type) {
    case 'bool': base = { type: 'bool' }; break;
    case 'int': base = { type: 'ints.between', min: v.min, max: v.max }; break;
    case 'number': base = { type: 'numbers.between', min: v.min, max: v.max }; break;
    case 'enum': base = { type: 'enum', values: v.values }; break;
    case 'list': base = { type: 'listOf', of: { type: 'str' } }; break;
    case 'string': base = v.pattern ? { type: 'strMatching', pattern: v.pattern } : { type: 'str' }; break;
    default: base = { type: 'str' };
  }
  return optional ? { type: 'nullOr', of: base } : base;
}

t.test('options generated from the table: one per entry, type and default from the entry', async (t) => {
  const opts = nixEval<Record<string, any>>(`let f = ${FAKE}; in import (REPO + "/nixos-modules/lib/options.nix") { inherit (f) lib; }`);
  const mapped = VARIABLES.filter((v) => v.option !== null);
  const collect = (o: any, prefix: string[] = []): string[] =>
    o._type === 'option' ? [prefix.join('.')] : Object.entries(o).flatMap(([k, v]) => collect(v, [...prefix, k]));
  t.same(collect(opts).sort(), mapped.map((v) => v.option).sort(), 'exactly the table paths');
  for (const v of mapped) {
    const o = v.option!.split('.').reduce((a: any, k) => a[k], opts);
    const optional = (v.type === 'string' || v.type === 'path') && v.default === '';
    t.same(o.type, expectedType(v), `${v.option}: type`);
    t.same(o.default, optional ? null : v.default, `${v.option}: default`);
    t.match(o.description, v.name, `${v.option}: description names ${v.name}`);
  }
});

t.test('loom-server module: the unit environment is the env.nix mapping of the settings', async (t) => {
  const defs = { enable: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k', imagePullSecrets: ['ghcr-secret'] }, environment: { LOOM_LOG_LEVEL: 'debug', EXTRA: 'x' } };
  const r = evalServer(defs);
  const expected = nixEval<Record<string, string>>(`(import (REPO + "/nixos-modules/lib/env.nix") { }).toEnv ${json({ weaver: defs.weaver })}`);
  t.same(r.config.systemd.services['loom-server']!.environment, { ...expected, LOOM_LOG_LEVEL: 'debug', EXTRA: 'x' });
  t.ok(r.config.assertions.every((a) => a.assertion), 'assertions hold');
  t.same(r.config.users?.users?.['loom-server'], { isSystemUser: true, group: 'loom-server', home: '/var/lib/loom-server', description: 'Loom server' });
  t.ok(r.config.users?.groups && 'loom-server' in r.config.users.groups, 'dedicated group');
});

t.test('loom-server module: disabled means no unit', async (t) => {
  const r = evalServer({});
  t.equal(r.config as unknown, null, 'mkIf false: no definitions at all');
});

t.test('loom-server unit: kubernetes backend is unprivileged', async (t) => {
  const u = evalServer({ enable: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k' } }).config.systemd.services['loom-server']!;
  const sc = u.serviceConfig;
  t.equal(sc.User, 'loom-server');
  t.equal(sc.CapabilityBoundingSet, '');
  t.notOk('AmbientCapabilities' in sc);
  t.equal(sc.ProtectSystem, 'strict');
  for (const k of ['NoNewPrivileges', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'ProtectControlGroups', 'RestrictNamespaces']) t.equal(sc[k], true, k);
  t.equal(sc.Restart, 'on-failure');
  t.equal(sc.StateDirectory, 'loom-server');
  t.equal(sc.WorkingDirectory, '/var/lib/loom-server');
  t.equal(sc.StandardOutput, 'journal');
  t.equal(sc.ExecStart, '<pkgs.callPackage loom.nix>/bin/loom-server');
  t.notOk('KillMode' in sc, 'default KillMode: no containers to keep');
  t.notOk('MemoryDenyWriteExecute' in sc, 'V8 JIT needs W+X');
  t.same(u.path, ['<pkgs.git>']);
});

t.test('loom-server unit: local backend runs as root with the bounded capability set, keeps conmon on restart', async (t) => {
  const u = evalServer({ enable: true }).config.systemd.services['loom-server']!;
  const sc = u.serviceConfig;
  t.equal(sc.User, 'root');
  t.equal(sc.KillMode, 'process');
  t.equal(sc.ProtectSystem, 'full');
  for (const k of ['NoNewPrivileges', 'ProtectHome', 'PrivateTmp']) t.equal(sc[k], true, k);
  for (const k of ['ProtectControlGroups', 'PrivateDevices', 'RestrictNamespaces', 'SystemCallFilter']) t.notOk(k in sc, `no ${k}`);
  const caps = sc.CapabilityBoundingSet as string[];
  for (const c of ['CAP_SYS_ADMIN', 'CAP_NET_ADMIN', 'CAP_SYS_CHROOT', 'CAP_SETUID', 'CAP_SETGID', 'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_KILL', 'CAP_SYS_PTRACE', 'CAP_SYS_RESOURCE', 'CAP_AUDIT_WRITE', 'CAP_SETPCAP', 'CAP_SETFCAP', 'CAP_FSETID']) {
    t.ok(caps.includes(c), c);
  }
  for (const c of ['CAP_SYS_MODULE', 'CAP_SYS_TIME', 'CAP_SYS_BOOT', 'CAP_SYS_RAWIO']) t.notOk(caps.includes(c), `not ${c}`);
  t.same(u.path, ['<pkgs.runc>', '<pkgs.crun>', '<pkgs.conmon>', '<pkgs.skopeo>', '<pkgs.umoci>', '<pkgs.git>', '<pkgs.btrfs-progs>', '<pkgs.xfsprogs>', '<pkgs.util-linux>', '<pkgs.slirp4netns>', '<pkgs.runCommand busybox-static-bin>']);
});

t.test('loom-server unit: low port, data dir outside the state dir, environmentFile', async (t) => {
  const sc = evalServer({ enable: true, listenAddress: '0.0.0.0:443', dataDir: '/srv/loom', environmentFile: '/run/secrets/loom.env', openFirewall: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k' } });
  const s = sc.config.systemd.services['loom-server']!.serviceConfig;
  t.same(s.CapabilityBoundingSet, ['CAP_NET_BIND_SERVICE']);
  t.same(s.AmbientCapabilities, ['CAP_NET_BIND_SERVICE']);
  t.same(s.ReadWritePaths, ['/srv/loom']);
  t.equal(s.EnvironmentFile, '/run/secrets/loom.env');
  t.same(sc.config.networking?.firewall, { allowedTCPPorts: [443] });
});

t.test('loom-server assertions', async (t) => {
  const failing = (defs: unknown) => evalServer(defs).config.assertions.filter((a) => !a.assertion).map((a) => a.message);
  t.match(failing({ enable: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k', audit: { enable: true } } }), [/audit\.image must be set/]);
  // the local backend runs the package's own loom-audit-sidecar: no image needed
  t.same(failing({ enable: true, weaver: { audit: { enable: true } } }), []);
  t.match(failing({ enable: true, weaver: { defaultTtlHours: 50 } }), [/defaultTtlHours must not exceed maxTtlHours/]);
  t.match(failing({ enable: true, weaver: { backend: 'kubernetes' } }), [/needs weaver\.kubeconfigPath/]);
});

t.test('loom-server with loom-k3s on the host: kubeconfig group, ordering, KUBECONFIG default', async (t) => {
  const k3s = { 'loom-k3s': { enable: true, role: 'server', kubeconfigGroup: 'loom-k3s', kubeconfigPath: '/etc/rancher/k3s/k3s.yaml' } };
  const r = evalServer({ enable: true, weaver: { backend: 'kubernetes' } }, { services: k3s });
  const u = r.config.systemd.services['loom-server']!;
  t.same(u.serviceConfig.SupplementaryGroups, ['loom-k3s']);
  t.ok(u.after.includes('loom-k3s-setup.service'));
  // The module's own definition (mkDefault) of weaver.kubeconfigPath:
  t.equal(r.config.services?.['loom-server']?.weaver?.kubeconfigPath, '/etc/rancher/k3s/k3s.yaml');
});

t.test('loom-server admin wrapper runs the admin command with the unit environment', async (t) => {
  const r = evalServer({ enable: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k' } });
  const w = r.config.environment!.systemPackages![1] as { name: string; text: string };
  t.equal(w.name, 'loom-server-admin');
  t.match(w.text, /--reuid='loom-server'/);
  t.match(w.text, /'LOOM_SERVER_WEAVER_BACKEND=kubernetes'/);
  t.match(w.text, /loom-server admin "\$@"/);
});

const K3S_BASE = { enable: true };

t.test('loom-k3s: defaults map onto services.k3s', async (t) => {
  const defaults = nixEval<Record<string, any>>(K3S_DEFAULTS_EXPR);
  t.match(defaults, { enable: false, role: 'server', clusterInit: false, token: null, tokenFile: null, serverAddr: '', disableTraefik: true, disableServiceLB: false, disableLocalStorage: false, bindAddress: '127.0.0.1', kubeconfigPath: '/etc/rancher/k3s/k3s.yaml', kubeconfigGroup: 'loom-k3s', namespace: 'loom-weavers', extraFlags: [], openFirewall: false, ghcrSecret: { enable: false, name: 'ghcr-secret', server: 'ghcr.io', username: '', tokenFile: null } });
  const r = evalK3s(K3S_BASE);
  t.same(r.config.services?.k3s, {
    enable: true,
    role: 'server',
    clusterInit: false,
    serverAddr: '',
    extraFlags: '--disable=traefik --bind-address=127.0.0.1 --write-kubeconfig=/etc/rancher/k3s/k3s.yaml --write-kubeconfig-mode=0640',
  });
  t.ok(r.config.assertions.every((a) => a.assertion));
  t.ok(r.config.users?.groups && 'loom-k3s' in r.config.users.groups, 'creates the kubeconfig group');
  t.same(r.config.warnings, []);
});

t.test('loom-k3s: setup unit waits for the API, grants the group, creates the namespace', async (t) => {
  const u = evalK3s(K3S_BASE).config.systemd.services['loom-k3s-setup']!;
  t.same(u.after, ['k3s.service']);
  t.match(u, { requires: ['k3s.service'], partOf: ['k3s.service'], wantedBy: ['k3s.service', 'multi-user.target'] });
  t.match(u.serviceConfig, { Type: 'oneshot', RemainAfterExit: true });
  t.notOk('LoadCredential' in u.serviceConfig);
  const s = u.script!;
  t.match(s, /export KUBECONFIG='\/etc\/rancher\/k3s\/k3s\.yaml'/);
  t.match(s, /kubectl get --raw=\/readyz/);
  t.match(s, /chgrp 'loom-k3s' "\$KUBECONFIG"/);
  t.match(s, /chmod 0640 "\$KUBECONFIG"/);
  t.match(s, /kubectl create namespace 'loom-weavers' --dry-run=client -o yaml \| kubectl apply -f -/);
  t.notMatch(s, /secret/);
});

t.test('loom-k3s: the pull secret reads the token at run time, never from the store', async (t) => {
  const token = 'ghp_NOT_IN_THE_STORE';
  const r = evalK3s({ ...K3S_BASE, ghcrSecret: { enable: true, username: "o'brien", tokenFile: '/run/secrets/github-token' } });
  const u = r.config.systemd.services['loom-k3s-setup']!;
  t.same(u.serviceConfig.LoadCredential, ['ghcr-token:/run/secrets/github-token']);
  const s = u.script!;
  t.match(s, /--rawfile token "\$CREDENTIALS_DIRECTORY\/ghcr-token"/);
  t.match(s, /--arg user 'o'\\''brien'/, 'shell-quoted');
  t.match(s, /kubectl create secret generic 'ghcr-secret'/);
  t.match(s, /--type=kubernetes\.io\/dockerconfigjson/);
  t.notMatch(s, /docker-password/, 'token never on a command line');
  t.notMatch(JSON.stringify(r), token);
});

t.test('loom-k3s: agent role and flags', async (t) => {
  const r = evalK3s({ enable: true, role: 'agent', serverAddr: 'https://10.0.0.1:6443', tokenFile: '/run/secrets/k3s-token', extraFlags: ['--node-label=loom=weaver'], openFirewall: true });
  t.same(r.config.services?.k3s, { enable: true, role: 'agent', clusterInit: false, serverAddr: 'https://10.0.0.1:6443', extraFlags: '--node-label=loom=weaver', tokenFile: '/run/secrets/k3s-token' });
  t.notOk(r.config.systemd?.services?.['loom-k3s-setup'], 'no setup unit on agents');
  t.same(r.config.networking?.firewall, { allowedTCPPorts: [10250], allowedUDPPorts: [8472] });
  const s = evalK3s({ enable: true, clusterInit: true, disableServiceLB: true, disableLocalStorage: true, bindAddress: null, openFirewall: true });
  t.equal(s.config.services?.k3s.extraFlags, '--disable=traefik --disable=servicelb --disable=local-storage --write-kubeconfig=/etc/rancher/k3s/k3s.yaml --write-kubeconfig-mode=0640');
  t.same(s.config.networking?.firewall, { allowedTCPPorts: [10250, 6443, 2379, 2380], allowedUDPPorts: [8472] });
});

t.test('loom-k3s assertions and warnings', async (t) => {
  const failing = (defs: unknown) => evalK3s(defs).config.assertions.filter((a) => !a.assertion).map((a) => a.message);
  t.match(failing({ enable: true, role: 'agent' }), [/needs serverAddr/, /needs tokenFile/]);
  t.match(failing({ enable: true, token: 'a', tokenFile: '/b' }), [/not both/]);
  t.match(failing({ enable: true, ghcrSecret: { enable: true } }), [/needs username and tokenFile/]);
  t.match(failing({ enable: true, ghcrSecret: { enable: false, tokenFile: 'relative' } }), [/absolute path/]);
  t.match(failing({ enable: true, extraFlags: ['--foo bar'] }), [/whitespace/]);
  t.match(evalK3s({ enable: true, token: 'secret' }).config.warnings, [/world-readable/]);
});

t.test('pure unit.nix rejects a state dir outside /var/lib', async (t) => {
  t.match(
    nixEvalError(`(import (REPO + "/nixos-modules/lib/unit.nix") { backend = "local"; listenAddress = "a:1"; dataDir = "d"; user = "u"; group = "g"; stateDir = "/opt/x"; execStart = "x"; }).serviceConfig.StateDirectory`),
    /stateDir must be under \/var\/lib/,
  );
});
