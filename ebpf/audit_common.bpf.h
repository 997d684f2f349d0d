// SPDX-License-Identifier: GPL-2.0
#ifndef LOOM_AUDIT_COMMON_BPF_H
#define LOOM_AUDIT_COMMON_BPF_H
/*
 * Loom weaver audit: what both hook families share — maps, the weaver filter, event headers, the
 * process lifecycle (tp_btf sched_process_exec/fork/exit) and the syscall event emitter. Included
 * by exactly one .bpf.c per object: audit.bpf.c (per-syscall tracepoints) or audit_fentry.bpf.c
 * (fexit on the syscall functions). Only tasks whose cgroup is registered in `weavers` produce
 * events; everything else returns after one map lookup. A failed ring-buffer write is counted per
 * weaver and kind in `lost` (per-CPU) so the sidecar can report the gap.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "audit.h"

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

/* ---------------- syscalls: what both families share ---------------- */

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

/* Emits the syscall event of `p` (its arguments, copied at entry or at fexit) with its result. */
static __always_inline void emit(struct pending *p, long ret) {
  __u32 z = 0;
  struct ev_generic *e = bpf_map_lookup_elem(&scratch, &z);
  if (!e) return;
  __u32 kind = p->kind, sc = p->sc;
  /* a successful exec is reported by sched_process_exec with the bprm's filename */
  if ((sc == SC_EXECVE || sc == SC_EXECVEAT) && ret >= 0) return;
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
  if (bpf_ringbuf_output(&events, e, size, 0)) count_lost(p->weaver_idx, kind);
}

static __always_inline int inet_fd(int fd) {
  struct ev_addr x = {};
  sock_addrs(&x, fd);
  return x.family == AF_INET || x.family == AF_INET6;
}

#endif
