// The NixOS modules evaluated as a NixOS host with nix-instantiate, through the STAND-IN nixpkgs
// (tests/nix/fixtures/standin-nixpkgs): a port of nixpkgs' module system, so wrong values and
// duplicate definitions fail as they do in NixOS, and stub declarations of the NixOS options the
// modules set, with NixOS 24.11's types. Covers the generated option types and defaults, the
// unit's environment and sandbox by backend, loom-k3s' flags, setup unit, account and firewall.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { KubeConfig } from '@kubernetes/client-node';
import { VARIABLES, type VariableSpec } from '../../src/server/config/load.js';
import { CANNOT_RUN_HERE, STANDIN, nixEval, nixEvalError, nixJson, requireNix } from './nix.js';

t.comment(requireNix());
t.comment(CANNOT_RUN_HERE);

const SERVER = '(REPO + "/nixos-modules/loom-server.nix")';
const K3S = '(REPO + "/nixos-modules/loom-k3s.nix")';

interface Unit {
  environment: Record<string, string>;
  path: string[];
  after: string[];
  wants: string[];
  requires: string[];
  partOf: string[];
  wantedBy: string[];
  script: string;
  restartTriggers: string[];
  serviceConfig: Record<string, any>;
}
interface Host {
  failedAssertions: string[];
  warnings: string[];
  users: { users: Record<string, any>; groups: Record<string, any> };
  services: Record<string, Unit>;
  firewall: { allowedTCPPorts: number[]; allowedUDPPorts: number[]; extraInputRules: string; extraCommands: string; extraStopCommands: string };
  k3s: Record<string, any> | null;
  loomServer: Record<string, any> | null;
  loomK3s: Record<string, any> | null;
  systemPackages: string[];
  adminWrapper: string | null;
}

/** A host importing `modules` (Nix expressions) plus settings given as JSON modules. */
const host = (modules: string[], ...settings: unknown[]): Host =>
  nixEval(`import (REPO + "/tests/nix/fixtures/host.nix") { modules = [ ${[...modules, ...settings.map(nixJson)].join(' ')} ]; }`);
const hostError = (modules: string[], ...settings: unknown[]): string =>
  nixEvalError(`import (REPO + "/tests/nix/fixtures/host.nix") { modules = [ ${[...modules, ...settings.map(nixJson)].join(' ')} ]; }`);

const server = (cfg: unknown, ...more: unknown[]) => host([SERVER], { services: { 'loom-server': cfg } }, ...more);
const k3s = (cfg: unknown, ...more: unknown[]) => host([K3S], { services: { 'loom-k3s': cfg } }, ...more);
const both = (k: unknown, s: unknown) => host([K3S, SERVER], { services: { 'loom-k3s': k, 'loom-server': s } });

function expectedDescription(v: VariableSpec): string {
  const optional = (v.type === 'string' || v.type === 'path') && v.default === '';
  let base: string;
  switch (v.type) {
    case 'bool': base = 'boolean'; break;
    case 'int': base = `integer between ${v.min} and ${v.max} (both inclusive)`; break;
    case 'number': base = `integer or floating point number between ${v.min} and ${v.max} (both inclusive)`; break;
    case 'enum': base = `one of ${v.values!.map((x) => JSON.stringify(x)).join(', ')}`; break;
    case 'list': base = 'list of string'; break;
    case 'string': base = v.pattern ? `string matching the pattern ${v.pattern}` : 'string'; break;
    default: base = 'string';
  }
  return optional ? `null or ${base}` : base;
}

t.test('options generated from the table: one per entry, type and default from the entry', async (t) => {
  const opts = nixEval<Record<string, any>>(`let s = ${STANDIN}; o = import (REPO + "/nixos-modules/lib/options.nix") { inherit (s) lib; };
    strip = x: if x._type or "" == "option" then { _type = "option"; default = x.default; description = x.description; type = x.type.description; } else builtins.mapAttrs (n: strip) x; in strip o`);
  const mapped = VARIABLES.filter((v) => v.option !== null);
  const collect = (o: any, prefix: string[] = []): string[] =>
    o._type === 'option' ? [prefix.join('.')] : Object.entries(o).flatMap(([k, v]) => collect(v, [...prefix, k]));
  t.same(collect(opts).sort(), mapped.map((v) => v.option).sort(), 'exactly the table paths');
  for (const v of mapped) {
    const o = v.option!.split('.').reduce((a: any, k) => a[k], opts);
    const optional = (v.type === 'string' || v.type === 'path') && v.default === '';
    t.equal(o.type, expectedDescription(v), `${v.option}: type`);
    t.same(o.default, optional ? null : v.default, `${v.option}: default`);
    t.match(o.description, v.name, `${v.option}: description names ${v.name}`);
  }
});

t.test('the module system rejects wrong values of generated options, naming the option', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ sessionIdleDays: 0 }, /option `services\.loom-server\.sessionIdleDays' is not of type `integer between 1 and 365/],
    [{ weaver: { maxConcurrent: 1.5 } }, /`services\.loom-server\.weaver\.maxConcurrent' is not of type `integer between/],
    [{ weaver: { backend: 'docker' } }, /`services\.loom-server\.weaver\.backend' is not of type `one of "local", "kubernetes"'/],
    [{ weaver: { enable: 'yes' } }, /`services\.loom-server\.weaver\.enable' is not of type `boolean'/],
    [{ weaver: { namespace: 'Bad_NS' } }, /`services\.loom-server\.weaver\.namespace' is not of type `string matching the pattern/],
    [{ weaver: { imagePullSecrets: 'a,b' } }, /`services\.loom-server\.weaver\.imagePullSecrets' is not of type `list of string'/],
    [{ weaver: { imagePullSecrets: [1] } }, /not of type `string'/],
    [{ publicUrl: 42 }, /`services\.loom-server\.publicUrl' is not of type `null or string'/],
    [{ openFirewall: 'true' }, /`services\.loom-server\.openFirewall' is not of type `boolean'/],
    [{ nope: 1 }, /The option `services\.loom-server\.nope' does not exist/],
  ];
  for (const [cfg, re] of cases) {
    t.match(hostError([SERVER], { services: { 'loom-server': { enable: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k' }, ...(cfg as object), ...('weaver' in (cfg as object) ? { weaver: { backend: 'kubernetes', kubeconfigPath: '/k', ...(cfg as any).weaver } } : {}) } } }), re, JSON.stringify(cfg));
  }
  t.match(hostError([K3S], { services: { 'loom-k3s': { enable: true, role: 'worker' } } }), /`services\.loom-k3s\.role' is not of type `one of "server", "agent"'/);
  t.match(hostError([K3S], { services: { 'loom-k3s': { enable: true, serverServiceAccount: 'Loom Server' } } }), /`services\.loom-k3s\.serverServiceAccount' is not of type/);
});

t.test('duplicate definitions fail as in NixOS; priorities decide', async (t) => {
  const two = (a: string, b: string) =>
    `import (REPO + "/tests/nix/fixtures/host.nix") { modules = [ ${SERVER} { services.loom-server = { enable = true; weaver.backend = "kubernetes"; weaver.kubeconfigPath = "/k"; }; } ({ lib, ... }: { services.loom-server.logLevel = ${a}; }) ({ lib, ... }: { services.loom-server.logLevel = ${b}; }) ]; }`;
  t.match(nixEvalError(two('"debug"', '"warn"')), /The option `services\.loom-server\.logLevel' has conflicting definition values/);
  t.equal(nixEval<Host>(two('"debug"', '"debug"')).loomServer!.logLevel, 'debug', 'equal definitions merge');
  t.equal(nixEval<Host>(two('lib.mkDefault "debug"', '"warn"')).loomServer!.logLevel, 'warn', 'a plain definition beats mkDefault');
  t.equal(nixEval<Host>(two('lib.mkForce "error"', '"warn"')).loomServer!.logLevel, 'error', 'mkForce beats a plain definition');
  t.match(nixEvalError(two('lib.mkForce "error"', 'lib.mkForce "warn"')), /conflicting definition values/, 'two mkForce conflict');
  t.match(
    nixEvalError(`import (REPO + "/tests/nix/fixtures/host.nix") { modules = [ ${SERVER} ({ pkgs, lib, ... }: { services.loom-server.package = lib.mkDefault pkgs.git; }) ({ pkgs, lib, ... }: { services.loom-server.package = lib.mkDefault pkgs.git; }) ]; }`),
    /The option `services\.loom-server\.package' is defined multiple times while it's expected to be unique/,
    'package is unique: two anonymous mkDefault wrappers fail (the defect of the old flake wrapper)',
  );
  t.match(
    nixEvalError(`import (REPO + "/tests/nix/fixtures/host.nix") { modules = [ ${SERVER} ${SERVER} ({ lib, ... }: { options.services.loom-server.enable = lib.mkEnableOption "again"; }) ]; }`),
    /The option `services\.loom-server\.enable' in `.*' is already declared/,
    'the same path imported twice is one module; a second declaration of an option is an error',
  );
});

t.test('loom-server module: the unit environment is the env.nix mapping of the settings', async (t) => {
  const cfg = { enable: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k', imagePullSecrets: ['ghcr-secret'] }, environment: { LOOM_LOG_LEVEL: 'debug', EXTRA: 'x' } };
  const r = server(cfg);
  const expected = nixEval<Record<string, string>>(`(import (REPO + "/nixos-modules/lib/env.nix") { }).toEnv ${nixJson({ weaver: cfg.weaver })}`);
  t.same(r.services['loom-server']!.environment, { ...expected, LOOM_LOG_LEVEL: 'debug', EXTRA: 'x' });
  t.same(r.failedAssertions, [], 'assertions hold');
  t.match(r.users.users['loom-server'], { isSystemUser: true, group: 'loom-server', home: '/var/lib/loom-server', description: 'Loom server', extraGroups: [] });
  t.ok('loom-server' in r.users.groups, 'dedicated group');
  t.equal(r.loomServer!.package, 'loom-0.1.0', 'the module builds ./nix/loom.nix by default');
});

t.test('loom-server module: disabled means no unit, user or package', async (t) => {
  const r = server({});
  t.same(Object.keys(r.services), []);
  t.same(r.users.users, {});
  t.same(r.systemPackages, []);
});

t.test('loom-server unit: kubernetes backend is unprivileged', async (t) => {
  const u = server({ enable: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k' } }).services['loom-server']!;
  const sc = u.serviceConfig;
  t.equal(sc.User, 'loom-server');
  t.equal(sc.CapabilityBoundingSet, '');
  t.notOk('AmbientCapabilities' in sc);
  t.equal(sc.ProtectSystem, 'strict');
  for (const k of ['NoNewPrivileges', 'ProtectHome', 'PrivateTmp', 'PrivateDevices', 'ProtectControlGroups', 'RestrictNamespaces', 'ProtectKernelModules', 'ProtectKernelLogs', 'ProtectClock']) t.equal(sc[k], true, k);
  t.equal(sc.Restart, 'on-failure');
  t.equal(sc.StateDirectory, 'loom-server');
  t.equal(sc.WorkingDirectory, '/var/lib/loom-server');
  t.equal(sc.StandardOutput, 'journal');
  t.match(sc.ExecStart, /^\/nix\/store\/[a-z0-9]{32}-loom-0\.1\.0\/bin\/loom-server$/);
  t.notOk('KillMode' in sc, 'default KillMode: no containers to keep');
  t.notOk('Delegate' in sc, 'no cgroups to manage');
  t.notOk('MemoryDenyWriteExecute' in sc, 'V8 JIT needs W+X');
  t.same(u.path, ['git']);
});

t.test('loom-server unit: local backend runs as root with the bounded capability set, delegates cgroups, keeps conmon on restart', async (t) => {
  const u = server({ enable: true }).services['loom-server']!;
  const sc = u.serviceConfig;
  t.equal(sc.User, 'root');
  t.equal(sc.KillMode, 'process');
  t.equal(sc.Delegate, true, 'Delegate=yes: runc manages cgroups');
  t.equal(sc.ProtectKernelModules, true);
  t.equal(sc.ProtectKernelLogs, true);
  t.notOk('ProtectClock' in sc, 'ProtectClock closes the device policy (DeviceAllow=char-rtc): loop and tun devices would be refused');
  t.equal(sc.ProtectSystem, 'full');
  for (const k of ['NoNewPrivileges', 'ProtectHome', 'PrivateTmp']) t.equal(sc[k], true, k);
  for (const k of ['ProtectControlGroups', 'PrivateDevices', 'RestrictNamespaces', 'SystemCallFilter', 'DeviceAllow']) t.notOk(k in sc, `no ${k}`);
  const caps = sc.CapabilityBoundingSet as string[];
  for (const c of ['CAP_SYS_ADMIN', 'CAP_NET_ADMIN', 'CAP_SYS_CHROOT', 'CAP_SETUID', 'CAP_SETGID', 'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_KILL', 'CAP_SYS_PTRACE', 'CAP_SYS_RESOURCE', 'CAP_AUDIT_WRITE', 'CAP_SETPCAP', 'CAP_SETFCAP', 'CAP_FSETID']) {
    t.ok(caps.includes(c), c);
  }
  for (const c of ['CAP_SYS_MODULE', 'CAP_SYS_TIME', 'CAP_SYS_BOOT', 'CAP_SYS_RAWIO']) t.notOk(caps.includes(c), `not ${c}`);
  t.same(u.path, ['runc', 'crun', 'conmon', 'skopeo', 'umoci', 'git', 'btrfs-progs', 'xfsprogs', 'util-linux', 'slirp4netns', 'busybox-static-bin', 'wireguard-go', 'wireguard-tools', 'iproute2']);
});

t.test('loom-server unit: low port, data dir outside the state dir, environmentFile, firewall', async (t) => {
  const r = server({ enable: true, listenAddress: '0.0.0.0:443', dataDir: '/srv/loom', environmentFile: '/run/secrets/loom.env', openFirewall: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k' } });
  const s = r.services['loom-server']!.serviceConfig;
  t.same(s.CapabilityBoundingSet, ['CAP_NET_BIND_SERVICE']);
  t.same(s.AmbientCapabilities, ['CAP_NET_BIND_SERVICE']);
  t.same(s.ReadWritePaths, ['/srv/loom']);
  t.equal(s.EnvironmentFile, '/run/secrets/loom.env');
  t.same(r.firewall.allowedTCPPorts, [443]);
  t.same(r.firewall.allowedUDPPorts, [], 'no UDP port while the tunnel gateway is off');
  const g = server({ enable: true, openFirewall: true, tunnel: { udpAddress: '0.0.0.0:51820' } });
  t.same(g.firewall.allowedUDPPorts, [51820], 'the WireGuard gateway port');
  t.equal(g.services['loom-server']!.environment.LOOM_TUNNEL_UDP_ADDR, '0.0.0.0:51820');
});

t.test('loom-server assertions', async (t) => {
  t.match(server({ enable: true, weaver: { backend: 'kubernetes', kubeconfigPath: '/k', audit: { enable: true } } }).failedAssertions, [/audit\.image must be set/]);
  // the local backend runs the package's own loom-audit-sidecar: no image needed
  t.same(server({ enable: true, weaver: { audit: { enable: true } } }).failedAssertions, []);
  t.match(server({ enable: true, weaver: { defaultTtlHours: 50 } }).failedAssertions, [/defaultTtlHours must not exceed maxTtlHours/]);
  t.match(server({ enable: true, weaver: { backend: 'kubernetes' } }).failedAssertions, [/needs weaver\.kubeconfigPath/]);
});

t.test('loom-server with loom-k3s on the host: the namespaced account, group, ordering, pull secret', async (t) => {
  const r = both({ enable: true, ghcrSecret: { enable: true, username: 'u', tokenFile: '/run/secrets/t' } }, { enable: true, weaver: { backend: 'kubernetes' } });
  t.same(r.failedAssertions, []);
  const u = r.services['loom-server']!;
  t.same(u.serviceConfig.SupplementaryGroups, ['loom-k3s']);
  t.ok(u.after.includes('loom-k3s-setup.service'));
  t.equal(r.loomServer!.weaver.kubeconfigPath, '/var/lib/loom-k3s/loom-server.kubeconfig', 'the namespaced account, not k3s.yaml');
  t.equal(u.environment.KUBECONFIG, '/var/lib/loom-k3s/loom-server.kubeconfig');
  t.same(r.loomServer!.weaver.imagePullSecrets, ['ghcr-secret'], 'ghcrSecret is a default pull secret');
  t.equal(u.environment.LOOM_SERVER_WEAVER_IMAGE_PULL_SECRETS, 'ghcr-secret');
  t.same(r.users.users['loom-server'].extraGroups, ['loom-k3s'], 'loom-server-admin (setpriv --init-groups) gets the group too');
  // A value set by the host wins over the defaults.
  const own = both({ enable: true, ghcrSecret: { enable: true, username: 'u', tokenFile: '/t' } }, { enable: true, weaver: { backend: 'kubernetes', imagePullSecrets: ['mine'], kubeconfigPath: '/etc/k' } });
  t.same(own.loomServer!.weaver.imagePullSecrets, ['mine']);
  t.equal(own.loomServer!.weaver.kubeconfigPath, '/etc/k');
  const noSecret = both({ enable: true }, { enable: true, weaver: { backend: 'kubernetes' } });
  t.same(noSecret.loomServer!.weaver.imagePullSecrets, []);
});

t.test('loom-server-admin: the unit user, environment and environment file', async (t) => {
  const r = both({ enable: true }, { enable: true, environmentFile: '/run/secrets/loom.env', weaver: { backend: 'kubernetes' } });
  const w = r.adminWrapper!;
  t.match(w, /^unit_user='loom-server'$/m);
  t.match(w, /^unit_group='loom-server'$/m);
  t.match(w, /^unit_dir='\/var\/lib\/loom-server'$/m);
  t.match(w, /^env_file='\/run\/secrets\/loom\.env'$/m);
  t.match(w, /'LOOM_SERVER_WEAVER_BACKEND=kubernetes'/);
  t.match(w, /'KUBECONFIG=\/var\/lib\/loom-k3s\/loom-server\.kubeconfig'/);
  t.match(w, /^source \/nix\/store\/[a-z0-9]{32}-admin-wrapper\.sh$/m, 'the tested script');
  t.match(w, /loom_server='\/nix\/store\/[a-z0-9]{32}-loom-0\.1\.0\/bin\/loom-server'/);
  const local = server({ enable: true }).adminWrapper!;
  t.match(local, /^unit_user='root'$/m);
  t.match(local, /^env_file=''$/m);
});

t.test('loom-k3s: defaults map onto services.k3s', async (t) => {
  const r = k3s({ enable: true });
  t.match(r.loomK3s, { enable: true, role: 'server', clusterInit: false, token: null, tokenFile: null, serverAddr: '', disableTraefik: true, disableServiceLB: false, disableLocalStorage: false, bindAddress: '127.0.0.1', kubeconfigPath: '/etc/rancher/k3s/k3s.yaml', kubeconfigGroup: 'loom-k3s', serverServiceAccount: 'loom-server', serverKubeconfigPath: '/var/lib/loom-k3s/loom-server.kubeconfig', namespace: 'loom-weavers', extraFlags: [], openFirewall: false, nodeNetwork: [], ghcrSecret: { enable: false, name: 'ghcr-secret', server: 'ghcr.io', username: '', tokenFile: null } });
  t.match(r.k3s, {
    enable: true,
    role: 'server',
    clusterInit: false,
    serverAddr: '',
    token: '',
    tokenFile: null,
    extraFlags: '--disable=traefik --bind-address=127.0.0.1 --write-kubeconfig=/etc/rancher/k3s/k3s.yaml --write-kubeconfig-mode=0600',
  });
  t.same(r.failedAssertions, []);
  t.ok('loom-k3s' in r.users.groups, 'creates the kubeconfig group');
  t.same(r.warnings, []);
  t.same(r.firewall.allowedTCPPorts, []);
  t.equal(r.firewall.extraCommands, '');
});

t.test('loom-k3s: setup unit keeps the admin kubeconfig root-only and writes the account kubeconfig', async (t) => {
  const u = k3s({ enable: true }).services['loom-k3s-setup']!;
  t.same(u.after, ['k3s.service']);
  t.match(u, { requires: ['k3s.service'], partOf: ['k3s.service'], wantedBy: ['k3s.service', 'multi-user.target'] });
  t.match(u.serviceConfig, { Type: 'oneshot', RemainAfterExit: true });
  t.notOk('LoadCredential' in u.serviceConfig);
  const s = u.script;
  t.match(s, /export KUBECONFIG='\/etc\/rancher\/k3s\/k3s\.yaml'/);
  t.match(s, /kubectl get --raw=\/readyz/);
  t.match(s, /chown root:root "\$KUBECONFIG"\nchmod 0600 "\$KUBECONFIG"/);
  t.notMatch(s, /chgrp/, 'the admin kubeconfig is never given to a group');
  t.match(s, /kubectl create namespace 'loom-weavers' --dry-run=client -o yaml \| kubectl apply -f -/);
  t.match(s, /kubectl apply -f \/nix\/store\/[a-z0-9]{32}-loom-k3s-rbac\.json/);
  t.match(s, /kubectl get secret 'loom-server-token' --namespace 'loom-weavers' -o json/);
  t.match(s, /target='\/var\/lib\/loom-k3s\/loom-server\.kubeconfig'/);
  t.match(s, /\.data\.token \| @base64d/, 'the token is decoded by jq from a pipe');
  t.notMatch(s, /--arg token/, 'the token is never on a command line');
  t.match(s, /chown root:'loom-k3s' "\$tmp"\nchmod 0640 "\$tmp"\nmv -f "\$tmp" "\$target"/);
  t.notMatch(s, /secret generic/, 'no pull secret unless asked');
  // The RBAC manifest is a restart trigger: a changed Role re-runs the setup.
  t.equal(u.restartTriggers.length, 1);
  const list = JSON.parse(u.restartTriggers[0]!);
  t.equal(list.kind, 'List');
  t.same(list.items.map((i: any) => i.kind), ['ServiceAccount', 'Role', 'RoleBinding', 'ClusterRole', 'ClusterRoleBinding', 'Secret']);
});

t.test("loom-k3s-setup's jq program turns the account's token Secret into its kubeconfig", async (t) => {
  const script = k3s({ enable: true }).services['loom-k3s-setup']!.script;
  const m = /printf '%s' "\$secret" \| (jq [^\n]*?) '\n([\s\S]*?)' > "\$tmp"/.exec(script);
  t.ok(m, 'the jq step is there');
  const program = m![2]!;
  const secret = { kind: 'Secret', data: { token: Buffer.from('tok.en-123').toString('base64'), 'ca.crt': 'Q0FEQVRB' } };
  const r = spawnSync('jq', ['--arg', 'server', 'https://127.0.0.1:6443', '--arg', 'ns', 'loom-weavers', '--arg', 'user', 'loom-server', program], { input: JSON.stringify(secret), encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.same(JSON.parse(r.stdout), {
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'k3s', cluster: { server: 'https://127.0.0.1:6443', 'certificate-authority-data': 'Q0FEQVRB' } }],
    users: [{ name: 'loom-server', user: { token: 'tok.en-123' } }],
    contexts: [{ name: 'loom', context: { cluster: 'k3s', user: 'loom-server', namespace: 'loom-weavers' } }],
    'current-context': 'loom',
  });
  // What loom-server's client library makes of it.
  const kc = new KubeConfig();
  kc.loadFromString(r.stdout);
  t.equal(kc.getCurrentCluster()?.server, 'https://127.0.0.1:6443');
  t.equal(kc.getCurrentUser()?.token, 'tok.en-123');
  t.equal(kc.getContextObject(kc.getCurrentContext())?.namespace, 'loom-weavers');
});

t.test('the generated shell scripts parse (bash -n)', async (t) => {
  const withSecret = k3s({ enable: true, ghcrSecret: { enable: true, username: 'u', tokenFile: '/run/t' } });
  const scripts: Array<[string, string]> = [
    ['loom-k3s-setup', k3s({ enable: true }).services['loom-k3s-setup']!.script],
    ['loom-k3s-setup with ghcrSecret', withSecret.services['loom-k3s-setup']!.script],
    ['loom-server-admin', both({ enable: true }, { enable: true, environmentFile: '/e', weaver: { backend: 'kubernetes' } }).adminWrapper!],
  ];
  for (const [name, text] of scripts) {
    const r = spawnSync('bash', ['-n'], { input: text, encoding: 'utf8' });
    t.equal(r.status, 0, `${name}: ${r.stderr}`);
  }
  t.not(spawnSync('bash', ['-n'], { input: 'if then', encoding: 'utf8' }).status, 0, 'bash -n does refuse bad syntax');
});

t.test('loom-k3s: the pull secret reads the token at run time, never from the store', async (t) => {
  const token = 'ghp_NOT_IN_THE_STORE';
  const r = k3s({ enable: true, ghcrSecret: { enable: true, username: "o'brien", tokenFile: '/run/secrets/github-token' } });
  const u = r.services['loom-k3s-setup']!;
  t.same(u.serviceConfig.LoadCredential, ['ghcr-token:/run/secrets/github-token']);
  const s = u.script;
  t.match(s, /--rawfile token "\$CREDENTIALS_DIRECTORY\/ghcr-token"/);
  t.match(s, /--arg user 'o'\\''brien'/, 'shell-quoted');
  t.match(s, /kubectl create secret generic 'ghcr-secret'/);
  t.match(s, /--type=kubernetes\.io\/dockerconfigjson/);
  t.notMatch(s, /docker-password/, 'token never on a command line');
  t.notMatch(JSON.stringify(r), token);
});

t.test('loom-k3s: agent role and flags; the firewall admits only the node network', async (t) => {
  const r = k3s({ enable: true, role: 'agent', serverAddr: 'https://10.0.0.1:6443', tokenFile: '/run/secrets/k3s-token', extraFlags: ['--node-label=loom=weaver'], openFirewall: true, nodeNetwork: ['10.0.0.0/24', 'fd00:1::/64'] });
  t.same(r.failedAssertions, []);
  t.match(r.k3s, { enable: true, role: 'agent', clusterInit: false, serverAddr: 'https://10.0.0.1:6443', extraFlags: '--node-label=loom=weaver', tokenFile: '/run/secrets/k3s-token' });
  t.notOk(r.services['loom-k3s-setup'], 'no setup unit on agents');
  t.same(r.firewall.allowedTCPPorts, [], 'nothing open to every source');
  t.same(r.firewall.allowedUDPPorts, []);
  t.equal(r.firewall.extraCommands, [
    'iptables -w -A nixos-fw -s 10.0.0.0/24 -p tcp --dport 10250 -j nixos-fw-accept',
    'iptables -w -A nixos-fw -s 10.0.0.0/24 -p udp --dport 8472 -j nixos-fw-accept',
    'ip6tables -w -A nixos-fw -s fd00:1::/64 -p tcp --dport 10250 -j nixos-fw-accept',
    'ip6tables -w -A nixos-fw -s fd00:1::/64 -p udp --dport 8472 -j nixos-fw-accept',
  ].join('\n'));
  t.match(r.firewall.extraStopCommands, /^iptables -w -D nixos-fw -s 10\.0\.0\.0\/24 -p tcp --dport 10250 -j nixos-fw-accept 2>\/dev\/null \|\| true$/m);

  const s = k3s({ enable: true, clusterInit: true, disableServiceLB: true, disableLocalStorage: true, bindAddress: null, openFirewall: true, nodeNetwork: ['192.168.1.0/24'] }, { networking: { nftables: { enable: true } } });
  t.same(s.failedAssertions, []);
  t.equal(s.k3s!.extraFlags, '--disable=traefik --disable=servicelb --disable=local-storage --write-kubeconfig=/etc/rancher/k3s/k3s.yaml --write-kubeconfig-mode=0600');
  t.equal(s.firewall.extraInputRules, 'ip saddr { 192.168.1.0/24 } tcp dport { 10250, 6443, 2379, 2380 } accept\nip saddr { 192.168.1.0/24 } udp dport { 8472 } accept');
  t.equal(s.firewall.extraCommands, '', 'nftables: no iptables commands');
});

t.test('loom-k3s assertions and warnings', async (t) => {
  const failing = (cfg: unknown) => k3s(cfg).failedAssertions;
  t.match(failing({ enable: true, role: 'agent' }), [/needs serverAddr/, /needs tokenFile/]);
  t.match(failing({ enable: true, token: 'a', tokenFile: '/b' }), [/not both/]);
  t.match(failing({ enable: true, ghcrSecret: { enable: true } }), [/needs username and tokenFile/]);
  t.match(failing({ enable: true, ghcrSecret: { enable: false, tokenFile: 'relative' } }), [/absolute path/]);
  t.match(failing({ enable: true, extraFlags: ['--foo bar'] }), [/whitespace/]);
  t.match(failing({ enable: true, clusterInit: true }), [/clusterInit starts an HA cluster .* bindAddress = 127\.0\.0\.1 keeps the API on loopback/]);
  t.match(failing({ enable: true, openFirewall: true, bindAddress: '10.0.0.1' }), [/only to nodeNetwork/]);
  t.match(failing({ enable: true, openFirewall: true, nodeNetwork: ['10.0.0.0/8'] }), [/bindAddress = 127\.0\.0\.1 keeps the API on loopback/]);
  t.match(failing({ enable: true, nodeNetwork: ['everyone'] }), [/must be a CIDR/]);
  t.match(failing({ enable: true, serverKubeconfigPath: 'rel/k' }), [/serverKubeconfigPath must be an absolute path/]);
  t.match(k3s({ enable: true, token: 'secret' }).warnings, [/world-readable/]);
});

t.test('pure unit.nix rejects a state dir outside /var/lib', async (t) => {
  t.match(
    nixEvalError(`(import (REPO + "/nixos-modules/lib/unit.nix") { backend = "local"; listenAddress = "a:1"; dataDir = "d"; user = "u"; group = "g"; stateDir = "/opt/x"; execStart = "x"; }).serviceConfig.StateDirectory`),
    /stateDir must be under \/var\/lib/,
  );
});
