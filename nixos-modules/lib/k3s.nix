# Pure (builtins only): services.loom-k3s settings -> the k3s command-line flags and the
# assertions. loom-k3s.nix uses this; tests/nix evaluates it with nix-instantiate.
cfg:
let
  inherit (builtins) filter concatLists match;
  isServer = cfg.role == "server";
  when = c: xs: if c then xs else [ ];
  # k3s reads these flags from the unit's ExecStart (systemd splits on whitespace), so a value
  # with whitespace or quotes would be split or mangled: reject it at evaluation.
  plain = s: match "[^[:space:]\"'\\\\]+" s != null;
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
        # 0640 and the group set by loom-k3s-setup: loom-server reads it, other users don't.
        "--write-kubeconfig-mode=0640"
      ]
    )
    ++ cfg.extraFlags;

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
    { assertion = !cfg.ghcrSecret.enable || (cfg.ghcrSecret.username != "" && cfg.ghcrSecret.tokenFile != null);
      message = "services.loom-k3s.ghcrSecret: enable needs username and tokenFile"; }
    { assertion = !cfg.ghcrSecret.enable || isServer;
      message = "services.loom-k3s.ghcrSecret is created on a k3s server (role = \"server\")"; }
    { assertion = cfg.ghcrSecret.tokenFile == null || match "/.*" cfg.ghcrSecret.tokenFile != null;
      message = "services.loom-k3s.ghcrSecret.tokenFile must be an absolute path, read at run time (it never enters the Nix store)"; }
    { assertion = builtins.all plain (flags ++ [ cfg.kubeconfigPath ]);
      message = "services.loom-k3s: flags and kubeconfigPath must not contain whitespace or quotes"; }
  ];
}
