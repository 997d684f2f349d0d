// SPDX-License-Identifier: GPL-2.0
/*
 * Loom weaver audit, the fentry family: one fexit program per audited syscall function sees the
 * syscall's arguments and its return value at once, so no per-thread `pendings` entry is stored
 * between entry and exit (the tracepoint family needs two programs and a map update per call).
 * Chosen by the sidecar's load probe where the kernel allows BPF trampolines; a kernel that
 * refuses them (EPERM on the machine class Loom is developed on) gets audit.bpf.c instead.
 * Events, kinds and results are the same as the tracepoint family's: decode.ts reads both.
 *
 * Why fexit and not lsm/ hooks: an LSM hook runs before the operation and never sees its result,
 * and every audit event carries one (return value or errno).
 */
#include "audit_common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* libbpf 1.1 (Debian 12) has no PT_REGS_PARM6_CORE_SYSCALL */
#if defined(__TARGET_ARCH_x86)
#define SYS(name) "fexit/__x64_sys_" #name
#define PARM6(regs) BPF_CORE_READ(regs, r9)
#elif defined(__TARGET_ARCH_arm64)
#define SYS(name) "fexit/__arm64_sys_" #name
#define PARM6(regs) BPF_CORE_READ((const struct user_pt_regs *)(regs), regs[5])
#else
#error "the fentry family names the syscall functions of x86 and arm64 only"
#endif

/* the syscall's own arguments, from the user registers the syscall function received */
static __always_inline void sys_args(struct pt_regs *regs, __u64 *a) {
  a[0] = PT_REGS_PARM1_CORE_SYSCALL(regs);
  a[1] = PT_REGS_PARM2_CORE_SYSCALL(regs);
  a[2] = PT_REGS_PARM3_CORE_SYSCALL(regs);
  a[3] = PT_REGS_PARM4_CORE_SYSCALL(regs);
  a[4] = PT_REGS_PARM5_CORE_SYSCALL(regs);
  a[5] = PARM6(regs);
}

#define FX(name, sc, kind, body) \
  SEC(SYS(name)) \
  int BPF_PROG(fx_##name, struct pt_regs *regs, long ret) { \
    __u64 a[6]; sys_args(regs, a); \
    struct pending *p = begin(sc, kind, a); if (!p) return 0; \
    body; \
    emit(p, ret); return 0; }

#define PLAIN(name, sc, kind) FX(name, sc, kind, )
#define PATH1(name, sc, kind, i) FX(name, sc, kind, str1(p, a[i]))
#define PATH2(name, sc, kind, i, j) FX(name, sc, kind, str1(p, a[i]); str2(p, a[j]))

/* opens: write intent, or a read-only open of a sensitive path */
static __always_inline int open_common(struct pt_regs *regs, long ret, __u32 sc, int pi, int fi, __u64 fixed) {
  __u64 a[6];
  sys_args(regs, a);
  __u64 flags = fixed;
  if (fi >= 0) flags = a[fi];
  if (sc == SC_OPENAT2) {
    flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), (void *)a[2]); /* struct open_how.flags */
  }
  struct pending *p = begin(sc, K_FILE_OPEN, a);
  if (!p) return 0;
  str1(p, a[pi]);
  p->args[5] = flags; /* normalised open flags */
  if (!(flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND)) && !starts_with_sensitive(p->str)) return 0;
  emit(p, ret);
  return 0;
}

SEC(SYS(open))
int BPF_PROG(fx_open, struct pt_regs *regs, long ret) { return open_common(regs, ret, SC_OPEN, 0, 1, 0); }
SEC(SYS(openat))
int BPF_PROG(fx_openat, struct pt_regs *regs, long ret) { return open_common(regs, ret, SC_OPENAT, 1, 2, 0); }
SEC(SYS(creat))
int BPF_PROG(fx_creat, struct pt_regs *regs, long ret) { return open_common(regs, ret, SC_CREAT, 0, -1, O_CREAT | O_WRONLY | O_TRUNC); }
SEC(SYS(openat2))
int BPF_PROG(fx_openat2, struct pt_regs *regs, long ret) { return open_common(regs, ret, SC_OPENAT2, 1, -1, 0); }

/* failed execs only: a successful one is sched_process_exec's (emit() drops it) */
PATH1(execve, SC_EXECVE, K_PROCESS_EXEC, 0)
PATH1(execveat, SC_EXECVEAT, K_PROCESS_EXEC, 1)

PATH1(unlink, SC_UNLINK, K_FILE_WRITE, 0)
PATH1(unlinkat, SC_UNLINKAT, K_FILE_WRITE, 1)
PATH2(rename, SC_RENAME, K_FILE_WRITE, 0, 1)
PATH2(renameat, SC_RENAMEAT, K_FILE_WRITE, 1, 3)
PATH2(renameat2, SC_RENAMEAT2, K_FILE_WRITE, 1, 3)
PATH1(truncate, SC_TRUNCATE, K_FILE_WRITE, 0)

PATH1(chmod, SC_CHMOD, K_FILE_METADATA, 0)
PLAIN(fchmod, SC_FCHMOD, K_FILE_METADATA)
PATH1(fchmodat, SC_FCHMODAT, K_FILE_METADATA, 1)
PATH1(fchmodat2, SC_FCHMODAT2, K_FILE_METADATA, 1)
PATH1(chown, SC_CHOWN, K_FILE_METADATA, 0)
PLAIN(fchown, SC_FCHOWN, K_FILE_METADATA)
PATH1(lchown, SC_LCHOWN, K_FILE_METADATA, 0)
PATH1(fchownat, SC_FCHOWNAT, K_FILE_METADATA, 1)

SEC(SYS(connect))
int BPF_PROG(fx_connect, struct pt_regs *regs, long ret) {
  __u64 a[6];
  sys_args(regs, a);
  __u16 fam = 0;
  bpf_probe_read_user(&fam, sizeof(fam), (void *)a[1]);
  if (fam != AF_INET && fam != AF_INET6) return 0; /* unix sockets are not network activity */
  struct pending *p = begin(SC_CONNECT, K_NETWORK_CONNECT, a);
  if (!p) return 0;
  p->addr.family = fam;
  __u16 port = 0;
  bpf_probe_read_user(&port, sizeof(port), (void *)(a[1] + 2));
  p->addr.rport = __builtin_bswap16(port);
  if (fam == AF_INET) bpf_probe_read_user(p->addr.raddr, 4, (void *)(a[1] + 4));
  else bpf_probe_read_user(p->addr.raddr, 16, (void *)(a[1] + 8));
  emit(p, ret);
  return 0;
}

#define INET(name, sc, kind) \
  SEC(SYS(name)) \
  int BPF_PROG(fx_##name, struct pt_regs *regs, long ret) { \
    __u64 a[6]; sys_args(regs, a); \
    struct pending *p = begin(sc, kind, a); \
    if (!p || !inet_fd(a[0])) return 0; \
    emit(p, ret); return 0; }
INET(listen, SC_LISTEN, K_NETWORK_LISTEN)
INET(accept, SC_ACCEPT, K_NETWORK_ACCEPT)
INET(accept4, SC_ACCEPT4, K_NETWORK_ACCEPT)

PLAIN(setuid, SC_SETUID, K_PRIVILEGE_CHANGE)
PLAIN(setgid, SC_SETGID, K_PRIVILEGE_CHANGE)
PLAIN(setreuid, SC_SETREUID, K_PRIVILEGE_CHANGE)
PLAIN(setregid, SC_SETREGID, K_PRIVILEGE_CHANGE)
PLAIN(setresuid, SC_SETRESUID, K_PRIVILEGE_CHANGE)
PLAIN(setresgid, SC_SETRESGID, K_PRIVILEGE_CHANGE)
PLAIN(setfsuid, SC_SETFSUID, K_PRIVILEGE_CHANGE)
PLAIN(setfsgid, SC_SETFSGID, K_PRIVILEGE_CHANGE)
PLAIN(capset, SC_CAPSET, K_PRIVILEGE_CHANGE)

PLAIN(setns, SC_SETNS, K_SANDBOX_ESCAPE)
PLAIN(unshare, SC_UNSHARE, K_SANDBOX_ESCAPE)
PATH2(mount, SC_MOUNT, K_SANDBOX_ESCAPE, 0, 1)
PLAIN(ptrace, SC_PTRACE, K_SANDBOX_ESCAPE)
PLAIN(bpf, SC_BPF, K_SANDBOX_ESCAPE)
PLAIN(init_module, SC_INIT_MODULE, K_SANDBOX_ESCAPE)
PLAIN(finit_module, SC_FINIT_MODULE, K_SANDBOX_ESCAPE)
PLAIN(perf_event_open, SC_PERF_EVENT_OPEN, K_SANDBOX_ESCAPE)

PATH1(memfd_create, SC_MEMFD_CREATE, K_MEMORY_EXEC, 0)

SEC(SYS(mmap))
int BPF_PROG(fx_mmap, struct pt_regs *regs, long ret) {
  __u64 a[6];
  sys_args(regs, a);
  /* anonymous executable mappings only: file-backed PROT_EXEC maps are every dynamic loader's work */
  if (!(a[2] & PROT_EXEC) || !(a[3] & MAP_ANONYMOUS)) return 0;
  struct pending *p = begin(SC_MMAP, K_MEMORY_EXEC, a);
  if (p) emit(p, ret);
  return 0;
}

SEC(SYS(mprotect))
int BPF_PROG(fx_mprotect, struct pt_regs *regs, long ret) {
  __u64 a[6];
  sys_args(regs, a);
  if (!(a[2] & PROT_EXEC)) return 0;
  struct pending *p = begin(SC_MPROTECT, K_MEMORY_EXEC, a);
  if (p) emit(p, ret);
  return 0;
}
