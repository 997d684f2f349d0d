#ifndef LOOM_WG_TUN_H
#define LOOM_WG_TUN_H
/* Opens (creating if needed) TUN interface `name` in the caller's network namespace: fd or -errno. */
int wg_tun_open(const char *name);
#endif
