/* Syscall micro-workloads for bench/audit: prints ns per operation.
 *   ops openclose N FILE | getppid N | forkexec N | files N DIR (create N files, for events/s) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  long n = atol(argv[2]);
  double t0 = now();
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
  } else return 2;
  printf("%.1f\n", (now() - t0) / n);
  return 0;
}
