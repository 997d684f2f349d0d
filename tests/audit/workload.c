/* The audit tests' workload, built static at test time (gcc -static) and run inside a weaver.
 *   workload marker            → exits 7 (the exec the test counts)
 *   workload run N M K DIR     → N execs of "marker", M file creations in DIR, K accepted loopback
 *                                connects, setuid(0), unshare(CLONE_NEWUSER), memfd_create,
 *                                mprotect(PROT_EXEC); prints one RESULT line with what each returned
 *   workload overload M DIR    → M file creations as fast as possible, then a marker exec every 100 ms forever
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int ret_of(long r) { return r < 0 ? -errno : (int)r; }

static int run_marker(const char *self) {
  pid_t p = fork();
  if (p == 0) {
    execl(self, self, "marker", (char *)0);
    _exit(127);
  }
  int st = 0;
  waitpid(p, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void create_files(const char *dir, int m, const char *prefix) {
  char path[512];
  for (int i = 0; i < m; i++) {
    snprintf(path, sizeof path, "%s/%s%d", dir, prefix, i);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
    if (fd >= 0) close(fd);
  }
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "marker") == 0) return 7;
  if (argc == 4 && strcmp(argv[1], "overload") == 0) {
    create_files(argv[3], atoi(argv[2]), "ovl-");
    printf("OVERLOAD-DONE\n");
    fflush(stdout);
    for (;;) {
      run_marker(argv[0]);
      usleep(100000);
    }
  }
  if (argc != 6 || strcmp(argv[1], "run") != 0) {
    fprintf(stderr, "usage: workload run N M K DIR | overload M DIR | marker\n");
    return 2;
  }
  int n = atoi(argv[2]), m = atoi(argv[3]), k = atoi(argv[4]);
  const char *dir = argv[5];
  int marker_ok = 0;
  for (int i = 0; i < n; i++) marker_ok += run_marker(argv[0]) == 7;
  create_files(dir, m, "audit-file-");

  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(ls, (struct sockaddr *)&a, sizeof a);
  int listen_ret = ret_of(listen(ls, 64));
  socklen_t al = sizeof a;
  getsockname(ls, (struct sockaddr *)&a, &al);
  int accepted = 0, connected = 0;
  for (int i = 0; i < k; i++) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof a) == 0) connected++;
    int s = accept(ls, 0, 0);
    if (s >= 0) accepted++, close(s);
    close(c);
  }
  close(ls);

  int setuid_ret = ret_of(setuid(0));
  int unshare_ret = ret_of(unshare(CLONE_NEWUSER));
  int memfd = ret_of(syscall(SYS_memfd_create, "audit-memfd", 0));
  if (memfd >= 0) close(memfd);
  void *pg = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  int mprotect_ret = ret_of(mprotect(pg, 4096, PROT_READ | PROT_EXEC));
  printf("RESULT {\"markers\":%d,\"port\":%d,\"listen\":%d,\"connected\":%d,\"accepted\":%d,\"setuid\":%d,\"unshare\":%d,\"memfd\":%d,\"mprotect\":%d,\"pid\":%d}\n",
         marker_ok, ntohs(a.sin_port), listen_ret, connected, accepted, setuid_ret, unshare_ret, memfd, mprotect_ret, getpid());
  fflush(stdout);
  return 0;
}
