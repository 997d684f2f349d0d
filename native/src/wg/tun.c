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
