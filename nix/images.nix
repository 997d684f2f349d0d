# The weaver and audit-sidecar OCI images (docker-archive tarballs), built with
# dockerTools.buildLayeredImage: the loom CLI, git, a shell, coreutils, CA certificates, a
# non-root user 1000 (loom), WORKDIR /workspace, and an entrypoint that keeps running.
# The entrypoints are the same scripts the Dockerfiles in images/ use.
{ lib
, dockerTools
, runCommand
, loom
, git
, bashInteractive
, coreutils
, cacert
}:
let
  passwd = dockerTools.fakeNss.override {
    extraPasswdLines = [ "loom:x:1000:1000:loom:/home/loom:/bin/bash" ];
    extraGroupLines = [ "loom:x:1000:" ];
  };

  entrypoint = name: script: runCommand "${name}-entrypoint" { } ''
    install -Dm755 ${script} $out/bin/${name}-entrypoint
  '';

  mkImage = { name, script, extraConfig ? { } }:
    let ep = entrypoint name script; in
    dockerTools.buildLayeredImage {
      inherit name;
      tag = loom.version;
      contents = [
        loom
        git
        bashInteractive
        coreutils
        cacert
        passwd
        ep
        dockerTools.binSh      # /bin/sh (the entrypoints are POSIX sh)
        dockerTools.usrBinEnv  # /usr/bin/env for scripts run inside the weaver
      ];
      fakeRootCommands = ''
        mkdir -p ./workspace ./home/loom ./tmp
        chown 1000:1000 ./workspace ./home/loom
        chmod 1777 ./tmp
      '';
      config = {
        User = "1000:1000";
        WorkingDir = "/workspace";
        Entrypoint = [ "/bin/${name}-entrypoint" ];
        Env = [
          "HOME=/home/loom"
          "PATH=/bin:/usr/bin"
          "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"
          "GIT_SSL_CAINFO=/etc/ssl/certs/ca-bundle.crt"
        ];
        Labels = {
          "org.opencontainers.image.title" = name;
          "org.opencontainers.image.version" = loom.version;
        };
      } // extraConfig;
    };
in
{
  weaver = mkImage {
    name = "loom-weaver";
    script = ../images/weaver/entrypoint.sh;
  };

  audit-sidecar = mkImage {
    name = "loom-audit-sidecar";
    script = ../images/audit-sidecar/entrypoint.sh;
    extraConfig.ExposedPorts = { "9090/tcp" = { }; "9091/tcp" = { }; };
  };
}
