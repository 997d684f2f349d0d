#define _GNU_SOURCE
/*
 * loom-exec [-t -s SOCK] [-c COLS -r ROWS] -p PIDFILE -C CTLFD -S STATUSFD -- RUNTIME ARGS...
 *
 * Runs `runc exec --detach …` (the caller puts that in ARGS) and stays the parent of the process
 * it starts, as containerd's shim and conmon do for exec:
 * - it is a child subreaper, so the exec'd process (whose runc parent exits at once with
 *   --detach) is reparented to it and its exit status can be reaped here;
 * - with -t it listens on SOCK for runc's --console-socket, receives the pty master over
 *   SCM_RIGHTS (Node cannot), relays stdin -> master -> stdout and applies resizes read from
 *   CTLFD ("COLS ROWS\n" lines);
 * - without -t the process inherits stdin/stdout/stderr from runc directly; this helper closes
 *   its own copies so EOF on the pipes means the process (and whatever it shares them with) ended;
 * - SIGTERM/SIGHUP/SIGINT, EOF on CTLFD, or the death of its parent (PR_SET_PDEATHSIG) kill the
 *   exec'd process and every descendant (frozen with SIGSTOP first, so none can fork away);
 * - STATUSFD receives "pid N\n", then "exit CODE\n" (128+signal when killed) or "error MSG\n".
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static int sigpipe_fds[2] = {-1, -1};
static int status_fd = -1;

static void on_signal(int sig) {
  unsigned char b = (unsigned char)sig;
  int saved = errno;
  if (write(sigpipe_fds[1], &b, 1) < 0) { /* full: a wakeup is pending anyway */ }
  errno = saved;
}

static int write_all(int fd, const char *b, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, b, n);
    if (w < 0) { if (errno == EINTR) continue; if (errno == EAGAIN) { struct pollfd p = {fd, POLLOUT, 0}; poll(&p, 1, -1); continue; } return -1; }
    b += w; n -= (size_t)w;
  }
  return 0;
}

static void report(const char *fmt, const char *s, long n) {
  char line[1024];
  int len = s ? snprintf(line, sizeof line, fmt, s) : snprintf(line, sizeof line, fmt, n);
  if (len < 0) return;
  if ((size_t)len >= sizeof line) len = sizeof line - 1;
  for (int i = 0; i < len - 1; i++) if (line[i] == '\n') line[i] = ' ';
  if (status_fd >= 0) write_all(status_fd, line, (size_t)len);
}

/* Descendants of pid through /proc/<pid>/task/<tid>/children, stopping each as it is found. */
static int collect(pid_t pid, pid_t *out, int n, int cap) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR *d = opendir(path);
  if (!d) return n;
  struct dirent *e;
  while ((e = readdir(d)) && n < cap) {
    if (e->d_name[0] == '.') continue;
    char cpath[512];
    snprintf(cpath, sizeof cpath, "/proc/%d/task/%s/children", pid, e->d_name);
    FILE *f = fopen(cpath, "re");
    if (!f) continue;
    int c;
    while (n < cap && fscanf(f, "%d", &c) == 1) {
      kill(c, SIGSTOP);
      out[n++] = c;
      n = collect(c, out, n, cap);
    }
    fclose(f);
  }
  closedir(d);
  return n;
}

static void kill_tree(pid_t pid, int tty) {
  if (pid <= 0) return;
  static pid_t found[65536];
  kill(pid, SIGSTOP);
  int n = collect(pid, found, 0, 65536);
  if (tty) kill(-pid, SIGKILL); /* the session's process group */
  kill(pid, SIGKILL);
  for (int i = 0; i < n; i++) kill(found[i], SIGKILL);
}

static pid_t read_pid(const char *file) {
  FILE *f = fopen(file, "re");
  if (!f) return -1;
  int p = -1;
  if (fscanf(f, "%d", &p) != 1) p = -1;
  fclose(f);
  return p;
}

static int recv_fd(int sock) {
  char data[256];
  struct iovec iov = {data, sizeof data};
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
  struct msghdr m;
  memset(&m, 0, sizeof m);
  m.msg_iov = &iov; m.msg_iovlen = 1;
  m.msg_control = u.buf; m.msg_controllen = sizeof u.buf;
  ssize_t r;
  do r = recvmsg(sock, &m, MSG_CMSG_CLOEXEC); while (r < 0 && errno == EINTR);
  if (r < 0) return -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) { int fd; memcpy(&fd, CMSG_DATA(c), sizeof fd); return fd; }
  }
  return -1;
}

static void set_winsize(int fd, int cols, int rows) {
  if (fd < 0 || cols <= 0 || rows <= 0) return;
  struct winsize ws; memset(&ws, 0, sizeof ws);
  ws.ws_col = (unsigned short)cols; ws.ws_row = (unsigned short)rows;
  ioctl(fd, TIOCSWINSZ, &ws);
}

int main(int argc, char **argv) {
  int tty = 0, cols = 0, rows = 0, ctl_fd = -1;
  const char *sock_path = NULL, *pid_file = NULL;
  int i = 1;
  for (; i < argc; i++) {
    if (!strcmp(argv[i], "--")) { i++; break; }
    if (!strcmp(argv[i], "-t")) tty = 1;
    else if (i + 1 < argc && !strcmp(argv[i], "-s")) sock_path = argv[++i];
    else if (i + 1 < argc && !strcmp(argv[i], "-p")) pid_file = argv[++i];
    else if (i + 1 < argc && !strcmp(argv[i], "-c")) cols = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "-r")) rows = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "-C")) ctl_fd = atoi(argv[++i]);
    else if (i + 1 < argc && !strcmp(argv[i], "-S")) status_fd = atoi(argv[++i]);
    else { fprintf(stderr, "loom-exec: unknown option %s\n", argv[i]); return 2; }
  }
  if (i >= argc || !pid_file || (tty && !sock_path)) { fprintf(stderr, "usage: loom-exec [-t -s SOCK] -p PIDFILE [-C FD] [-S FD] -- RUNTIME ARGS...\n"); return 2; }
  if (ctl_fd >= 0) fcntl(ctl_fd, F_SETFD, FD_CLOEXEC);
  if (status_fd >= 0) fcntl(status_fd, F_SETFD, FD_CLOEXEC);

  pid_t parent = getppid();
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (pipe2(sigpipe_fds, O_CLOEXEC | O_NONBLOCK) < 0) return 1;
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; sa.sa_flags = SA_RESTART;
  sigaction(SIGCHLD, &sa, NULL); sigaction(SIGTERM, &sa, NULL); sigaction(SIGHUP, &sa, NULL); sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  if (getppid() != parent) return 1; /* our parent died before PDEATHSIG was armed */

  int lsock = -1;
  if (tty) {
    lsock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
    if (strlen(sock_path) >= sizeof a.sun_path) { report("error console socket path too long%s\n", "", 0); return 1; }
    strcpy(a.sun_path, sock_path);
    unlink(sock_path);
    if (lsock < 0 || bind(lsock, (struct sockaddr *)&a, sizeof a) < 0 || listen(lsock, 1) < 0) { report("error console socket: %s\n", strerror(errno), 0); return 1; }
    chmod(sock_path, 0600);
  }

  int errp[2] = {-1, -1};
  if (tty && pipe2(errp, O_CLOEXEC) < 0) return 1;
  pid_t rt = fork();
  if (rt < 0) { report("error fork: %s\n", strerror(errno), 0); return 1; }
  if (rt == 0) {
    sigset_t none; sigemptyset(&none); sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGCHLD, SIG_DFL); signal(SIGTERM, SIG_DFL); signal(SIGHUP, SIG_DFL); signal(SIGINT, SIG_DFL); signal(SIGPIPE, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (tty) {
      /* runc's own messages only: the process gets the pty. */
      int nul = open("/dev/null", O_RDWR);
      dup2(nul, 0); dup2(errp[1], 1); dup2(errp[1], 2);
    }
    execvp(argv[i], argv + i);
    fprintf(stderr, "loom-exec: %s: %s\n", argv[i], strerror(errno));
    _exit(127);
  }
  if (tty) close(errp[1]);
  else {
    /* The process holds the pipes now; drop ours so their EOF is the process's. */
    int nul = open("/dev/null", O_RDWR);
    dup2(nul, 0); dup2(nul, 1); dup2(nul, 2);
    if (nul > 2) close(nul);
  }

  static char buf[65536];
  char errtext[2048]; size_t errlen = 0;
  int master = -1, rt_done = 0, rt_status = 0, killed = 0, have_exit = 0, exit_code = 0;
  pid_t pid = -1;
  int in_open = tty, out_open = 0, ctl_open = ctl_fd >= 0;
  char ctlbuf[256]; size_t ctllen = 0;
  pid_t early_pid[64]; int early_st[64]; int nearly = 0;

  for (;;) {
    if (rt_done && pid < 0) {
      if (!WIFEXITED(rt_status) || WEXITSTATUS(rt_status) != 0) {
        errtext[errlen] = 0;
        while (errlen > 0 && (errtext[errlen - 1] == '\n' || errtext[errlen - 1] == ' ')) errtext[--errlen] = 0;
        report("error %s\n", errlen ? errtext : "the runtime failed to start the process", 0);
        return 1;
      }
      pid = read_pid(pid_file);
      if (pid <= 0) { report("error the runtime wrote no pid%s\n", "", 0); return 1; }
      report("pid %ld\n", NULL, pid);
      for (int k = 0; k < nearly; k++) {
        if (early_pid[k] == pid) { have_exit = 1; exit_code = WIFEXITED(early_st[k]) ? WEXITSTATUS(early_st[k]) : 128 + WTERMSIG(early_st[k]); }
      }
      if (have_exit && !tty) break;
      if (killed && !have_exit) kill_tree(pid, tty);
    }
    if (have_exit && !out_open) break;

    struct pollfd p[6]; int np = 0;
    int i_sig = np; p[np++] = (struct pollfd){sigpipe_fds[0], POLLIN, 0};
    int i_l = -1, i_err = -1, i_in = -1, i_m = -1, i_ctl = -1;
    if (lsock >= 0) { i_l = np; p[np++] = (struct pollfd){lsock, POLLIN, 0}; }
    if (errp[0] >= 0) { i_err = np; p[np++] = (struct pollfd){errp[0], POLLIN, 0}; }
    if (in_open && master >= 0) { i_in = np; p[np++] = (struct pollfd){0, POLLIN, 0}; }
    if (out_open) { i_m = np; p[np++] = (struct pollfd){master, POLLIN, 0}; }
    if (ctl_open) { i_ctl = np; p[np++] = (struct pollfd){ctl_fd, POLLIN, 0}; }
    /* Once the process exited, drain what the pty still holds and stop. */
    int timeout = have_exit ? 0 : -1;
    int r = poll(p, (nfds_t)np, timeout);
    if (r < 0) { if (errno == EINTR) continue; break; }
    if (r == 0 && have_exit) break;

    if (p[i_sig].revents) {
      unsigned char s;
      while (read(sigpipe_fds[0], &s, 1) == 1) {
        if (s != SIGCHLD) { killed = 1; kill_tree(pid, tty); }
      }
      int st; pid_t w;
      while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
        if (w == rt) { rt_done = 1; rt_status = st; }
        if (pid > 0 && w == pid) { have_exit = 1; exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }
        else if (pid < 0 && w != rt && nearly < 64) {
          /* Exited before runc did (so before we know its pid): keep the status for later. */
          early_pid[nearly] = w; early_st[nearly++] = st;
        }
      }
      if (have_exit && !tty) break;
      continue;
    }
    if (i_l >= 0 && p[i_l].revents) {
      int c = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
      if (c >= 0) {
        master = recv_fd(c);
        close(c);
        if (master >= 0) {
          fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
          set_winsize(master, cols, rows);
          out_open = 1;
          close(lsock); lsock = -1; unlink(sock_path);
        }
      }
    }
    if (i_err >= 0 && p[i_err].revents) {
      ssize_t n = read(errp[0], errtext + errlen, sizeof errtext - 1 - errlen);
      if (n > 0) errlen += (size_t)n;
      else { close(errp[0]); errp[0] = -1; }
    }
    /* Resizes first: a resize sent before some input must apply before the program reads it. */
    if (i_ctl >= 0 && p[i_ctl].revents) {
      ssize_t n = read(ctl_fd, ctlbuf + ctllen, sizeof ctlbuf - 1 - ctllen);
      if (n <= 0) {
        /* Our controller went away: nobody can read the output any more. */
        ctl_open = 0; killed = 1; kill_tree(pid, tty);
      } else {
        ctllen += (size_t)n;
        char *nl;
        while ((nl = memchr(ctlbuf, '\n', ctllen))) {
          *nl = 0;
          int c2 = 0, r2 = 0;
          if (sscanf(ctlbuf, "%d %d", &c2, &r2) == 2 && c2 > 0 && r2 > 0 && c2 < 10000 && r2 < 10000) { cols = c2; rows = r2; set_winsize(master, cols, rows); }
          size_t used = (size_t)(nl - ctlbuf) + 1;
          memmove(ctlbuf, nl + 1, ctllen - used); ctllen -= used;
        }
        if (ctllen == sizeof ctlbuf - 1) ctllen = 0;
      }
    }
    if (i_in >= 0 && p[i_in].revents) {
      ssize_t n = read(0, buf, sizeof buf);
      if (n <= 0) in_open = 0; /* a terminal has no end of input; the process decides when to stop */
      else write_all(master, buf, (size_t)n);
    }
    if (i_m >= 0 && p[i_m].revents) {
      ssize_t n = read(master, buf, sizeof buf);
      if (n > 0) { if (write_all(1, buf, (size_t)n) < 0) { out_open = 0; } }
      else if (n == 0 || (errno != EAGAIN && errno != EINTR)) out_open = 0; /* EIO: every slave fd is closed */
    }
  }
  report("exit %ld\n", NULL, exit_code);
  return 0;
}
