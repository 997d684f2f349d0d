// SPDX-License-Identifier: GPL-2.0
/* Load probes for the optional LSM/fentry hook family: each program is loaded on its own at
 * sidecar start; a kernel that refuses them (EPERM here) keeps the tracepoint family. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("fentry/do_unlinkat")
int BPF_PROG(probe_fentry, int dfd, struct filename *name) { return 0; }

SEC("lsm/file_open")
int BPF_PROG(probe_lsm, struct file *file) { return 0; }
