#ifndef LOOM_WG_TUN_H
#define LOOM_WG_TUN_H
#include <stddef.h>
#include <stdint.h>
/* Opens (creating if needed) TUN interface `name` in the caller's network namespace: fd or -errno. */
int wg_tun_open(const char *name);

struct wg_tun_batch {
  size_t count;
  uint8_t *packets[64];
  size_t lengths[64];
};
typedef void (*wg_tun_batch_fn)(void *ctx, struct wg_tun_batch *batch); /* takes ownership */
struct wg_tun_reader;
/* Reads `fd` (made non-blocking) on its own thread, delivering batches of packets. */
struct wg_tun_reader *wg_tun_reader_start(int fd, wg_tun_batch_fn deliver, void *ctx);
/* Stops and joins the thread; no batch is delivered after it returns. */
void wg_tun_reader_stop(struct wg_tun_reader *r);
void wg_tun_batch_free(struct wg_tun_batch *b);
#endif
