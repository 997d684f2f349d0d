/* UserNet: a userspace TCP/IP stack (Debian's lwIP, threaded build with core locking) so the
 * rootless client opens TCP streams through the tunnel with no TUN. IP packets in and out and TCP
 * events cross to JS through one thread-safe function; JS calls into lwIP under the core lock. */
#define _GNU_SOURCE
#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lwip/init.h"
#include "lwip/ip6_addr.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/tcp.h"
#include "lwip/tcpip.h"

enum ev_type { EV_OUTPUT, EV_CONNECTED, EV_DATA, EV_END, EV_SENT, EV_ERROR };

struct ev {
  int type;
  int32_t conn;
  int err;
  size_t len;
  uint8_t data[];
};

struct usernet {
  struct netif netif;
  napi_threadsafe_function tsfn;
  int closed;
};

struct conn {
  struct tcp_pcb *pcb;
  struct usernet *un;
  int32_t id;
};

static int lwip_started;

static void post(struct usernet *un, int type, int32_t id, int err, const void *data, size_t len) {
  struct ev *e = malloc(sizeof *e + len);
  if (!e) return;
  e->type = type; e->conn = id; e->err = err; e->len = len;
  if (len) memcpy(e->data, data, len);
  if (napi_call_threadsafe_function(un->tsfn, e, napi_tsfn_nonblocking) != napi_ok) free(e);
}

static err_t out6(struct netif *n, struct pbuf *p, const ip6_addr_t *a) {
  (void)a;
  struct usernet *un = n->state;
  struct ev *e = malloc(sizeof *e + p->tot_len);
  if (!e) return ERR_MEM;
  e->type = EV_OUTPUT; e->conn = 0; e->err = 0; e->len = p->tot_len;
  pbuf_copy_partial(p, e->data, p->tot_len, 0);
  if (napi_call_threadsafe_function(un->tsfn, e, napi_tsfn_nonblocking) != napi_ok) free(e);
  return ERR_OK;
}

static err_t netif_setup(struct netif *n) {
  n->output_ip6 = out6;
  n->flags = NETIF_FLAG_UP | NETIF_FLAG_LINK_UP;
  n->name[0] = 'w'; n->name[1] = 'g';
  return ERR_OK;
}

static void call_js(napi_env env, napi_value cb, void *ctx, void *data) {
  (void)ctx;
  struct ev *e = data;
  if (env && cb) {
    napi_value argv[4], undef;
    napi_create_int32(env, e->type, &argv[0]);
    napi_create_int32(env, e->conn, &argv[1]);
    napi_create_int32(env, e->err, &argv[2]);
    if (e->len) napi_create_buffer_copy(env, e->len, e->data, NULL, &argv[3]);
    else napi_get_null(env, &argv[3]);
    napi_get_undefined(env, &undef);
    napi_call_function(env, undef, cb, 4, argv, NULL);
  }
  free(e);
}

#define MAXA 6
static size_t getargs(napi_env env, napi_callback_info info, napi_value *a) {
  size_t n = MAXA;
  napi_get_cb_info(env, info, &n, a, NULL, NULL);
  return n;
}
static napi_value err(napi_env env, const char *m) { napi_throw_error(env, "ERR_USERNET", m); return NULL; }
static napi_value undef(napi_env env) { napi_value u; napi_get_undefined(env, &u); return u; }

/* create(addr16, mtu, onEvent) → handle */
static napi_value un_create(napi_env env, napi_callback_info info) {
  napi_value a[MAXA], name, ext; void *addr; size_t alen; uint32_t mtu;
  getargs(env, info, a);
  if (napi_get_buffer_info(env, a[0], &addr, &alen) != napi_ok || alen != 16) return err(env, "address must be 16 bytes");
  if (napi_get_value_uint32(env, a[1], &mtu) != napi_ok || mtu < 1280 || mtu > 65535) return err(env, "mtu must be 1280..65535");
  if (!lwip_started) { tcpip_init(NULL, NULL); lwip_started = 1; }
  struct usernet *un = calloc(1, sizeof *un);
  if (!un) return err(env, "out of memory");
  napi_create_string_utf8(env, "loom-usernet", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, a[2], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &un->tsfn) != napi_ok) { free(un); return err(env, "onEvent must be a function"); }
  napi_unref_threadsafe_function(env, un->tsfn); /* streams, not the stack, keep the process alive */
  ip6_addr_t ip;
  memcpy(ip.addr, addr, 16);
  ip6_addr_clear_zone(&ip);
  LOCK_TCPIP_CORE();
  netif_add_noaddr(&un->netif, un, netif_setup, tcpip_input);
  un->netif.mtu = (u16_t)mtu;
  un->netif.mtu6 = (u16_t)mtu;
  netif_ip6_addr_set(&un->netif, 0, &ip);
  netif_ip6_addr_set_state(&un->netif, 0, IP6_ADDR_PREFERRED);
  netif_set_default(&un->netif);
  netif_set_up(&un->netif);
  netif_set_link_up(&un->netif);
  UNLOCK_TCPIP_CORE();
  napi_create_external(env, un, NULL, NULL, &ext);
  return ext;
}

static struct usernet *get_un(napi_env env, napi_value v) {
  void *p = NULL;
  napi_get_value_external(env, v, &p);
  struct usernet *un = p;
  return un && !un->closed ? un : NULL;
}

/* input(handle, ipPacket) */
static napi_value un_input(napi_env env, napi_callback_info info) {
  napi_value a[MAXA]; void *d; size_t len;
  getargs(env, info, a);
  struct usernet *un = get_un(env, a[0]);
  if (!un) return undef(env);
  if (napi_get_buffer_info(env, a[1], &d, &len) != napi_ok || len == 0 || len > 65535) return err(env, "packet must be a Buffer");
  struct pbuf *p = pbuf_alloc(PBUF_RAW, (u16_t)len, PBUF_RAM);
  if (!p) return undef(env);
  pbuf_take(p, d, (u16_t)len);
  if (un->netif.input(p, &un->netif) != ERR_OK) pbuf_free(p);
  return undef(env);
}

static err_t on_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t e) {
  struct conn *c = arg;
  if (!c) { if (p) pbuf_free(p); return ERR_OK; }
  if (!p || e != ERR_OK) { post(c->un, EV_END, c->id, 0, NULL, 0); return ERR_OK; }
  uint8_t *buf = malloc(p->tot_len);
  if (buf) {
    pbuf_copy_partial(p, buf, p->tot_len, 0);
    post(c->un, EV_DATA, c->id, 0, buf, p->tot_len);
    free(buf);
  }
  /* The window reopens only when JS has taken the data (recved), so a slow reader slows the sender. */
  (void)pcb;
  pbuf_free(p);
  return ERR_OK;
}

static err_t on_sent(void *arg, struct tcp_pcb *pcb, u16_t len) {
  (void)pcb;
  struct conn *c = arg;
  if (c) post(c->un, EV_SENT, c->id, len, NULL, 0);
  return ERR_OK;
}

static void on_err(void *arg, err_t e) {
  struct conn *c = arg;
  if (!c) return;
  c->pcb = NULL; /* lwIP has freed it */
  post(c->un, EV_ERROR, c->id, e, NULL, 0);
}

static err_t on_connected(void *arg, struct tcp_pcb *pcb, err_t e) {
  (void)pcb;
  struct conn *c = arg;
  if (c) post(c->un, EV_CONNECTED, c->id, e, NULL, 0);
  return ERR_OK;
}

static void conn_free(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  struct conn *c = data;
  LOCK_TCPIP_CORE();
  if (c->pcb) {
    tcp_arg(c->pcb, NULL);
    tcp_abort(c->pcb);
    c->pcb = NULL;
  }
  UNLOCK_TCPIP_CORE();
  free(c);
}

/* connect(handle, addr16, port, id) → conn handle */
static napi_value un_connect(napi_env env, napi_callback_info info) {
  napi_value a[MAXA], ext; void *addr; size_t alen; uint32_t port; int32_t id;
  getargs(env, info, a);
  struct usernet *un = get_un(env, a[0]);
  if (!un) return err(env, "UserNet is closed");
  if (napi_get_buffer_info(env, a[1], &addr, &alen) != napi_ok || alen != 16) return err(env, "address must be 16 bytes");
  if (napi_get_value_uint32(env, a[2], &port) != napi_ok || port < 1 || port > 65535) return err(env, "port must be 1..65535");
  napi_get_value_int32(env, a[3], &id);
  struct conn *c = calloc(1, sizeof *c);
  if (!c) return err(env, "out of memory");
  c->un = un; c->id = id;
  ip_addr_t ip;
  IP_SET_TYPE_VAL(ip, IPADDR_TYPE_V6);
  memcpy(ip_2_ip6(&ip)->addr, addr, 16);
  ip6_addr_clear_zone(ip_2_ip6(&ip));
  LOCK_TCPIP_CORE();
  struct tcp_pcb *pcb = tcp_new_ip_type(IPADDR_TYPE_V6);
  err_t e = ERR_MEM;
  if (pcb) {
    tcp_nagle_disable(pcb);
    tcp_arg(pcb, c);
    tcp_recv(pcb, on_recv);
    tcp_sent(pcb, on_sent);
    tcp_err(pcb, on_err);
    e = tcp_connect(pcb, &ip, (u16_t)port, on_connected);
    if (e != ERR_OK) tcp_abort(pcb); else c->pcb = pcb;
  }
  UNLOCK_TCPIP_CORE();
  if (e != ERR_OK) { free(c); char m[64]; snprintf(m, sizeof m, "connect failed (lwIP error %d)", e); return err(env, m); }
  napi_create_external(env, c, conn_free, NULL, &ext);
  return ext;
}

static struct conn *get_conn(napi_env env, napi_value v) {
  void *p = NULL;
  napi_get_value_external(env, v, &p);
  return p;
}

/* write(conn, buf) → bytes taken (0 when the send buffer is full; wait for a 'sent' event) */
static napi_value un_write(napi_env env, napi_callback_info info) {
  napi_value a[MAXA], r; void *d; size_t len; uint32_t taken = 0;
  getargs(env, info, a);
  struct conn *c = get_conn(env, a[0]);
  if (napi_get_buffer_info(env, a[1], &d, &len) != napi_ok) return err(env, "data must be a Buffer");
  LOCK_TCPIP_CORE();
  if (c && c->pcb) {
    size_t room = tcp_sndbuf(c->pcb);
    size_t n = len < room ? len : room;
    if (n > 0xffff) n = 0xffff;
    if (n && tcp_write(c->pcb, d, (u16_t)n, TCP_WRITE_FLAG_COPY) == ERR_OK) taken = (uint32_t)n;
    tcp_output(c->pcb);
  }
  UNLOCK_TCPIP_CORE();
  napi_create_uint32(env, taken, &r);
  return r;
}

/* recved(conn, n): the reader took n bytes; open the receive window by as much. */
static napi_value un_recved(napi_env env, napi_callback_info info) {
  napi_value a[MAXA]; uint32_t n;
  getargs(env, info, a);
  struct conn *c = get_conn(env, a[0]);
  if (napi_get_value_uint32(env, a[1], &n) != napi_ok) return err(env, "n must be a number");
  LOCK_TCPIP_CORE();
  while (c && c->pcb && n) {
    u16_t k = n > 0xffff ? 0xffff : (u16_t)n;
    tcp_recved(c->pcb, k);
    n -= k;
  }
  UNLOCK_TCPIP_CORE();
  return undef(env);
}

/* shutdown(conn): our half closes (FIN); close(conn): both, politely */
static napi_value un_shutdown(napi_env env, napi_callback_info info) {
  napi_value a[MAXA];
  getargs(env, info, a);
  struct conn *c = get_conn(env, a[0]);
  LOCK_TCPIP_CORE();
  if (c && c->pcb) { tcp_shutdown(c->pcb, 0, 1); tcp_output(c->pcb); }
  UNLOCK_TCPIP_CORE();
  return undef(env);
}

static napi_value un_close_conn(napi_env env, napi_callback_info info) {
  napi_value a[MAXA];
  getargs(env, info, a);
  struct conn *c = get_conn(env, a[0]);
  LOCK_TCPIP_CORE();
  if (c && c->pcb) {
    struct tcp_pcb *pcb = c->pcb;
    tcp_arg(pcb, NULL); tcp_recv(pcb, NULL); tcp_sent(pcb, NULL); tcp_err(pcb, NULL);
    c->pcb = NULL;
    if (tcp_close(pcb) != ERR_OK) tcp_abort(pcb);
  }
  UNLOCK_TCPIP_CORE();
  return undef(env);
}

/* destroy(handle): the interface goes away; open connections are aborted by their owners first. */
static napi_value un_destroy(napi_env env, napi_callback_info info) {
  napi_value a[MAXA];
  getargs(env, info, a);
  struct usernet *un = get_un(env, a[0]);
  if (!un) return undef(env);
  un->closed = 1;
  LOCK_TCPIP_CORE();
  netif_remove(&un->netif);
  UNLOCK_TCPIP_CORE();
  /* un stays allocated: lwIP may still hold late references in queued messages. */
  napi_release_threadsafe_function(un->tsfn, napi_tsfn_abort);
  return undef(env);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor p[] = {
#define FN(n, f) {n, NULL, f, NULL, NULL, NULL, napi_enumerable, NULL}
    FN("create", un_create), FN("input", un_input), FN("connect", un_connect), FN("write", un_write), FN("recved", un_recved),
    FN("shutdown", un_shutdown), FN("close", un_close_conn), FN("destroy", un_destroy),
#undef FN
  };
  napi_define_properties(env, exports, sizeof p / sizeof p[0], p);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
