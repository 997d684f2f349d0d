# services.loom-server: the Loom server as a hardened systemd unit.
#
# The options under services.loom-server that set the server's environment are generated from
# src/server/config/variables.json (./lib/options.nix), the same table the TypeScript loader reads,
# and the environment is computed from them by ./lib/env.nix; the unit's sandbox is ./lib/unit.nix.
# Those three files are pure and tested with nix-instantiate (tests/nix).
{ config, lib, pkgs, ... }:
let
  cfg = config.services.loom-server;
  env = import ./lib/env.nix { };
  tableOptions = import ./lib/options.nix { inherit lib env; };

  # Read, never written: the two modules work alone or together.
  k3s = config.services.loom-k3s or { enable = false; };
  withK3s = k3s.enable && k3s.role == "server";

  stateDir = "/var/lib/loom-server";
  local = cfg.weaver.backend == "local";

  # Only the static busybox binary (the local backend's default image is built from it), not its
  # applets, which would shadow util-linux's mount and coreutils on PATH.
  busyboxStatic = pkgs.runCommand "busybox-static-bin" { } ''
    mkdir -p $out/bin
    ln -s ${pkgs.pkgsStatic.busybox}/bin/busybox $out/bin/busybox
  '';

  environment = env.toEnv cfg // cfg.environment;

  unit = import ./lib/unit.nix {
    inherit (cfg) listenAddress dataDir user group;
    inherit stateDir;
    backend = cfg.weaver.backend;
    execStart = "${cfg.package}/bin/loom-server";
    supplementaryGroups = lib.optional withK3s k3s.kubeconfigGroup;
    environmentFile = cfg.environmentFile;
  };

  # `sudo loom-server-admin token --user NAME [--admin]`: the admin command exactly as the unit
  # runs: its user and groups (the kubeconfig group included), working directory, PATH,
  # environment and environmentFile, and none of the caller's environment (./lib/admin-wrapper.sh,
  # tested by running it in tests/nix/admin-wrapper.test.ts).
  adminWrapper = pkgs.writeShellScriptBin "loom-server-admin" ''
    unit_user=${lib.escapeShellArg unit.serviceConfig.User}
    unit_group=${lib.escapeShellArg unit.serviceConfig.Group}
    unit_dir=${lib.escapeShellArg stateDir}
    unit_path=${lib.escapeShellArg (lib.makeBinPath (cfg.runtimePackages ++ [ pkgs.util-linux pkgs.coreutils ]))}
    unit_env=(${lib.escapeShellArgs (lib.mapAttrsToList (n: v: "${n}=${v}") environment)})
    env_file=${lib.escapeShellArg (if cfg.environmentFile == null then "" else cfg.environmentFile)}
    loom_server=${lib.escapeShellArg "${cfg.package}/bin/loom-server"}
    PATH=${lib.escapeShellArg (lib.makeBinPath [ pkgs.util-linux pkgs.coreutils ])}
    source ${./lib/admin-wrapper.sh}
  '';

  handWritten = {
    enable = lib.mkEnableOption "the Loom server (loom-server)";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ../nix/loom.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/loom.nix { } (the flake's packages.<system>.loom)";
      description = "The loom package (provides bin/loom-server).";
    };

    environment = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      default = { };
      example = { LOOM_LOG_LEVEL = "debug"; };
      description = ''
        Extra environment variables for loom-server; they override the variables set from the
        options above. Values end up in the Nix store: put secrets in environmentFile.
      '';
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/run/secrets/loom-server.env";
      description = "A file of KEY=value lines read by systemd at start (EnvironmentFile=), kept out of the Nix store.";
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the TCP port of listenAddress (and the UDP port of tunnel.udpAddress when set) in the firewall.";
    };

    user = lib.mkOption {
      type = lib.types.str;
      default = "loom-server";
      description = "The dedicated user the unit runs as with backend = \"kubernetes\" (the local backend runs as root).";
    };

    group = lib.mkOption {
      type = lib.types.str;
      default = "loom-server";
      description = "The dedicated group of the unit.";
    };

    runtimePackages = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      default =
        if local then
          with pkgs; [ runc crun conmon skopeo umoci git btrfs-progs xfsprogs util-linux slirp4netns busyboxStatic wireguard-go wireguard-tools iproute2 ]
        else
          [ pkgs.git ];
      defaultText = lib.literalExpression ''
        if weaver.backend == "local"
        then [ runc crun conmon skopeo umoci git btrfs-progs xfsprogs util-linux slirp4netns busybox(static binary) wireguard-go wireguard-tools iproute2 ]
        else [ git ]'';
      description = "Packages on the unit's PATH (the local backend runs these tools).";
    };
  };

  # The two option sets must not overlap; the table's paths and the generated options must agree.
  overlap = builtins.attrNames (builtins.intersectAttrs handWritten tableOptions);
  generatedPaths = lib.collect (o: lib.isType "option" o) tableOptions;
in
{
  options.services.loom-server =
    if overlap != [ ] then throw "loom-server.nix: hand-written options ${toString overlap} clash with variables.json"
    else tableOptions // handWritten;

  config = lib.mkIf cfg.enable {
    assertions = [
      { assertion = builtins.length generatedPaths == builtins.length env.variables;
        message = "loom-server.nix: the generated options and variables.json disagree"; }
      { assertion = cfg.weaver.defaultTtlHours <= cfg.weaver.maxTtlHours;
        message = "services.loom-server.weaver.defaultTtlHours must not exceed maxTtlHours"; }
      { assertion = !cfg.weaver.audit.enable || cfg.weaver.backend != "kubernetes" || cfg.weaver.audit.image != null;
        message = "services.loom-server.weaver.audit.image must be set when weaver.audit.enable is true on the kubernetes backend"; }
      { assertion = !cfg.weaver.audit.enable || cfg.weaver.backend != "kubernetes" || cfg.weaver.audit.serverUrl != null;
        message = "services.loom-server.weaver.audit.serverUrl must be set when weaver.audit.enable is true on the kubernetes backend"; }
      { assertion = !cfg.weaver.enable || cfg.weaver.backend != "kubernetes" || withK3s || cfg.weaver.kubeconfigPath != null;
        message = "services.loom-server: backend = \"kubernetes\" needs weaver.kubeconfigPath (or services.loom-k3s on this host)"; }
    ];

    users.users.${cfg.user} = {
      isSystemUser = true;
      group = cfg.group;
      home = stateDir;
      description = "Loom server";
      # The unit gets it as SupplementaryGroups; the membership gives it to loom-server-admin
      # (setpriv --init-groups) too.
      extraGroups = lib.optional withK3s k3s.kubeconfigGroup;
    };
    users.groups.${cfg.group} = { };

    systemd.services.loom-server = {
      description = "Loom server";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ] ++ lib.optional withK3s "loom-k3s-setup.service";
      wants = [ "network-online.target" ] ++ lib.optional withK3s "loom-k3s-setup.service";
      path = cfg.runtimePackages;
      inherit environment;
      serviceConfig = unit.serviceConfig;
    };

    environment.systemPackages = [ cfg.package adminWrapper ];

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ unit.port ];
    # The WireGuard gateway's UDP port (tunnel.udpAddress), when it is on.
    networking.firewall.allowedUDPPorts = lib.mkIf (cfg.openFirewall && cfg.tunnel.udpAddress != null && cfg.tunnel.udpAddress != "") [ (env.portOf cfg.tunnel.udpAddress) ];

    # With loom-k3s on the same host: KUBECONFIG defaults to the kubeconfig of the namespaced
    # account it creates for loom-server (never k3s' cluster-admin file), and the pull secret it
    # creates is used by default.
    services.loom-server.weaver.kubeconfigPath = lib.mkIf withK3s (lib.mkDefault k3s.serverKubeconfigPath);
    services.loom-server.weaver.imagePullSecrets =
      lib.mkIf (withK3s && k3s.ghcrSecret.enable) (lib.mkDefault [ k3s.ghcrSecret.name ]);
  };
}
