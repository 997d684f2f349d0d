#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
/* loom-attach-relay <dir> <name>: stdio <-> conmon attach socket (SOCK_SEQPACKET). */
static int write_all(int fd, const char *b, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, b, n);
    if (w < 0) { if (errno == EINTR) continue; return -1; }
    b += w; n -= (size_t)w;
  }
  return 0;
}
int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: %s dir name\n", argv[0]); return 2; }
  signal(SIGPIPE, SIG_IGN);
  int dfd = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) { perror("open socket dir"); return 1; }
  struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof a.sun_path, "/proc/self/fd/%d/%s", dfd, argv[2]);
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) { perror("socket"); return 1; }
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
  write_all(2, "+\n", 2); /* connected */
  static char buf[65536];
  struct pollfd p[2] = {{0, POLLIN, 0}, {s, POLLIN, 0}};
  int in_open = 1;
  for (;;) {
    p[0].fd = in_open ? 0 : -1;
    if (poll(p, 2, -1) < 0) { if (errno == EINTR) continue; perror("poll"); return 1; }
    if (p[1].revents) {
      ssize_t n = recv(s, buf, sizeof buf, 0);
      if (n < 0) { if (errno == EINTR || errno == EAGAIN) continue; return 0; }
      if (n == 0) return 0;
      if (n > 1 && write_all(1, buf + 1, (size_t)n - 1) < 0) return 0;
    }
    if (in_open && p[0].revents) {
      ssize_t n = read(0, buf, 4096);
      if (n < 0) { if (errno == EINTR || errno == EAGAIN) continue; return 0; }
      if (n == 0) return 0; /* detach: the container keeps running */
      if (send(s, buf, (size_t)n, MSG_NOSIGNAL) < 0) return 0;
    }
  }
}
