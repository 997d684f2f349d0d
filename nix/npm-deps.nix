# The npm dependencies of package-lock.json as Nix derivations, without `resolved` URLs in the
# lockfile and without any registry host in the repository:
#   - one fixed-output derivation per lockfile entry (./npm-lock.nix), hash = the entry's
#     `integrity`, fetched by ./fetch-npm-tarball.sh from <registry>/<name>/-/<base>-<version>.tgz;
#   - a directory with package.json and package-lock.json rewritten to point every dependency at
#     its tarball in the store (`file:/nix/store/…`), which is what importNpmLock's npmConfigHook
#     installs from (`npmDeps`), offline.
#
# The registry base comes from the builder, not from the repository:
#   npmRegistry = "https://…/"   (callPackage argument: `loom.override { npmRegistry = …; }`), or
#   NPM_CONFIG_REGISTRY in the environment of the Nix daemon (an impure variable of the
#   fixed-output builds), or else npm's built-in default registry (`npm config get registry`).
# The hashes pin the content, so the registry only decides where bytes come from.
{ lib
, stdenvNoCC
, runCommand
, nodejs
, curl
, cacert
, npmRegistry ? null
}:
{ package, packageLock }:
let
  inherit (import ./npm-lock.nix { inherit packageLock; }) entries;

  fetchTarball = e: stdenvNoCC.mkDerivation {
    name = e.storeName;
    outputHash = e.integrity;
    outputHashMode = "flat";
    nativeBuildInputs = [ nodejs curl ];
    SSL_CERT_FILE = "${cacert}/etc/ssl/certs/ca-bundle.crt";
    impureEnvVars = lib.fetchers.proxyImpureEnvVars ++ [ "NPM_CONFIG_REGISTRY" "npm_config_registry" ];
    registry = if npmRegistry == null then "" else npmRegistry;
    inherit (e) tarballPath;
    buildCommand = "${stdenvNoCC.shell} ${./fetch-npm-tarball.sh}";
    preferLocalBuild = true;
  };

  tarballs = builtins.listToAttrs (map (e: { name = e.key; value = fetchTarball e; }) entries);

  resolvedOf = key: "file:${tarballs.${key}}";

  lock' = packageLock // {
    packages = builtins.mapAttrs
      (key: p: if tarballs ? ${key} then p // { resolved = resolvedOf key; } else p)
      packageLock.packages;
  };

  # npm ci/install accepts a lock entry resolved to a file: URL only if package.json asks for
  # that same file, so the top-level specs point at the tarballs too.
  toFiles = builtins.mapAttrs (name: spec: resolvedOf "node_modules/${name}");
  package' = package
    // lib.optionalAttrs (package ? dependencies) { dependencies = toFiles package.dependencies; }
    // lib.optionalAttrs (package ? devDependencies) { devDependencies = toFiles package.devDependencies; };
in
runCommand "${package.name}-${package.version}-npm-deps"
{
  passAsFile = [ "packageJson" "packageLockJson" ];
  packageJson = builtins.toJSON package';
  packageLockJson = builtins.toJSON lock';
  passthru = { inherit tarballs entries; };
} ''
  mkdir $out
  cp "$packageJsonPath" $out/package.json
  cp "$packageLockJsonPath" $out/package-lock.json
''
