# Pure (builtins only): the loom-server systemd unit's serviceConfig as a function of the
# settings. loom-server.nix uses this; tests/nix evaluates it with nix-instantiate and checks how
# the unit differs by backend.
#
#   import ./unit.nix {
#     backend; listenAddress; dataDir;          # from services.loom-server
#     user; group; stateDir;                    # "loom-server", "loom-server", "/var/lib/loom-server"
#     execStart; supplementaryGroups ? [ ]; environmentFile ? null;
#   }
{ backend, listenAddress, dataDir, user, group, stateDir, execStart
, supplementaryGroups ? [ ], environmentFile ? null }:
let
  inherit (builtins) match head substring stringLength fromJSON;
  env = import ./env.nix { };
  port = env.portOf listenAddress;
  local = backend == "local";

  stateDirName = let m = match "/var/lib/(.+)" stateDir; in
    if m == null then throw "stateDir must be under /var/lib" else head m;
  # A dataDir outside the state directory must be made writable explicitly under
  # ProtectSystem=strict. Relative paths resolve against WorkingDirectory = stateDir.
  absolute = substring 0 1 dataDir == "/";
  underState = dataDir == stateDir || substring 0 (stringLength stateDir + 1) dataDir == "${stateDir}/";
  extraWritable = if absolute && !underState then [ dataDir ] else [ ];

  # What the local backend needs. It runs as uid 0: runc treats any other euid as rootless mode,
  # which needs user namespaces and cannot set up the cgroups, mounts and network loom uses.
  # A process cannot grant a capability that is outside its own bounding set, so this set bounds
  # both what runc/conmon/umoci do on the host and what a weaver container may be given (the
  # usual OCI default set, marked "container default").
  localCapabilities = [
    "CAP_SYS_ADMIN"        # mount/umount (rootfs, loop btrfs/XFS), pivot_root, clone/setns into new namespaces, btrfs subvolume snapshots
    "CAP_NET_ADMIN"        # bring up lo and configure the tap device in the weaver's network namespace (slirp4netns)
    "CAP_SYS_CHROOT"       # runc chroot/pivot into the rootfs; container default
    "CAP_SETUID"           # runc switches to the weaver's user; container default
    "CAP_SETGID"           # same, for groups and setgroups; container default
    "CAP_SETPCAP"          # runc drops the container's bounding set (PR_CAPBSET_DROP); container default
    "CAP_SETFCAP"          # umoci restores file capabilities (security.capability xattrs) when unpacking images; container default
    "CAP_CHOWN"            # umoci/rootfs copy keep files' owners; container default
    "CAP_DAC_OVERRIDE"     # read/write rootfs and snapshot trees owned by other uids; container default
    "CAP_FOWNER"           # chmod/utimes/xattrs on files owned by other uids during unpack and copy; container default
    "CAP_FSETID"           # keep setuid/setgid bits when copying image layers; container default
    "CAP_MKNOD"            # device nodes in the container's /dev and in image layers; container default
    "CAP_KILL"             # signal weaver processes running as other uids (stop, TTL expiry); container default
    "CAP_SYS_PTRACE"       # read /proc/<pid>/ns/* and /proc/<pid>/exe of weaver processes owned by other uids (exec/attach into a running weaver)
    "CAP_SYS_RESOURCE"     # OCI rlimits above the current hard limit, conmon's oom_score_adj
    "CAP_NET_BIND_SERVICE" # a listen port below 1024; container default
    "CAP_NET_RAW"          # container default (ping inside a weaver)
    "CAP_AUDIT_WRITE"      # container default (login/su inside a weaver write audit records)
  ];
  # Deliberately absent: CAP_SYS_MODULE (the kernel loads loop/overlay on demand), CAP_SYS_TIME,
  # CAP_SYS_BOOT, CAP_SYS_RAWIO, CAP_MAC_*, CAP_SYSLOG, CAP_IPC_LOCK, CAP_LINUX_IMMUTABLE,
  # CAP_BPF/CAP_PERFMON (add these when the eBPF audit loader runs in this process).

  common = {
    ExecStart = execStart;
    WorkingDirectory = stateDir;
    StateDirectory = stateDirName;
    StateDirectoryMode = "0750";
    Restart = "on-failure";
    RestartSec = "5s";
    # pino writes JSON lines to stdout: the journal keeps them (journalctl -u loom-server).
    StandardOutput = "journal";
    StandardError = "journal";
    SyslogIdentifier = "loom-server";
    NoNewPrivileges = true;
    ProtectHome = true;
    PrivateTmp = true;
    UMask = "0027";
  }
  // (if supplementaryGroups != [ ] then { SupplementaryGroups = supplementaryGroups; } else { })
  // (if environmentFile != null then { EnvironmentFile = environmentFile; } else { });

  localUnit = common // {
    User = "root";
    Group = "root";
    CapabilityBoundingSet = localCapabilities;
    # /usr, /boot, /efi and /etc read-only. Not "strict": runc, conmon and the provisioner write
    # to /run (runc state, conmon sockets), /sys/fs/cgroup (container cgroups) and the data dir.
    ProtectSystem = "full";
    # Not ProtectControlGroups / ProtectKernelTunables / PrivateDevices / RestrictNamespaces /
    # SystemCallFilter: runc creates cgroups, namespaces and device nodes, and mounts (loop
    # devices, /dev/net/tun for slirp4netns); those options would forbid exactly that.
    #
    # runc (cgroupfs driver) creates the containers' cgroups and moves processes between them;
    # Delegate=yes tells systemd the unit manages its own cgroup subtree (conmon and the runc
    # helpers live in it), so systemd neither moves those processes back nor rewrites the
    # subtree's controllers on daemon-reload. (The containers' cgroups are /loom/<id>, outside
    # the unit's subtree; systemd leaves cgroups it did not create alone.)
    Delegate = true;
    # Tolerated by runc: it loads no kernel module (the kernel autoloads loop/overlay/btrfs on
    # demand, CAP_SYS_MODULE is not in the bounding set anyway) and reads no kernel log. These
    # add a seccomp filter (init_module/finit_module/delete_module; syslog(2)) and hide
    # /usr/lib/modules, /proc/kmsg and /dev/kmsg; containers inherit the filter, so `dmesg` inside
    # a weaver fails, as it should.
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    # Not ProtectClock: besides its clock_settime/adjtimex filter, systemd implements it with
    # DeviceAllow=char-rtc, which closes the unit's device policy (an eBPF device program on the
    # unit's cgroup): loop devices for the data filesystems, /dev/net/tun for slirp4netns and the
    # devices runc creates in containers would all be refused.
    #
    # Weavers must outlive a restart of loom-server. runc puts each container in its own cgroup,
    # but conmon (the container's monitor, which holds its attach socket and exit status) is forked
    # by loom-server and stays in this unit's cgroup. KillMode=control-group (the default) or
    # mixed would kill every conmon on stop/restart; KillMode=process stops only loom-server,
    # which re-adopts the running conmons when it starts again. So `systemctl stop loom-server`
    # leaves the weavers running (their containers and conmons; systemd logs "left-over process"
    # for the conmons at the next start): delete weavers (`loom weaver delete <id>`) before
    # stopping for good. (If the provisioner later starts conmon in a scope of its own, e.g.
    # systemd-run --scope --slice=loom.slice, this can go back to the default.)
    KillMode = "process";
    # Note: ProtectSystem/ProtectHome/PrivateTmp give the unit its own mount namespace; mounts the
    # local backend makes live in it, so after a restart loom-server mounts its data filesystems
    # again (the running weavers keep theirs).
    LimitNOFILE = 1048576;
  };

  k8sUnit = common // {
    # The kubernetes backend only talks to the API server: an unprivileged user, no capabilities
    # (except binding a port below 1024 if the listen address asks for one).
    User = user;
    Group = group;
    # "" is systemd's empty set.
    CapabilityBoundingSet = if port < 1024 then [ "CAP_NET_BIND_SERVICE" ] else "";
    ProtectSystem = "strict";
    PrivateDevices = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    RemoveIPC = true;
    # Not MemoryDenyWriteExecute: V8's JIT needs writable+executable memory.
    RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    SystemCallErrorNumber = "EPERM";
  }
  // (if port < 1024 then { AmbientCapabilities = [ "CAP_NET_BIND_SERVICE" ]; } else { })
  // (if extraWritable != [ ] then { ReadWritePaths = extraWritable; } else { });
in
{
  serviceConfig = if local then localUnit else k8sUnit;
  runsAsRoot = local;
  inherit port localCapabilities;
}
