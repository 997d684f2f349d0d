# Pure (builtins only): services.loom-k3s settings -> the k3s command-line flags, the assertions,
# the RBAC objects of loom-server's namespaced account and the firewall rules. loom-k3s.nix uses
# this; tests/nix evaluates it with nix-instantiate (the RBAC objects are validated against the
# Kubernetes schema by tests/nix/k3s-rbac.test.ts).
cfg:
let
  inherit (builtins) filter concatLists match concatStringsSep all any map toString;
  isServer = cfg.role == "server";
  when = c: xs: if c then xs else [ ];
  # k3s reads these flags from the unit's ExecStart (systemd splits on whitespace), so a value
  # with whitespace or quotes would be split or mangled: reject it at evaluation.
  plain = s: match "[^[:space:]\"'\\\\]+" s != null;

  loopback = a: a != null && (match "127\\..*" a != null || a == "::1" || a == "localhost");

  isV4Cidr = c: match "([0-9]{1,3}\\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])" c != null;
  isV6Cidr = c: match "[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8])" c != null;
  v4 = filter isV4Cidr cfg.nodeNetwork;
  v6 = filter isV6Cidr cfg.nodeNetwork;

  sa = cfg.serverServiceAccount;
  ns = cfg.namespace;
  labels = { "app.kubernetes.io/managed-by" = "loom-k3s"; "app.kubernetes.io/name" = "loom-server"; };
  meta = name: { inherit name labels; namespace = ns; };
in
rec {
  flags =
    when isServer (
      when cfg.disableTraefik [ "--disable=traefik" ]
      ++ when cfg.disableServiceLB [ "--disable=servicelb" ]
      ++ when cfg.disableLocalStorage [ "--disable=local-storage" ]
      ++ when (cfg.bindAddress != null) [ "--bind-address=${cfg.bindAddress}" ]
      ++ [
        "--write-kubeconfig=${cfg.kubeconfigPath}"
        # The cluster-admin kubeconfig stays root's: loom-server gets its own account
        # (serverKubeconfigPath), which loom-k3s-setup writes.
        "--write-kubeconfig-mode=0600"
      ]
    )
    ++ cfg.extraFlags;

  # Ports other nodes use, opened only to cfg.nodeNetwork (never to every source).
  ports = {
    tcp = [ 10250 ] ++ when isServer [ 6443 ] ++ when (isServer && cfg.clusterInit) [ 2379 2380 ];
    udp = [ 8472 ];
  };

  # networking.firewall.extraInputRules (nftables backend).
  nftablesRules =
    let
      set = xs: "{ ${concatStringsSep ", " (map toString xs)} }";
      rules = fam: cidrs:
        when (cidrs != [ ]) [
          "${fam} saddr ${set cidrs} tcp dport ${set ports.tcp} accept"
          "${fam} saddr ${set cidrs} udp dport ${set ports.udp} accept"
        ];
    in
    concatStringsSep "\n" (rules "ip" v4 ++ rules "ip6" v6);

  # networking.firewall.extraCommands / extraStopCommands (iptables backend).
  iptablesRules = action:
    let
      one = cmd: cidr: proto: port:
        "${cmd} -w ${action} nixos-fw -s ${cidr} -p ${proto} --dport ${toString port} -j nixos-fw-accept${if action == "-D" then " 2>/dev/null || true" else ""}";
      all = cmd: cidrs: concatLists (map (c: map (one cmd c "tcp") ports.tcp ++ map (one cmd c "udp") ports.udp) cidrs);
    in
    concatStringsSep "\n" (all "iptables" v4 ++ all "ip6tables" v6);

  # loom-server's Kubernetes account: exactly what the kubernetes backend calls, in its namespace.
  # No Secrets: pull secrets are referenced by name in pod specs (no read needed) and weaver
  # secrets reach pods through the TokenReview exchange, never as Secret objects.
  role = {
    apiVersion = "rbac.authorization.k8s.io/v1";
    kind = "Role";
    metadata = meta sa;
    rules = [
      # The start-up check that the namespace exists (namespaced to itself by the API server).
      { apiGroups = [ "" ]; resources = [ "namespaces" ]; resourceNames = [ ns ]; verbs = [ "get" ]; }
      { apiGroups = [ "" ]; resources = [ "pods" ]; verbs = [ "get" "list" "watch" "create" "delete" ]; }
      { apiGroups = [ "" ]; resources = [ "pods/log" ]; verbs = [ "get" ]; }
      { apiGroups = [ "" ]; resources = [ "pods/attach" "pods/exec" ]; verbs = [ "get" "create" ]; }
      { apiGroups = [ "" ]; resources = [ "events" ]; verbs = [ "get" "list" "watch" ]; }
      # Per-weaver network isolation.
      { apiGroups = [ "networking.k8s.io" ]; resources = [ "networkpolicies" ]; verbs = [ "get" "list" "watch" "create" "update" "patch" "delete" ]; }
    ];
  };

  rbac = [
    { apiVersion = "v1"; kind = "ServiceAccount"; metadata = meta sa; automountServiceAccountToken = false; }
    role
    {
      apiVersion = "rbac.authorization.k8s.io/v1";
      kind = "RoleBinding";
      metadata = meta sa;
      roleRef = { apiGroup = "rbac.authorization.k8s.io"; kind = "Role"; name = sa; };
      subjects = [ { kind = "ServiceAccount"; name = sa; namespace = ns; } ];
    }
    # The weavers' identity exchange verifies pod tokens with TokenReview, a cluster-scoped API:
    # a ClusterRole with that one verb, bound to this account only.
    {
      apiVersion = "rbac.authorization.k8s.io/v1";
      kind = "ClusterRole";
      metadata = { name = "${sa}-tokenreview"; inherit labels; };
      rules = [ { apiGroups = [ "authentication.k8s.io" ]; resources = [ "tokenreviews" ]; verbs = [ "create" ]; } ];
    }
    {
      apiVersion = "rbac.authorization.k8s.io/v1";
      kind = "ClusterRoleBinding";
      metadata = { name = "${sa}-tokenreview"; inherit labels; };
      roleRef = { apiGroup = "rbac.authorization.k8s.io"; kind = "ClusterRole"; name = "${sa}-tokenreview"; };
      subjects = [ { kind = "ServiceAccount"; name = sa; namespace = ns; } ];
    }
    # A long-lived token for the account (the kubeconfig loom-server reads); the token
    # controller fills it in. Deleting this Secret revokes the kubeconfig.
    {
      apiVersion = "v1";
      kind = "Secret";
      type = "kubernetes.io/service-account-token";
      metadata = meta "${sa}-token" // { annotations = { "kubernetes.io/service-account.name" = sa; }; };
    }
  ];

  assertions = [
    { assertion = cfg.role == "server" || cfg.role == "agent";
      message = "services.loom-k3s.role must be \"server\" or \"agent\""; }
    { assertion = isServer || cfg.serverAddr != "";
      message = "services.loom-k3s: role = \"agent\" needs serverAddr (https://<server>:6443)"; }
    { assertion = isServer || cfg.token != null || cfg.tokenFile != null;
      message = "services.loom-k3s: role = \"agent\" needs tokenFile (or token)"; }
    { assertion = !(cfg.token != null && cfg.tokenFile != null);
      message = "services.loom-k3s: set token or tokenFile, not both"; }
    { assertion = !(cfg.clusterInit && !isServer);
      message = "services.loom-k3s: clusterInit is for role = \"server\" only"; }
    { assertion = !(isServer && cfg.clusterInit && loopback cfg.bindAddress);
      message = "services.loom-k3s: clusterInit starts an HA cluster other servers join, but bindAddress = ${toString cfg.bindAddress} keeps the API on loopback where no other node reaches it; for one node set clusterInit = false, for a cluster set bindAddress to the node's address (or null) and openFirewall with nodeNetwork"; }
    { assertion = !(isServer && cfg.openFirewall && loopback cfg.bindAddress);
      message = "services.loom-k3s: openFirewall opens the ports other nodes use, but bindAddress = ${toString cfg.bindAddress} keeps the API on loopback: set bindAddress to the node's address (or null)"; }
    { assertion = !cfg.openFirewall || cfg.nodeNetwork != [ ];
      message = "services.loom-k3s: openFirewall opens kubelet, flannel (and API/etcd on servers) only to nodeNetwork: list the nodes' network(s), e.g. [ \"10.0.0.0/24\" ]"; }
    { assertion = all (c: isV4Cidr c || isV6Cidr c) cfg.nodeNetwork;
      message = "services.loom-k3s.nodeNetwork: every entry must be a CIDR such as 10.0.0.0/24 or fd00::/64"; }
    { assertion = !cfg.ghcrSecret.enable || (cfg.ghcrSecret.username != "" && cfg.ghcrSecret.tokenFile != null);
      message = "services.loom-k3s.ghcrSecret: enable needs username and tokenFile"; }
    { assertion = !cfg.ghcrSecret.enable || isServer;
      message = "services.loom-k3s.ghcrSecret is created on a k3s server (role = \"server\")"; }
    { assertion = cfg.ghcrSecret.tokenFile == null || match "/.*" cfg.ghcrSecret.tokenFile != null;
      message = "services.loom-k3s.ghcrSecret.tokenFile must be an absolute path, read at run time (it never enters the Nix store)"; }
    { assertion = match "/.*" cfg.serverKubeconfigPath != null;
      message = "services.loom-k3s.serverKubeconfigPath must be an absolute path"; }
    { assertion = builtins.all plain (flags ++ [ cfg.kubeconfigPath cfg.serverKubeconfigPath ]);
      message = "services.loom-k3s: flags and kubeconfig paths must not contain whitespace or quotes"; }
  ];
}
