# services.loom-k3s: k3s for Loom's weavers, built on the stock services.k3s.
#
# On a k3s server it also runs loom-k3s-setup.service after k3s is up, which
#   - waits for the API server,
#   - keeps k3s' cluster-admin kubeconfig root-only (0600),
#   - creates the weavers' namespace (default loom-weavers),
#   - creates loom-server's own account there (ServiceAccount, Role, RoleBinding, and a
#     ClusterRole for TokenReview only; see ./lib/k3s.nix) and writes a kubeconfig for it to
#     serverKubeconfigPath, root:<kubeconfigGroup> 0640 (loom-server joins that group),
#   - creates the registry pull secret from ghcrSecret.tokenFile, read at run time through
#     LoadCredential= so the token never enters the Nix store, the unit file or a command line.
# It runs again whenever k3s restarts (k3s rewrites the kubeconfig on start).
#
# The flags and assertions are computed by ./lib/k3s.nix (pure, tested with nix-instantiate).
{ config, lib, pkgs, ... }:
let
  cfg = config.services.loom-k3s;
  k3sLib = import ./lib/k3s.nix cfg;
  isServer = cfg.role == "server";
  k3sPackage = config.services.k3s.package;
  q = lib.escapeShellArg;
  sa = cfg.serverServiceAccount;

  rbacFile = pkgs.writeText "loom-k3s-rbac.json"
    (builtins.toJSON { apiVersion = "v1"; kind = "List"; items = k3sLib.rbac; });

  setupScript = ''
    set -euo pipefail
    export KUBECONFIG=${q cfg.kubeconfigPath}
    kubectl() { k3s kubectl "$@"; }

    # k3s.service is "started" before its API answers: wait for it (up to 5 minutes).
    for _ in $(seq 1 150); do
      if [ -s "$KUBECONFIG" ] && kubectl get --raw=/readyz >/dev/null 2>&1; then break; fi
      sleep 2
    done
    kubectl get --raw=/readyz >/dev/null

    # The cluster-admin kubeconfig is root's alone (k3s writes it 0600; an older setup may
    # have opened it to a group).
    chown root:root "$KUBECONFIG"
    chmod 0600 "$KUBECONFIG"

    kubectl create namespace ${q cfg.namespace} --dry-run=client -o yaml | kubectl apply -f -

    # loom-server's namespaced account, and its token (filled in by the token controller).
    kubectl apply -f ${rbacFile}
    secret=""
    for _ in $(seq 1 60); do
      secret=$(kubectl get secret ${q "${sa}-token"} --namespace ${q cfg.namespace} -o json 2>/dev/null || true)
      if [ -n "$secret" ] && [ "$(printf '%s' "$secret" | jq -r '.data.token // ""')" != "" ]; then break; fi
      secret=""
      sleep 1
    done
    if [ -z "$secret" ]; then
      echo "loom-k3s-setup: the token of service account ${sa} was not issued" >&2
      exit 1
    fi

    # Its kubeconfig: the API address from the admin kubeconfig, the CA and token from the
    # Secret (through a pipe and jq: the token never appears on a command line).
    server=$(kubectl config view --raw -o jsonpath='{.clusters[0].cluster.server}')
    target=${q cfg.serverKubeconfigPath}
    dir=$(dirname "$target")
    [ -d "$dir" ] || install -d -m 0750 -o root -g ${q cfg.kubeconfigGroup} "$dir"
    umask 027
    tmp=$(mktemp "$target.XXXXXX")
    printf '%s' "$secret" | jq --arg server "$server" --arg ns ${q cfg.namespace} --arg user ${q sa} '
      { apiVersion: "v1", kind: "Config",
        clusters: [ { name: "k3s", cluster: { server: $server, "certificate-authority-data": .data["ca.crt"] } } ],
        users: [ { name: $user, user: { token: (.data.token | @base64d) } } ],
        contexts: [ { name: "loom", context: { cluster: "k3s", user: $user, namespace: $ns } } ],
        "current-context": "loom" }' > "$tmp"
    chown root:${q cfg.kubeconfigGroup} "$tmp"
    chmod 0640 "$tmp"
    mv -f "$tmp" "$target"
  '' + lib.optionalString cfg.ghcrSecret.enable ''

    # The token comes from the credential systemd copied from ghcrSecret.tokenFile; it goes into
    # a private temporary file (PrivateTmp, umask 077), never onto a command line.
    umask 077
    dockerconfig=$(mktemp)
    trap 'rm -f "$dockerconfig"' EXIT
    jq -n \
      --arg server ${q cfg.ghcrSecret.server} \
      --arg user ${q cfg.ghcrSecret.username} \
      --rawfile token "$CREDENTIALS_DIRECTORY/ghcr-token" \
      '($token | rtrimstr("\n")) as $t
       | {auths: {($server): {username: $user, password: $t, auth: ("\($user):\($t)" | @base64)}}}' \
      > "$dockerconfig"
    kubectl create secret generic ${q cfg.ghcrSecret.name} \
      --namespace ${q cfg.namespace} \
      --type=kubernetes.io/dockerconfigjson \
      --from-file=.dockerconfigjson="$dockerconfig" \
      --dry-run=client -o yaml | kubectl apply -f -
  '';
in
{
  options.services.loom-k3s = {
    enable = lib.mkEnableOption "k3s for Loom weavers (services.k3s plus namespace, kubeconfig access and pull secret)";

    role = lib.mkOption {
      type = lib.types.enum [ "server" "agent" ];
      default = "server";
      description = "k3s role of this node.";
    };

    clusterInit = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Initialise a new HA cluster with embedded etcd (the first server only).";
    };

    token = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Cluster join token. It ends up world-readable in the Nix store: prefer tokenFile.";
    };

    tokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/run/secrets/k3s-token";
      description = "File holding the cluster join token, read by k3s at run time.";
    };

    serverAddr = lib.mkOption {
      type = lib.types.str;
      default = "";
      example = "https://10.0.0.1:6443";
      description = "The server to join (agents, and servers joining an existing cluster).";
    };

    disableTraefik = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Do not deploy the bundled Traefik ingress.";
    };

    disableServiceLB = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Do not deploy the bundled ServiceLB load balancer.";
    };

    disableLocalStorage = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Do not deploy the bundled local-path storage provisioner.";
    };

    bindAddress = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = "127.0.0.1";
      description = "Address the API server binds to (--bind-address); null: k3s' default (all addresses).";
    };

    kubeconfigPath = lib.mkOption {
      type = lib.types.str;
      default = "/etc/rancher/k3s/k3s.yaml";
      description = "Where k3s writes its cluster-admin kubeconfig (--write-kubeconfig); root-only (0600).";
    };

    serverServiceAccount = lib.mkOption {
      type = lib.types.strMatching "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";
      default = "loom-server";
      description = "ServiceAccount (and Role, RoleBinding) in `namespace` that loom-server uses.";
    };

    serverKubeconfigPath = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/loom-k3s/loom-server.kubeconfig";
      description = ''
        Where loom-k3s-setup writes the kubeconfig of serverServiceAccount (root:kubeconfigGroup,
        0640). services.loom-server.weaver.kubeconfigPath defaults to it on the same host.
      '';
    };

    kubeconfigGroup = lib.mkOption {
      type = lib.types.str;
      default = "loom-k3s";
      description = ''
        Group, created by this module, that may read serverKubeconfigPath (never the
        cluster-admin kubeconfig). loom-server joins it when services.loom-server is enabled on
        the same host.
      '';
    };

    namespace = lib.mkOption {
      type = lib.types.strMatching "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";
      default = config.services.loom-server.weaver.namespace or "loom-weavers";
      defaultText = lib.literalExpression ''config.services.loom-server.weaver.namespace or "loom-weavers"'';
      description = "Namespace created for weaver pods (and holding the pull secret).";
    };

    extraFlags = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "--flannel-backend=wireguard-native" ];
      description = "More k3s flags, one per element, in --flag=value form.";
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Open the ports other nodes need, to nodeNetwork only: 10250/tcp (kubelet), 8472/udp
        (flannel VXLAN), and on servers 6443/tcp (API) and 2379-2380/tcp (etcd, with clusterInit).
      '';
    };

    nodeNetwork = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "10.0.0.0/24" ];
      description = "CIDRs of the cluster's nodes: the only sources openFirewall admits.";
    };

    ghcrSecret = {
      enable = lib.mkEnableOption "a docker-registry pull secret for the weaver images' registry";
      name = lib.mkOption {
        type = lib.types.str;
        default = "ghcr-secret";
        description = "Name of the Secret. With services.loom-server on the same host, weaver.imagePullSecrets defaults to [ name ].";
      };
      server = lib.mkOption {
        type = lib.types.str;
        default = "ghcr.io";
        description = "Registry host.";
      };
      username = lib.mkOption {
        type = lib.types.str;
        default = "";
        description = "Registry user name.";
      };
      tokenFile = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "/run/secrets/github-token";
        description = "File holding the registry token (read:packages), read at run time; never copied to the Nix store.";
      };
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions = k3sLib.assertions;
      warnings = lib.optional (cfg.token != null)
        "services.loom-k3s.token is stored world-readable in the Nix store; use tokenFile.";

      services.k3s = {
        enable = true;
        inherit (cfg) role clusterInit serverAddr;
        # A string works with both the older (str) and newer (str or list) services.k3s.extraFlags.
        extraFlags = lib.concatStringsSep " " k3sLib.flags;
      }
      // lib.optionalAttrs (cfg.token != null) { inherit (cfg) token; }
      // lib.optionalAttrs (cfg.tokenFile != null) { inherit (cfg) tokenFile; };

      environment.systemPackages = [ k3sPackage ];

      # Source-restricted rules, never allowedTCPPorts/allowedUDPPorts (those admit every source).
      networking.firewall = lib.mkIf cfg.openFirewall (
        if config.networking.nftables.enable or false then {
          extraInputRules = k3sLib.nftablesRules;
        } else {
          extraCommands = k3sLib.iptablesRules "-A";
          extraStopCommands = k3sLib.iptablesRules "-D";
        });
    }

    (lib.mkIf isServer {
      users.groups.${cfg.kubeconfigGroup} = { };

      systemd.services.loom-k3s-setup = {
        description = "Loom: weaver namespace, kubeconfig access and pull secret on k3s";
        after = [ "k3s.service" ];
        requires = [ "k3s.service" ];
        # Re-run whenever k3s (re)starts: it rewrites the kubeconfig with its own group.
        partOf = [ "k3s.service" ];
        wantedBy = [ "k3s.service" "multi-user.target" ];
        path = [ k3sPackage pkgs.coreutils pkgs.jq ];
        restartTriggers = [ rbacFile ];
        script = setupScript;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          TimeoutStartSec = "10min";
          Restart = "on-failure";
          RestartSec = "15s";
          PrivateTmp = true;
          UMask = "0077";
        } // lib.optionalAttrs (cfg.ghcrSecret.enable && cfg.ghcrSecret.tokenFile != null) {
          LoadCredential = [ "ghcr-token:${cfg.ghcrSecret.tokenFile}" ];
        };
      };
    })
  ]);
}
