// flake.nix against a STAND-IN nixpkgs (tests/nix/fixtures/standin-nixpkgs): the real
// `nix flake check --no-build` of Debian's nix 2.8 (it checks every output's shape, e.g. that a
// NixOS module is a function or an attribute set, and instantiates every package and check), and
// the outputs evaluated with nix-instantiate: modules importable twice, the package's Node, its
// npm dependencies derived from a lockfile without `resolved`.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CANNOT_RUN_HERE, REPO, nixEval, nixProcessEnv, requireNix } from './nix.js';

t.comment(requireNix());
t.comment(CANNOT_RUN_HERE);

const FLAKE = `(let
  nixpkgs = (import (REPO + "/tests/nix/fixtures/standin-nixpkgs/flake.nix")).outputs { self = nixpkgs; };
  self = (import (REPO + "/flake.nix")).outputs { inherit self nixpkgs; };
in self)`;
const STANDIN_NIXOS = '(import (REPO + "/tests/nix/fixtures/standin-nixpkgs") { }).nixosSystem';

/** A copy of the repository's files (what git would give nix: tracked and new, not ignored). */
function repoCopy(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'loom-flake-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: REPO, encoding: 'utf8' })
    .split('\0')
    .filter((f) => f && !f.startsWith('node_modules/'));
  const src = join(dir, 'src');
  execFileSync('mkdir', ['-p', src]);
  execFileSync('tar', ['-cf', join(dir, 'src.tar'), '--null', '-T', '-'], { cwd: REPO, input: files.filter((f) => spawnSync('test', ['-e', join(REPO, f)]).status === 0).join('\0') });
  execFileSync('tar', ['-xf', join(dir, 'src.tar'), '-C', src]);
  return dir;
}

function flakeCheck(dir: string): { status: number | null; output: string } {
  const r = spawnSync('nix', [
    '--extra-experimental-features', 'nix-command flakes',
    '--store', join(dir, 'store'),
    'flake', 'check', '--no-build', '--no-write-lock-file',
    '--override-input', 'nixpkgs', `path:${join(dir, 'src', 'tests/nix/fixtures/standin-nixpkgs')}`,
    `path:${join(dir, 'src')}`,
  ], { env: nixProcessEnv(), encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

t.test('nix flake check (nix 2.8, --no-build) passes against the stand-in nixpkgs', async (t) => {
  const dir = repoCopy(t);
  const r = flakeCheck(dir);
  t.equal(r.status, 0, r.output);
  t.notMatch(r.output, /error:/);
});

t.test('nix flake check rejects a path-valued module (the check is real)', async (t) => {
  const dir = repoCopy(t);
  const flake = join(dir, 'src', 'flake.nix');
  const text = readFileSync(flake, 'utf8');
  const keyed = 'loom-k3s = module "loom-k3s" { imports = [ ./nixos-modules/loom-k3s.nix ]; };';
  t.ok(text.includes(keyed), 'the module is an attribute set');
  writeFileSync(flake, text.replace(keyed, 'loom-k3s = ./nixos-modules/loom-k3s.nix;'));
  const r = flakeCheck(dir);
  t.not(r.status, 0);
  t.match(r.output, /module must be a function or an attribute set/);
});

t.test('nixosModules: keyed attribute sets, importable together and twice', async (t) => {
  const mods = nixEval<Record<string, { type: string; key: string }>>(
    `builtins.mapAttrs (n: m: { type = builtins.typeOf m; key = m.key; }) ${FLAKE}.nixosModules`,
  );
  t.same(Object.keys(mods).sort(), ['default', 'loom-k3s', 'loom-server']);
  for (const [n, m] of Object.entries(mods)) {
    t.equal(m.type, 'set', `${n}: an attribute set, not a path`);
    t.equal(m.key, `loom#nixosModules.${n}`, `${n}: keyed`);
  }
  const r = nixEval<{ pkg: string; flakePkg: string; keys: string[]; failed: string[]; env: string }>(`let f = ${FLAKE}; h = ${STANDIN_NIXOS} { modules = [
      f.nixosModules.default f.nixosModules.loom-server f.nixosModules.loom-k3s f.nixosModules.default
      { services.loom-k3s.enable = true; services.loom-server = { enable = true; weaver.backend = "kubernetes"; }; } ]; };
    in { pkg = h.config.services.loom-server.package.outPath; flakePkg = f.packages.x86_64-linux.loom.outPath;
         keys = builtins.filter (k: builtins.substring 0 5 k == "loom#") h.keys; failed = h.failedAssertions;
         env = h.config.systemd.services.loom-server.environment.KUBECONFIG; }`);
  t.equal(r.pkg, r.flakePkg, "the package defaults to the flake's build");
  t.same(r.keys.sort(), ['loom#nixosModules.default', 'loom#nixosModules.loom-k3s', 'loom#nixosModules.loom-server', 'loom#nixosModules.loom-server/package'], 'each module once');
  t.same(r.failed, []);
  t.equal(r.env, '/var/lib/loom-k3s/loom-server.kubeconfig');
});

t.test("packages.loom: the npm hook and the wrappers use the package's Node", async (t) => {
  const r = nixEval<Record<string, string>>(`let l = ${FLAKE}.packages.x86_64-linux.loom; s = (import (REPO + "/tests/nix/fixtures/standin-nixpkgs") { }).pkgs; in {
    name = l.name; hook = l.npmConfigHook.nodejs.name; node = l.nodejs.name; topLevel = s.nodejs.name; nodedir = l.env.npm_config_nodedir; node20 = s.nodejs_20.outPath; }`);
  t.equal(r.name, 'loom-0.1.0');
  t.equal(r.topLevel, 'nodejs-22.11.0', "the stand-in's default Node is 22, as on a newer nixpkgs");
  t.equal(r.hook, 'nodejs-20.18.1', 'npmConfigHook overridden with nodejs_20');
  t.equal(r.node, 'nodejs-20.18.1');
  t.equal(r.nodedir, r.node20);
});

t.test('packages.loom: npm dependencies from the lockfile without `resolved`', async (t) => {
  const lock = JSON.parse(readFileSync(join(REPO, 'package-lock.json'), 'utf8')) as { packages: Record<string, { integrity?: string; version?: string; link?: boolean; inBundle?: boolean }> };
  const fetched = Object.entries(lock.packages).filter(([k, p]) => k !== '' && !p.link && !p.inBundle);
  const r = nixEval<{ tarballs: Record<string, { outputHash: string; outputHashMode: string; tarballPath: string; registry: string; name: string; impure: string[] }>; lock: string; pkg: string; overridden: string }>(`let
      l = ${FLAKE}.packages.x86_64-linux.loom; d = l.npmDeps;
    in {
      tarballs = builtins.mapAttrs (k: v: { inherit (v) outputHash outputHashMode tarballPath registry name; impure = v.impureEnvVars; }) d.tarballs;
      lock = d.packageLockJson; pkg = d.packageJson;
      overridden = (builtins.head (builtins.attrValues (l.override { npmRegistry = "https://npm-mirror.invalid/"; }).npmDeps.tarballs)).registry;
    }`);
  t.equal(Object.keys(r.tarballs).length, fetched.length, 'one fixed-output fetch per lockfile entry');
  for (const [key, p] of fetched) {
    const tb = r.tarballs[key]!;
    t.equal(tb.outputHash, p.integrity, `${key}: hash = integrity`);
    t.equal(tb.outputHashMode, 'flat');
    t.equal(tb.registry, '', `${key}: registry from the builder`);
  }
  t.match(r.tarballs['node_modules/string-width-cjs'], { tarballPath: 'string-width/-/string-width-4.2.3.tgz', name: 'string-width-4.2.3.tgz' }, 'an alias is fetched by its real name');
  const types = Object.entries(r.tarballs).find(([k]) => k === 'node_modules/@types/node')![1];
  t.match(types.tarballPath, /^@types\/node\/-\/node-[0-9.]+\.tgz$/, 'scoped: <scope>/<name>/-/<name>-<version>.tgz');
  t.ok(types.impure.includes('NPM_CONFIG_REGISTRY'), "the builder's npm configuration may name the registry");
  t.equal(r.overridden, 'https://npm-mirror.invalid/', 'npmRegistry overrides it');
  const lock2 = JSON.parse(r.lock) as typeof lock & { packages: Record<string, { resolved?: string }> };
  for (const [key] of fetched) t.match(lock2.packages[key]!.resolved, /^file:\/nix\/store\/[a-z0-9]{32}-/, `${key}: resolved to its store tarball`);
  const pkg2 = JSON.parse(r.pkg) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
  for (const spec of [...Object.values(pkg2.dependencies), ...Object.values(pkg2.devDependencies)]) t.match(spec, /^file:\/nix\/store\//);
});

t.test('checks: the module-eval check sees the namespaced account and a root-only admin kubeconfig', async (t) => {
  const r = nixEval<Record<string, string>>(`let c = ${FLAKE}.checks.x86_64-linux; m = c.module-eval; in {
    inherit (m) kubeconfig k8sUser localUser setupType k3sFlags optionsPresent; vm = c.vm-loom-server.drvPath; names = toString (builtins.attrNames c); }`);
  t.equal(r.kubeconfig, '/var/lib/loom-k3s/loom-server.kubeconfig');
  t.equal(r.k8sUser, 'loom-server');
  t.equal(r.localUser, 'root');
  t.equal(r.setupType, 'oneshot');
  t.match(r.k3sFlags, /--write-kubeconfig-mode=0600/);
  t.notOk(JSON.parse(r.optionsPresent!).includes(false), 'every table option exists on the host');
  t.match(r.vm, /^\/nix\/store\/[a-z0-9]{32}-vm-test-run-loom-server\.drv$/, 'the VM test machine evaluates');
  t.equal(r.names, 'audit-sidecar-image loom module-eval vm-loom-server weaver-image');
});

t.test("the README's complete host evaluates: loom-server reaches k3s through the namespaced account", async (t) => {
  const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
  const m = /```nix\n(# flake\.nix of the host\n[\s\S]*?)```/.exec(readme);
  t.ok(m, 'the example is in the README');
  const dir = mkdtempSync(join(tmpdir(), 'loom-host-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // The host's own hardware file is not ours: an empty module stands in for it.
  writeFileSync(join(dir, 'hardware-configuration.nix'), '{ }\n');
  writeFileSync(join(dir, 'flake.nix'), m![1]!);
  const r = nixEval<{ failed: string[]; kubeconfig: string; pullSecrets: string; groups: string[]; adminKubeconfigMode: string; setup: boolean }>(`let
      nixpkgs = (import (REPO + "/tests/nix/fixtures/standin-nixpkgs/flake.nix")).outputs { self = nixpkgs; };
      loom = ${FLAKE};
      host = ((import ${join(dir, 'flake.nix')}).outputs { inherit nixpkgs loom; }).nixosConfigurations.loom-host;
      c = host.config; u = c.systemd.services.loom-server;
    in builtins.seq host.toplevel {
      failed = host.failedAssertions;
      kubeconfig = u.environment.KUBECONFIG;
      pullSecrets = u.environment.LOOM_SERVER_WEAVER_IMAGE_PULL_SECRETS;
      groups = u.serviceConfig.SupplementaryGroups;
      adminKubeconfigMode = c.services.k3s.extraFlags;
      setup = c.systemd.services ? loom-k3s-setup;
    }`);
  t.same(r.failed, []);
  t.equal(r.kubeconfig, '/var/lib/loom-k3s/loom-server.kubeconfig');
  t.equal(r.pullSecrets, 'ghcr-secret');
  t.same(r.groups, ['loom-k3s']);
  t.match(r.adminKubeconfigMode, /--write-kubeconfig-mode=0600/);
  t.ok(r.setup);
});
