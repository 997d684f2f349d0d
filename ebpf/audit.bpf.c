// SPDX-License-Identifier: GPL-2.0
/*
 * Loom weaver audit, the tracepoint family: per-syscall sys_enter_* tracepoints copy the arguments
 * (into `pendings`, keyed by thread) and the matching sys_exit_* emits the event with the return
 * value. No raw sys_enter dispatcher: a syscall nobody audits pays nothing. This is the family a
 * kernel that refuses fentry (audit_fentry.bpf.c) loads, so it is complete on its own.
 */
#include "audit_common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

static __always_inline int on_exit_common(long ret) {
  __u32 tid = (__u32)bpf_get_current_pid_tgid();
  struct pending *p = bpf_map_lookup_elem(&pendings, &tid);
  if (!p) return 0;
  emit(p, ret);
  bpf_map_delete_elem(&pendings, &tid);
  return 0;
}

/* Read only the syscall's own arguments: a program that reads past its tracepoint's record is
 * refused at attach (EACCES). */
#define A1 a[0] = ctx->args[0]
#define A2 A1; a[1] = ctx->args[1]
#define A3 A2; a[2] = ctx->args[2]
#define A4 A3; a[3] = ctx->args[3]
#define A5 A4; a[4] = ctx->args[4]
#define A6 A5; a[5] = ctx->args[5]
#define ARGS(n) __u64 a[6] = {}; A##n
#define EXIT(name) \
  SEC("tracepoint/syscalls/sys_exit_" #name) \
  int exit_##name(struct trace_event_raw_sys_exit *ctx) { return on_exit_common(ctx->ret); }

/* args only */
#define PLAIN(name, sc, kind, n) \
  SEC("tracepoint/syscalls/sys_enter_" #name) \
  int enter_##name(struct trace_event_raw_sys_enter *ctx) { \
    ARGS(n); struct pending *p = begin(sc, kind, a); if (p) commit(p); return 0; } \
  EXIT(name)

/* a path argument at index i */
#define PATH1(name, sc, kind, i, n) \
  SEC("tracepoint/syscalls/sys_enter_" #name) \
  int enter_##name(struct trace_event_raw_sys_enter *ctx) { \
    ARGS(n); struct pending *p = begin(sc, kind, a); if (!p) return 0; str1(p, a[i]); commit(p); return 0; } \
  EXIT(name)

#define PATH2(name, sc, kind, i, j, n) \
  SEC("tracepoint/syscalls/sys_enter_" #name) \
  int enter_##name(struct trace_event_raw_sys_enter *ctx) { \
    ARGS(n); struct pending *p = begin(sc, kind, a); if (!p) return 0; str1(p, a[i]); str2(p, a[j]); commit(p); return 0; } \
  EXIT(name)

static __always_inline int open_common(struct trace_event_raw_sys_enter *ctx, __u32 sc, int pi, __u64 flags) {
  __u64 a[6] = {};
  a[0] = ctx->args[0];
  if (pi == 1) a[1] = ctx->args[1];
  struct pending *p = begin(sc, K_FILE_OPEN, a);
  if (!p) return 0;
  str1(p, a[pi]);
  p->args[5] = flags; /* normalised open flags */
  if (!(flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND)) && !starts_with_sensitive(p->str)) return 0;
  commit(p);
  return 0;
}

SEC("tracepoint/syscalls/sys_enter_open")
int enter_open(struct trace_event_raw_sys_enter *ctx) { return open_common(ctx, SC_OPEN, 0, ctx->args[1]); }
EXIT(open)
SEC("tracepoint/syscalls/sys_enter_openat")
int enter_openat(struct trace_event_raw_sys_enter *ctx) { return open_common(ctx, SC_OPENAT, 1, ctx->args[2]); }
EXIT(openat)
SEC("tracepoint/syscalls/sys_enter_creat")
int enter_creat(struct trace_event_raw_sys_enter *ctx) { return open_common(ctx, SC_CREAT, 0, O_CREAT | O_WRONLY | O_TRUNC); }
EXIT(creat)
SEC("tracepoint/syscalls/sys_enter_openat2")
int enter_openat2(struct trace_event_raw_sys_enter *ctx) {
  __u64 flags = 0;
  bpf_probe_read_user(&flags, sizeof(flags), (void *)ctx->args[2]); /* struct open_how.flags */
  return open_common(ctx, SC_OPENAT2, 1, flags);
}
EXIT(openat2)

PATH1(execve, SC_EXECVE, K_PROCESS_EXEC, 0, 3)
PATH1(execveat, SC_EXECVEAT, K_PROCESS_EXEC, 1, 5)

PATH1(unlink, SC_UNLINK, K_FILE_WRITE, 0, 1)
PATH1(unlinkat, SC_UNLINKAT, K_FILE_WRITE, 1, 3)
PATH2(rename, SC_RENAME, K_FILE_WRITE, 0, 1, 2)
PATH2(renameat, SC_RENAMEAT, K_FILE_WRITE, 1, 3, 4)
PATH2(renameat2, SC_RENAMEAT2, K_FILE_WRITE, 1, 3, 5)
PATH1(truncate, SC_TRUNCATE, K_FILE_WRITE, 0, 2)

PATH1(chmod, SC_CHMOD, K_FILE_METADATA, 0, 2)
PLAIN(fchmod, SC_FCHMOD, K_FILE_METADATA, 2)
PATH1(fchmodat, SC_FCHMODAT, K_FILE_METADATA, 1, 3)
PATH1(fchmodat2, SC_FCHMODAT2, K_FILE_METADATA, 1, 4)
PATH1(chown, SC_CHOWN, K_FILE_METADATA, 0, 3)
PLAIN(fchown, SC_FCHOWN, K_FILE_METADATA, 3)
PATH1(lchown, SC_LCHOWN, K_FILE_METADATA, 0, 3)
PATH1(fchownat, SC_FCHOWNAT, K_FILE_METADATA, 1, 5)

SEC("tracepoint/syscalls/sys_enter_connect")
int enter_connect(struct trace_event_raw_sys_enter *ctx) {
  ARGS(3);
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
  commit(p);
  return 0;
}
EXIT(connect)

SEC("tracepoint/syscalls/sys_enter_listen")
int enter_listen(struct trace_event_raw_sys_enter *ctx) {
  ARGS(2);
  struct pending *p = begin(SC_LISTEN, K_NETWORK_LISTEN, a);
  if (!p || !inet_fd(a[0])) return 0;
  commit(p);
  return 0;
}
EXIT(listen)

SEC("tracepoint/syscalls/sys_enter_accept")
int enter_accept(struct trace_event_raw_sys_enter *ctx) {
  ARGS(3);
  struct pending *p = begin(SC_ACCEPT, K_NETWORK_ACCEPT, a);
  if (!p || !inet_fd(a[0])) return 0;
  commit(p);
  return 0;
}
EXIT(accept)
SEC("tracepoint/syscalls/sys_enter_accept4")
int enter_accept4(struct trace_event_raw_sys_enter *ctx) {
  ARGS(4);
  struct pending *p = begin(SC_ACCEPT4, K_NETWORK_ACCEPT, a);
  if (!p || !inet_fd(a[0])) return 0;
  commit(p);
  return 0;
}
EXIT(accept4)

PLAIN(setuid, SC_SETUID, K_PRIVILEGE_CHANGE, 1)
PLAIN(setgid, SC_SETGID, K_PRIVILEGE_CHANGE, 1)
PLAIN(setreuid, SC_SETREUID, K_PRIVILEGE_CHANGE, 2)
PLAIN(setregid, SC_SETREGID, K_PRIVILEGE_CHANGE, 2)
PLAIN(setresuid, SC_SETRESUID, K_PRIVILEGE_CHANGE, 3)
PLAIN(setresgid, SC_SETRESGID, K_PRIVILEGE_CHANGE, 3)
PLAIN(setfsuid, SC_SETFSUID, K_PRIVILEGE_CHANGE, 1)
PLAIN(setfsgid, SC_SETFSGID, K_PRIVILEGE_CHANGE, 1)
PLAIN(capset, SC_CAPSET, K_PRIVILEGE_CHANGE, 2)

PLAIN(setns, SC_SETNS, K_SANDBOX_ESCAPE, 2)
PLAIN(unshare, SC_UNSHARE, K_SANDBOX_ESCAPE, 1)
PATH2(mount, SC_MOUNT, K_SANDBOX_ESCAPE, 0, 1, 5)
PLAIN(ptrace, SC_PTRACE, K_SANDBOX_ESCAPE, 4)
PLAIN(bpf, SC_BPF, K_SANDBOX_ESCAPE, 3)
PLAIN(init_module, SC_INIT_MODULE, K_SANDBOX_ESCAPE, 3)
PLAIN(finit_module, SC_FINIT_MODULE, K_SANDBOX_ESCAPE, 3)
PLAIN(perf_event_open, SC_PERF_EVENT_OPEN, K_SANDBOX_ESCAPE, 5)

PATH1(memfd_create, SC_MEMFD_CREATE, K_MEMORY_EXEC, 0, 2)

SEC("tracepoint/syscalls/sys_enter_mmap")
int enter_mmap(struct trace_event_raw_sys_enter *ctx) {
  ARGS(6);
  /* anonymous executable mappings only: file-backed PROT_EXEC maps are every dynamic loader's work */
  if (!(a[2] & PROT_EXEC) || !(a[3] & MAP_ANONYMOUS)) return 0;
  struct pending *p = begin(SC_MMAP, K_MEMORY_EXEC, a);
  if (p) commit(p);
  return 0;
}
EXIT(mmap)

SEC("tracepoint/syscalls/sys_enter_mprotect")
int enter_mprotect(struct trace_event_raw_sys_enter *ctx) {
  ARGS(3);
  if (!(a[2] & PROT_EXEC)) return 0;
  struct pending *p = begin(SC_MPROTECT, K_MEMORY_EXEC, a);
  if (p) commit(p);
  return 0;
}
EXIT(mprotect)
