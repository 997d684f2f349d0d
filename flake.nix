{
  description = "Loom: disposable development environments (weavers) with instant state branching";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      # Every module is an attribute set (nix flake check rejects a path) with a `key`, so the
      # module system includes it once however often it is imported (`default` and
      # `loom-server` together, or from two places of a host's configuration).
      module = name: attrs: {
        _file = "${toString ./flake.nix}#nixosModules.${name}";
        key = "loom#nixosModules.${name}";
      } // attrs;
    in
    {
      packages = forAllSystems (system: pkgs:
        let
          loom = pkgs.callPackage ./nix/loom.nix { };
          images = pkgs.callPackage ./nix/images.nix { inherit loom; };
        in
        {
          inherit loom;
          weaver-image = images.weaver;
          audit-sidecar-image = images.audit-sidecar;
          default = loom;
        });

      apps = forAllSystems (system: pkgs:
        let loom = self.packages.${system}.loom; in
        {
          loom = { type = "app"; program = "${loom}/bin/loom"; };
          loom-server = { type = "app"; program = "${loom}/bin/loom-server"; };
          default = self.apps.${system}.loom;
        });

      nixosModules = {
        loom-k3s = module "loom-k3s" { imports = [ ./nixos-modules/loom-k3s.nix ]; };
        # services.loom-server.package defaults to this flake's build for the host's system
        # (a plain definition at mkDefault in a keyed module: defined once however often
        # imported). Without the flake, the module's own default builds ./nix/loom.nix with the
        # host's pkgs.
        loom-server = module "loom-server" {
          imports = [
            ./nixos-modules/loom-server.nix
            ({ pkgs, ... }: {
              key = "loom#nixosModules.loom-server/package";
              services.loom-server.package =
                lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.loom;
            })
          ];
        };
        default = module "default" {
          imports = [ self.nixosModules.loom-k3s self.nixosModules.loom-server ];
        };
      };

      checks = forAllSystems (system: pkgs:
        let
          envLib = import ./nixos-modules/lib/env.nix { };
          # A whole NixOS system with both modules on, evaluated (not booted).
          evalHost = extra: (lib.nixosSystem {
            inherit system;
            modules = [
              self.nixosModules.default
              # Imported twice on purpose: the keyed modules are included once.
              self.nixosModules.loom-server
              {
                boot.loader.grub.enable = false;
                fileSystems."/" = { device = "none"; fsType = "tmpfs"; };
                system.stateVersion = "24.11";
                services.loom-k3s.enable = true;
                services.loom-server.enable = true;
              }
              extra
            ];
          }).config;
          k8sHost = evalHost { services.loom-server.weaver.backend = "kubernetes"; };
          localHost = evalHost { };
        in
        {
          inherit (self.packages.${system}) loom weaver-image audit-sidecar-image;

          # The unit's environment equals the pure mapping of the module's settings, and every
          # table entry is an option of the module.
          module-eval = pkgs.runCommand "loom-module-eval" {
            k8sEnv = builtins.toJSON k8sHost.systemd.services.loom-server.environment;
            expected = builtins.toJSON (envLib.toEnv k8sHost.services.loom-server);
            k8sUser = k8sHost.systemd.services.loom-server.serviceConfig.User;
            localUser = localHost.systemd.services.loom-server.serviceConfig.User;
            kubeconfig = k8sHost.systemd.services.loom-server.environment.KUBECONFIG;
            optionsPresent = builtins.toJSON (map (p: lib.hasAttrByPath (lib.splitString "." p) k8sHost.services.loom-server) envLib.optionPaths);
            setupType = k8sHost.systemd.services.loom-k3s-setup.serviceConfig.Type;
            k3sFlags = toString k8sHost.services.k3s.extraFlags;
          } ''
            ${pkgs.jq}/bin/jq -e --argjson a "$k8sEnv" --argjson b "$expected" -n '$a | with_entries(select(.key | startswith("LOOM_") or . == "KUBECONFIG")) == $b'
            test "$k8sUser" = loom-server
            test "$localUser" = root
            # loom-server reaches k3s through its namespaced account, never the cluster-admin file.
            test "$kubeconfig" = /var/lib/loom-k3s/loom-server.kubeconfig
            case "$k3sFlags" in *--write-kubeconfig-mode=0600*) ;; *) exit 1 ;; esac
            ${pkgs.jq}/bin/jq -e -n --argjson o "$optionsPresent" '$o | all'
            test "$setupType" = oneshot
            touch $out
          '';

          # Boots a VM with loom-server and asks /health.
          vm-loom-server = pkgs.testers.runNixOSTest {
            name = "loom-server";
            nodes.machine = {
              imports = [ self.nixosModules.loom-server ];
              # The unprivileged (kubernetes-backend) unit, with the weaver API off: no cluster here.
              services.loom-server = {
                enable = true;
                weaver.enable = false;
                weaver.backend = "kubernetes";
              };
            };
            testScript = ''
              machine.wait_for_unit("loom-server.service")
              machine.wait_for_open_port(18090)
              machine.succeed("curl -sf http://127.0.0.1:18090/health")
              machine.succeed("systemctl show -p User loom-server | grep -q loom-server")
            '';
          };
        });

      formatter = forAllSystems (system: pkgs: pkgs.nixpkgs-fmt);
    };
}
