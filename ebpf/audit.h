/* Shared between audit.bpf.c (kernel) and the addon; the byte layout is decoded by src/audit/decode.ts. */
#ifndef LOOM_AUDIT_H
#define LOOM_AUDIT_H

/* Event kinds (index into src/audit/decode.ts EVENT_KINDS). */
enum ev_kind {
  K_PROCESS_EXEC = 0,
  K_PROCESS_FORK = 1,
  K_PROCESS_EXIT = 2,
  K_FILE_OPEN = 3,
  K_FILE_WRITE = 4,
  K_FILE_METADATA = 5,
  K_NETWORK_CONNECT = 6,
  K_NETWORK_LISTEN = 7,
  K_NETWORK_ACCEPT = 8,
  K_PRIVILEGE_CHANGE = 9,
  K_SANDBOX_ESCAPE = 10,
  K_MEMORY_EXEC = 11,
  K_NKINDS = 12,
};

/* Syscall codes (index into src/audit/decode.ts SYSCALLS). */
enum sc_code {
  SC_NONE = 0,
  SC_EXECVE, SC_EXECVEAT,
  SC_OPEN, SC_OPENAT, SC_OPENAT2, SC_CREAT,
  SC_UNLINK, SC_UNLINKAT, SC_RENAME, SC_RENAMEAT, SC_RENAMEAT2, SC_TRUNCATE,
  SC_CHMOD, SC_FCHMOD, SC_FCHMODAT, SC_FCHMODAT2, SC_CHOWN, SC_FCHOWN, SC_LCHOWN, SC_FCHOWNAT,
  SC_CONNECT, SC_LISTEN, SC_ACCEPT, SC_ACCEPT4,
  SC_SETUID, SC_SETGID, SC_SETREUID, SC_SETREGID, SC_SETRESUID, SC_SETRESGID, SC_SETFSUID, SC_SETFSGID, SC_CAPSET,
  SC_SETNS, SC_UNSHARE, SC_MOUNT, SC_PTRACE, SC_BPF, SC_INIT_MODULE, SC_FINIT_MODULE, SC_PERF_EVENT_OPEN,
  SC_MEMFD_CREATE, SC_MMAP, SC_MPROTECT,
  SC_NCODES,
};

#define MAX_WEAVERS 4096
#define EXCLUDED_IDX 0xffffffffu
#define STR_MAX 512     /* both strings of a generic event together */
#define PATH_MAX_READ 256
#define ARGV_MAX 1024
#define CWD_DEPTH 12
#define CWD_NAME 64
#define N_SENSITIVE 16
#define SENSITIVE_LEN 64

struct ev_hdr {
  __u64 ts_boot_ns;     /* bpf_ktime_get_boot_ns */
  __u64 cgroup_id;
  __u64 exec_id;        /* start of the current process image (ns, monotonic) */
  __u64 parent_exec_id;
  __s64 ret;
  __u32 kind;
  __u32 sc;
  __u32 pid, tid, ppid, uid;
  char comm[16];
  __u32 weaver_idx;
  __u32 len;            /* bytes of this record */
}; /* 88 bytes */

/* Socket addresses as read from the kernel socket (listen/accept) or from the user's sockaddr (connect). */
struct ev_addr {
  __u16 family;
  __u16 lport;          /* host order */
  __u16 rport;          /* host order */
  __u16 pad;
  __u8 laddr[16];
  __u8 raddr[16];
}; /* 40 bytes */

struct ev_generic {
  struct ev_hdr h;
  __u64 args[6];
  struct ev_addr addr;
  __u16 len1, len2;     /* lengths of str1, str2 (including NUL; 0 = absent) */
  __u32 pad;
  char str[STR_MAX];    /* str1 at 0, str2 at len1 */
};

struct ev_exec {
  struct ev_hdr h;
  __u32 filename_len;
  __u32 argv_len;
  __u32 cwd_depth;      /* components, innermost first */
  __u32 pad;
  char filename[PATH_MAX_READ];
  char argv[ARGV_MAX];
  char cwd[CWD_DEPTH][CWD_NAME];
};

struct sensitive_prefix {
  __u32 len;            /* 0 = unused slot */
  char s[SENSITIVE_LEN];
};

#endif
