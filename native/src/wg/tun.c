/* A TUN device for the engine's TUN mode (the kernel's TCP/IP behind our WireGuard peer). */
#define _GNU_SOURCE
#include "tun.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int wg_tun_open(const char *name) {
  struct ifreq ifr;
  if (strlen(name) == 0 || strlen(name) >= IFNAMSIZ) return -EINVAL;
  int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd < 0) return -errno;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI; /* bare IP packets, as WireGuard carries them */
  memcpy(ifr.ifr_name, name, strlen(name));
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

/* A reader thread: reads packets as they come and hands them to JS in batches (all that is
 * ready, up to TUN_BATCH), so a busy tunnel costs one hop to the JS thread per batch, not per
 * packet. Stopped through a pipe so a blocked poll wakes up. */
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>

#define TUN_BATCH 64
#define TUN_MAX_PACKET 65536

struct wg_tun_reader {
  int fd;
  int wake[2];
  pthread_t thread;
  wg_tun_batch_fn deliver;
  void *ctx;
};

static void *reader_main(void *arg) {
  struct wg_tun_reader *r = arg;
  uint8_t *scratch = malloc(TUN_MAX_PACKET);
  if (!scratch) return NULL;
  for (;;) {
    struct pollfd p[2] = {{r->fd, POLLIN, 0}, {r->wake[0], POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents) break;
    if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) break;
    struct wg_tun_batch *b = calloc(1, sizeof *b);
    if (!b) break;
    while (b->count < TUN_BATCH) {
      ssize_t n = read(r->fd, scratch, TUN_MAX_PACKET);
      if (n <= 0) break; /* EAGAIN: nothing more ready (the fd is non-blocking) */
      uint8_t *copy = malloc((size_t)n);
      if (!copy) break;
      memcpy(copy, scratch, (size_t)n);
      b->packets[b->count] = copy;
      b->lengths[b->count] = (size_t)n;
      b->count++;
    }
    if (b->count) r->deliver(r->ctx, b);
    else free(b);
  }
  free(scratch);
  return NULL;
}

struct wg_tun_reader *wg_tun_reader_start(int fd, wg_tun_batch_fn deliver, void *ctx) {
  struct wg_tun_reader *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->fd = fd;
  r->deliver = deliver;
  r->ctx = ctx;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || pipe2(r->wake, O_CLOEXEC) < 0) {
    free(r);
    return NULL;
  }
  if (pthread_create(&r->thread, NULL, reader_main, r) != 0) {
    close(r->wake[0]);
    close(r->wake[1]);
    free(r);
    return NULL;
  }
  return r;
}

void wg_tun_reader_stop(struct wg_tun_reader *r) {
  if (!r) return;
  ssize_t w = write(r->wake[1], "x", 1);
  (void)w;
  pthread_join(r->thread, NULL);
  close(r->wake[0]);
  close(r->wake[1]);
  free(r);
}

void wg_tun_batch_free(struct wg_tun_batch *b) {
  for (size_t i = 0; i < b->count; i++) free(b->packets[i]);
  free(b);
}
