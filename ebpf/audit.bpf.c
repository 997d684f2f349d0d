// SPDX-License-Identifier: GPL-2.0
/*
 * Loom weaver audit: the tracepoint family (tp_btf sched_process_* + per-syscall tracepoints).
 * Only tasks whose cgroup is registered in `weavers` produce events; everything else returns
 * after one map lookup. Syscall arguments are copied at entry (into `pending`, keyed by thread)
 * and the event is emitted at exit with the return value. A failed ring-buffer write is counted
 * per weaver and kind in `lost` (per-CPU) so the sidecar can report the gap.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "audit.h"

char LICENSE[] SEC("license") = "GPL";

/* Set before load. ancestor_levels > 0 also matches a registered ancestor cgroup (a pod's). */
const volatile __u32 ancestor_levels = 0;

struct {
  __uint(type, BPF_MAP_TYPE_RINGBUF);
  __uint(max_entries, 8 << 20);
} events SEC(".maps");

/* cgroup id -> weaver index */
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MAX_WEAVERS);
  __type(key, __u64);
  __type(value, __u32);
} weavers SEC(".maps");

/* per-CPU losses, index = weaver_idx * K_NKINDS + kind */
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, MAX_WEAVERS * K_NKINDS);
  __type(key, __u32);
  __type(value, __u64);
} lost SEC(".maps");

struct pending {
  __u32 sc;
  __u32 kind;
  __u32 weaver_idx;
  __u32 pad;
  __u64 cgroup_id;
  __u64 args[6];
  struct ev_addr addr;
  __u16 len1, len2;
  __u32 pad2;
  char str[STR_MAX];
};

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __type(key, __u32);
  __type(value, struct pending);
} pendings SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct ev_generic);
} scratch SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct pending);
} pscratch SEC(".maps");

/* tgid -> {exec_id, parent_exec_id} of the current image */
struct exec_ids { __u64 id, parent; };
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 65536);
  __type(key, __u32);
  __type(value, struct exec_ids);
} execs SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, N_SENSITIVE);
  __type(key, __u32);
  __type(value, struct sensitive_prefix);
} sensitive SEC(".maps");

#define O_WRONLY 01
#define O_RDWR 02
#define O_CREAT 0100
#define O_TRUNC 01000
#define O_APPEND 02000
#define PROT_EXEC 0x4
#define MAP_ANONYMOUS 0x20
#define AF_INET 2
#define AF_INET6 10

static __always_inline int weaver_of_current(__u64 *cg, __u32 *idx) {
  __u64 id = bpf_get_current_cgroup_id();
  __u32 *w = bpf_map_lookup_elem(&weavers, &id);
  if (w && *w == EXCLUDED_IDX) return 0; /* the sidecar's own container inside a registered pod */
  if (!w && ancestor_levels) {
    for (int l = 1; l <= 8; l++) {
      if (l > ancestor_levels) break;
      id = bpf_get_current_ancestor_cgroup_id(l);
      w = bpf_map_lookup_elem(&weavers, &id);
      if (w) break;
    }
  }
  if (!w) return 0;
  *cg = id;
  *idx = *w;
  return 1;
}

static __always_inline void count_lost(__u32 idx, __u32 kind) {
  __u32 k = idx * K_NKINDS + kind;
  __u64 *v = bpf_map_lookup_elem(&lost, &k);
  if (v) *v += 1;
}

static __always_inline void exec_ids_of(struct task_struct *t, __u32 tgid, __u64 *id, __u64 *parent) {
  struct exec_ids *e = bpf_map_lookup_elem(&execs, &tgid);
  if (e) {
    *id = e->id;
    *parent = e->parent;
    return;
  }
  /* a process that predates us: its image began when it was forked */
  *id = BPF_CORE_READ(t, group_leader, start_time);
  struct task_struct *p = BPF_CORE_READ(t, real_parent);
  __u32 ptgid = BPF_CORE_READ(p, tgid);
  struct exec_ids *pe = bpf_map_lookup_elem(&execs, &ptgid);
  *parent = pe ? pe->id : BPF_CORE_READ(p, group_leader, start_time);
}

static __always_inline void fill_hdr(struct ev_hdr *h, __u32 kind, __u32 sc, __u64 cg, __u32 idx) {
  struct task_struct *t = bpf_get_current_task_btf();
  __u64 pt = bpf_get_current_pid_tgid();
  h->ts_boot_ns = bpf_ktime_get_boot_ns();
  h->cgroup_id = cg;
  h->kind = kind;
  h->sc = sc;
  h->pid = pt >> 32;
  h->tid = (__u32)pt;
  h->ppid = BPF_CORE_READ(t, real_parent, tgid);
  h->uid = (__u32)bpf_get_current_uid_gid();
  h->weaver_idx = idx;
  bpf_get_current_comm(h->comm, sizeof(h->comm));
  exec_ids_of(t, h->pid, &h->exec_id, &h->parent_exec_id);
}

/* ---------------- process lifecycle ---------------- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child) {
  __u64 cg; __u32 idx;
  if (!weaver_of_current(&cg, &idx)) return 0;
  __u32 cpid = BPF_CORE_READ(child, pid), ctgid = BPF_CORE_READ(child, tgid);
  if (cpid != ctgid) return 0; /* a thread, not a process */
  struct exec_ids ids = {};
  __u32 ptgid = BPF_CORE_READ(parent, tgid);
  struct exec_ids *pe = bpf_map_lookup_elem(&execs, &ptgid);
  ids.id = BPF_CORE_READ(child, start_time);
  ids.parent = pe ? pe->id : BPF_CORE_READ(parent, group_leader, start_time);
  bpf_map_update_elem(&execs, &ctgid, &ids, BPF_ANY);

  __u32 z = 0;
  struct ev_generic *e = bpf_map_lookup_elem(&scratch, &z);
  if (!e) return 0;
  fill_hdr(&e->h, K_PROCESS_FORK, SC_NONE, cg, idx);
  e->h.ret = ctgid;
  e->len1 = 0;
  e->len2 = 0;
  e->args[0] = ctgid;
  e->args[1] = ids.id; /* the child's exec_id */
  e->h.len = offsetof(struct ev_generic, str);
  if (bpf_ringbuf_output(&events, e, offsetof(struct ev_generic, str), 0)) count_lost(idx, K_PROCESS_FORK);
  return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p) {
  __u64 cg; __u32 idx;
  if (!weaver_of_current(&cg, &idx)) return 0;
  /* the last thread of the group reports the process's exit */
  if (BPF_CORE_READ(p, signal, live.counter) != 0) return 0;
  __u32 z = 0;
  struct ev_generic *e = bpf_map_lookup_elem(&scratch, &z);
  if (!e) return 0;
  fill_hdr(&e->h, K_PROCESS_EXIT, SC_NONE, cg, idx);
  __u32 tgid = e->h.pid;
  int code = BPF_CORE_READ(p, exit_code);
  int gcode = BPF_CORE_READ(p, signal, group_exit_code);
  e->h.ret = code ? code : gcode; /* raw wait status: exit code << 8 | signal */
  e->len1 = 0;
  e->len2 = 0;
  e->h.len = offsetof(struct ev_generic, str);
  if (bpf_ringbuf_output(&events, e, offsetof(struct ev_generic, str), 0)) count_lost(idx, K_PROCESS_EXIT);
  bpf_map_delete_elem(&execs, &tgid);
  return 0;
}

static __always_inline void read_cwd(struct ev_exec *e, struct task_struct *t) {
  struct fs_struct *fs = BPF_CORE_READ(t, fs);
  struct dentry *d = BPF_CORE_READ(fs, pwd.dentry);
  struct vfsmount *vm = BPF_CORE_READ(fs, pwd.mnt);
  struct dentry *root = BPF_CORE_READ(fs, root.dentry);
  struct vfsmount *rootmnt = BPF_CORE_READ(fs, root.mnt);
  __u32 n = 0;
  for (int i = 0; i < CWD_DEPTH + 4; i++) {
    if (d == root && vm == rootmnt) break;
    struct dentry *mroot = BPF_CORE_READ(vm, mnt_root);
    if (d == mroot) {
      struct mount *m = container_of(vm, struct mount, mnt);
      struct mount *parent = BPF_CORE_READ(m, mnt_parent);
      if (parent == m) break;
      d = BPF_CORE_READ(m, mnt_mountpoint);
      vm = &parent->mnt;
      continue;
    }
    __u32 k = n;
    if (k >= CWD_DEPTH) break;
    const unsigned char *name = BPF_CORE_READ(d, d_name.name);
    bpf_probe_read_kernel_str(e->cwd[k], CWD_NAME, name);
    n++;
    struct dentry *parent = BPF_CORE_READ(d, d_parent);
    if (parent == d) break;
    d = parent;
  }
  e->cwd_depth = n;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) {
  __u64 cg; __u32 idx;
  if (!weaver_of_current(&cg, &idx)) return 0;
  __u32 tgid = bpf_get_current_pid_tgid() >> 32;
  struct exec_ids ids = {};
  struct exec_ids *old = bpf_map_lookup_elem(&execs, &tgid);
  if (old) {
    ids.parent = old->parent;
  } else {
    struct task_struct *par = BPF_CORE_READ(p, real_parent);
    __u32 ptgid = BPF_CORE_READ(par, tgid);
    struct exec_ids *pe = bpf_map_lookup_elem(&execs, &ptgid);
    ids.parent = pe ? pe->id : BPF_CORE_READ(par, group_leader, start_time);
  }
  ids.id = bpf_ktime_get_ns();
  bpf_map_update_elem(&execs, &tgid, &ids, BPF_ANY);

  struct ev_exec *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
  if (!e) {
    count_lost(idx, K_PROCESS_EXEC);
    return 0;
  }
  fill_hdr(&e->h, K_PROCESS_EXEC, SC_EXECVE, cg, idx);
  e->h.ret = 0;
  e->h.len = sizeof(*e);
  const char *fn = BPF_CORE_READ(bprm, filename);
  long l = bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), fn);
  e->filename_len = l > 0 ? l : 0;
  struct mm_struct *mm = BPF_CORE_READ(p, mm);
  unsigned long as = BPF_CORE_READ(mm, arg_start), ae = BPF_CORE_READ(mm, arg_end);
  __u32 n = ae > as ? ae - as : 0;
  if (n > ARGV_MAX) n = ARGV_MAX;
  e->argv_len = 0;
  if (n > 0) {
    __u32 sz = ((n - 1) & (ARGV_MAX - 1)) + 1; /* 1..ARGV_MAX, in a form the verifier can bound */
    if (bpf_probe_read_user(e->argv, sz, (void *)as) == 0) e->argv_len = sz;
  }
  read_cwd(e, p);
  bpf_ringbuf_submit(e, 0);
  return 0;
}

/* ---------------- syscalls: enter stores, exit emits ---------------- */

static __always_inline int starts_with_sensitive(const char *path) {
  for (__u32 i = 0; i < N_SENSITIVE; i++) {
    __u32 k = i;
    struct sensitive_prefix *sp = bpf_map_lookup_elem(&sensitive, &k);
    if (!sp || sp->len == 0 || sp->len > SENSITIVE_LEN) continue;
    int match = 1;
    for (__u32 j = 0; j < SENSITIVE_LEN; j++) {
      if (j >= sp->len) break;
      if (path[j] != sp->s[j]) { match = 0; break; }
    }
    if (match) return 1;
  }
  return 0;
}

static __always_inline struct pending *begin(__u32 sc, __u32 kind, __u64 *args) {
  __u64 cg; __u32 idx;
  if (!weaver_of_current(&cg, &idx)) return 0;
  __u32 z = 0;
  struct pending *p = bpf_map_lookup_elem(&pscratch, &z);
  if (!p) return 0;
  p->sc = sc;
  p->kind = kind;
  p->weaver_idx = idx;
  p->cgroup_id = cg;
  for (int i = 0; i < 6; i++) p->args[i] = args[i];
  p->len1 = 0;
  p->len2 = 0;
  __builtin_memset(&p->addr, 0, sizeof(p->addr));
  return p;
}

static __always_inline void commit(struct pending *p) {
  __u32 tid = (__u32)bpf_get_current_pid_tgid();
  if (bpf_map_update_elem(&pendings, &tid, p, BPF_ANY)) count_lost(p->weaver_idx, p->kind);
}

static __always_inline void str1(struct pending *p, __u64 uptr) {
  long l = bpf_probe_read_user_str(p->str, PATH_MAX_READ, (void *)uptr);
  p->len1 = l > 0 ? l : 0;
}

static __always_inline void str2(struct pending *p, __u64 uptr) {
  __u32 off = p->len1 & (PATH_MAX_READ - 1);
  long l = bpf_probe_read_user_str(p->str + off, PATH_MAX_READ, (void *)uptr);
  p->len2 = l > 0 ? l : 0;
}

static __always_inline void sock_addrs(struct ev_addr *a, int fd) {
  struct task_struct *t = bpf_get_current_task_btf();
  struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
  unsigned int max = BPF_CORE_READ(fdt, max_fds);
  if (fd < 0 || (unsigned int)fd >= max) return;
  struct file **arr = BPF_CORE_READ(fdt, fd);
  struct file *f = 0;
  bpf_probe_read_kernel(&f, sizeof(f), &arr[fd]);
  if (!f) return;
  struct socket *so = BPF_CORE_READ(f, private_data);
  struct sock *sk = BPF_CORE_READ(so, sk);
  if (!sk) return;
  a->family = BPF_CORE_READ(sk, __sk_common.skc_family);
  a->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
  a->rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
  /* explicit sizes: BPF_CORE_READ_INTO on an array destination would copy one byte */
  if (a->family == AF_INET) {
    bpf_core_read(a->laddr, 4, &sk->__sk_common.skc_rcv_saddr);
    bpf_core_read(a->raddr, 4, &sk->__sk_common.skc_daddr);
  } else if (a->family == AF_INET6) {
    bpf_core_read(a->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
    bpf_core_read(a->raddr, 16, &sk->__sk_common.skc_v6_daddr);
  }
}

static __always_inline int on_exit_common(long ret) {
  __u32 tid = (__u32)bpf_get_current_pid_tgid();
  struct pending *p = bpf_map_lookup_elem(&pendings, &tid);
  if (!p) return 0;
  __u32 z = 0;
  struct ev_generic *e = bpf_map_lookup_elem(&scratch, &z);
  if (!e) {
    bpf_map_delete_elem(&pendings, &tid);
    return 0;
  }
  __u32 kind = p->kind, sc = p->sc;
  if ((sc == SC_EXECVE || sc == SC_EXECVEAT) && ret >= 0) {
    /* a successful exec is reported by sched_process_exec with the bprm's filename */
    bpf_map_delete_elem(&pendings, &tid);
    return 0;
  }
  fill_hdr(&e->h, kind, sc, p->cgroup_id, p->weaver_idx);
  e->h.ret = ret;
  for (int i = 0; i < 6; i++) e->args[i] = p->args[i];
  e->addr = p->addr;
  if ((sc == SC_ACCEPT || sc == SC_ACCEPT4) && ret >= 0) sock_addrs(&e->addr, ret);
  if (sc == SC_LISTEN && ret == 0) sock_addrs(&e->addr, p->args[0]);
  if (sc == SC_CONNECT) {
    /* local side as bound after the connect */
    struct ev_addr a = {};
    sock_addrs(&a, p->args[0]);
    e->addr.lport = a.lport;
    __builtin_memcpy(e->addr.laddr, a.laddr, 16);
  }
  e->len1 = p->len1;
  e->len2 = p->len2;
  __builtin_memcpy(e->str, p->str, STR_MAX);
  __u32 size = offsetof(struct ev_generic, str) + (((__u32)e->len1 + (__u32)e->len2) & (STR_MAX - 1));
  if (e->len1 + e->len2 >= STR_MAX) size = sizeof(*e);
  e->h.len = size;
  if (size > sizeof(*e)) size = sizeof(*e);
  __u32 idx = p->weaver_idx;
  bpf_map_delete_elem(&pendings, &tid);
  if (bpf_ringbuf_output(&events, e, size, 0)) count_lost(idx, kind);
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

static __always_inline int inet_fd(int fd) {
  struct ev_addr x = {};
  sock_addrs(&x, fd);
  return x.family == AF_INET || x.family == AF_INET6;
}

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
