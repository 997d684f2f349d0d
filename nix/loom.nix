# The loom npm package: TypeScript compiled to dist/, the native addons (better-sqlite3, argon2
# and loom's own native/ addons, the libbpf audit addon with its BPF programs from ebpf/)
# compiled from source, bins `loom`, `loom-server` and `loom-audit-sidecar`.
#
# Dependencies come from package-lock.json through ./npm-deps.nix: one fixed-output fetch per entry,
# hashed by the entry's `integrity`, located from name and version (the lockfile has no
# `resolved`); so there is no npmDepsHash to keep up to date by hand and no registry host in the
# repository. `npmRegistry` (null: the builder's npm configuration, else npm's default) says
# where the tarballs are fetched from: `loom.override { npmRegistry = "https://…/"; }`.
{ lib
, callPackage
, buildNpmPackage
, importNpmLock
, nodejs_20
, python3
, pkg-config
, makeWrapper
, npmRegistry ? null
, llvmPackages
, bpftools
, libbpf
, elfutils
, zlib
, openssl
, lwip
, linuxPackages_latest
}:
let
  root = ../.;
  package = lib.importJSON (root + "/package.json");

  # Only what the build reads: a change to docs, tests or Nix files does not rebuild the package.
  src = lib.cleanSourceWith {
    name = "loom-source";
    src = root;
    filter = path: type:
      let rel = lib.removePrefix (toString root + "/") (toString path); in
      builtins.elem rel [ "package.json" "package-lock.json" ".npmrc" "tsconfig.json" "src" "native" "ebpf" "web" ]
      || (lib.hasPrefix "src/" rel)
      # the web console, bundled by `npm run build` (web/build.mjs) into dist/web
      || (lib.hasPrefix "web/" rel)
      || (lib.hasPrefix "ebpf/" rel && !(lib.hasPrefix "ebpf/build" rel))
      || (lib.hasPrefix "native/" rel && !(lib.hasPrefix "native/build" rel));
  };
in
buildNpmPackage {
  pname = "loom";
  inherit (package) version;
  inherit src;
  nodejs = nodejs_20;

  npmDeps = callPackage ./npm-deps.nix { nodejs = nodejs_20; inherit npmRegistry; } {
    inherit package;
    packageLock = lib.importJSON (root + "/package-lock.json");
  };
  # importNpmLock's hook installs node_modules from npmDeps and runs `npm rebuild` with the
  # headers of the Node it was built with: the top-level nodejs unless overridden. Build it with
  # the Node the wrappers run, so the addons' ABI matches.
  npmConfigHook = importNpmLock.npmConfigHook.override { nodejs = nodejs_20; };

  # node-gyp: python3, make and a C++ compiler (stdenv); headers from nodejs, never downloaded.
  # ebpf/: the unwrapped clang (the wrapper's hardening flags do not apply to -target bpf),
  # bpftool for vmlinux.h and the skeletons, libbpf/libelf/zlib for the addon.
  nativeBuildInputs = [ python3 pkg-config makeWrapper llvmPackages.clang-unwrapped llvmPackages.llvm bpftools ];
  # openssl: the WireGuard addon's headers where Node is built with a shared OpenSSL (as nixpkgs
  # builds it); lwip: the rootless client's userspace TCP/IP stack (the loom_usernet addon).
  buildInputs = [ libbpf elfutils zlib openssl lwip ];
  env = {
    npm_config_build_from_source = "true";
    npm_config_nodedir = "${nodejs_20}";
    # The sandbox has no /sys/kernel/btf: vmlinux.h comes from a kernel build's BTF (CO-RE
    # relocates the programs to the running kernel at load).
    BTF = "${linuxPackages_latest.kernel.dev}/vmlinux";
  };

  # The config hook installs node_modules with scripts disabled; compile the dependencies' addons
  # from source, then loom's own addon (the package's `install` script), then `npm run build`.
  preBuild = ''
    npm rebuild better-sqlite3 argon2 --build-from-source
    node node_modules/node-gyp/bin/node-gyp.js rebuild --directory native --nodedir=${nodejs_20}
  '';
  npmBuildScript = "build";

  # package.json has no `files` list and .gitignore names dist/ and native/build/, so `npm pack`
  # (what the default install hook uses) would leave out exactly what we built: install by hand.
  dontNpmInstall = true;
  installPhase = ''
    runHook preInstall
    npm prune --omit=dev --offline --no-audit --no-fund
    dest=$out/lib/node_modules/loom
    mkdir -p $dest/native/build $out/bin
    cp -r package.json dist node_modules $dest/
    cp -r native/build/Release $dest/native/build/
    makeWrapper ${nodejs_20}/bin/node $out/bin/loom --add-flags $dest/dist/cli/main.js
    makeWrapper ${nodejs_20}/bin/node $out/bin/loom-server --add-flags $dest/dist/server/main.js
    makeWrapper ${nodejs_20}/bin/node $out/bin/loom-audit-sidecar --add-flags $dest/dist/audit/sidecar/main.js
    runHook postInstall
  '';

  doInstallCheck = true;
  installCheckPhase = ''
    runHook preInstallCheck
    $out/bin/loom --help >/dev/null
    # The compiled addons load with the packaged node.
    ( cd $out/lib/node_modules/loom && ${nodejs_20}/bin/node -e 'require("better-sqlite3"); require("argon2"); require("./native/build/Release/loom_native.node")' )
    test -x $out/lib/node_modules/loom/native/build/Release/loom-attach-relay
    test -x $out/lib/node_modules/loom/native/build/Release/loom-exec
    test -f $out/lib/node_modules/loom/native/build/Release/loom_audit.node
    # the web console, built from npm dependencies by web/build.mjs
    test -f $out/lib/node_modules/loom/dist/web/index.html -a -f $out/lib/node_modules/loom/dist/web/assets/app.js
    runHook postInstallCheck
  '';

  meta = {
    description = package.description;
    license = lib.licenses.asl20;
    mainProgram = "loom";
    platforms = lib.platforms.linux;
  };
}
