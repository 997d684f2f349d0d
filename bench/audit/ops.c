/* Syscall micro-workloads for bench/audit. Prints "CPU_NS WALL_NS" per operation: CPU is the user
 * + system time of this process and of every child it waited for (getrusage), so time spent
 * waiting for a CPU on a busy machine is left out while the BPF programs' time, which runs inside
 * the syscalls, is counted.
 *   ops openclose N FILE | getppid N | forkexec N | files N DIR (create N files, for events/s)
 *   ops cmd N ARGV...    (fork+exec+wait ARGV N times: a whole job, children included) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static double tv(struct timeval t) { return t.tv_sec * 1e9 + t.tv_usec * 1e3; }
static double cpu(void) {
  struct rusage s, c;
  getrusage(RUSAGE_SELF, &s);
  getrusage(RUSAGE_CHILDREN, &c);
  return tv(s.ru_utime) + tv(s.ru_stime) + tv(c.ru_utime) + tv(c.ru_stime);
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  long n = atol(argv[2]);
  double c0 = cpu(), t0 = now();
  if (!strcmp(argv[1], "openclose")) {
    for (long i = 0; i < n; i++) { int fd = open(argv[3], O_WRONLY | O_CREAT, 0600); close(fd); }
  } else if (!strcmp(argv[1], "getppid")) {
    for (long i = 0; i < n; i++) getppid();
  } else if (!strcmp(argv[1], "forkexec")) {
    for (long i = 0; i < n; i++) {
      pid_t p = fork();
      if (p == 0) { execl("/bin/true", "true", (char *)0); _exit(127); }
      waitpid(p, 0, 0);
    }
  } else if (!strcmp(argv[1], "files")) {
    char path[512];
    for (long i = 0; i < n; i++) { snprintf(path, sizeof path, "%s/f%ld", argv[3], i % 1000); int fd = open(path, O_WRONLY | O_CREAT, 0600); close(fd); }
  } else if (!strcmp(argv[1], "cmd") && argc > 3) {
    for (long i = 0; i < n; i++) {
      pid_t p = fork();
      if (p == 0) { execvp(argv[3], argv + 3); _exit(127); }
      int st;
      waitpid(p, &st, 0);
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 1;
    }
  } else return 2;
  printf("%.1f %.1f\n", (cpu() - c0) / n, (now() - t0) / n);
  return 0;
}
