/* N-API surface of the WireGuard primitives (crypto.c); the protocol lives in src/tunnel/engine. */
#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "tun.h"

#define MAX_ARGS 8
#define CALL(env, x) do { if ((x) != napi_ok) return throw_msg(env, "napi call failed"); } while (0)

static napi_value throw_msg(napi_env env, const char *msg) {
  napi_throw_error(env, "ERR_WG_CRYPTO", msg);
  return NULL;
}

typedef struct { const uint8_t *p; size_t n; } bytes;

/* A Buffer (or any TypedArray/ArrayBuffer view) argument; exact length when want >= 0. */
static int get_bytes(napi_env env, napi_value v, long want, bytes *out, const char *name) {
  bool ok = false;
  void *data = NULL;
  size_t len = 0;
  if (napi_is_buffer(env, v, &ok) == napi_ok && ok) {
    if (napi_get_buffer_info(env, v, &data, &len) != napi_ok) ok = false;
  } else if (napi_is_typedarray(env, v, &ok) == napi_ok && ok) {
    napi_typedarray_type t; napi_value ab; size_t off;
    if (napi_get_typedarray_info(env, v, &t, &len, &data, &ab, &off) != napi_ok || t != napi_uint8_array) ok = false;
  }
  if (!ok || (want >= 0 && len != (size_t)want)) {
    char msg[96];
    if (want >= 0) snprintf(msg, sizeof msg, "%s must be a %ld-byte Buffer", name, want);
    else snprintf(msg, sizeof msg, "%s must be a Buffer", name);
    napi_throw_type_error(env, "ERR_WG_ARG", msg);
    return -1;
  }
  out->p = data ? data : (const uint8_t *)"";
  out->n = len;
  return 0;
}

/* Optional bytes: undefined/null → empty. */
static int get_opt_bytes(napi_env env, napi_value v, bytes *out, const char *name) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return -1;
  if (t == napi_undefined || t == napi_null) { out->p = (const uint8_t *)""; out->n = 0; return 0; }
  return get_bytes(env, v, -1, out, name);
}

static int get_u64(napi_env env, napi_value v, uint64_t *out, const char *name) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok || d < 0 || d > 9007199254740991.0 || d != (double)(uint64_t)d) {
    char msg[80];
    snprintf(msg, sizeof msg, "%s must be a non-negative safe integer", name);
    napi_throw_type_error(env, "ERR_WG_ARG", msg);
    return -1;
  }
  *out = (uint64_t)d;
  return 0;
}

static napi_value new_buffer(napi_env env, size_t len, uint8_t **data) {
  napi_value b;
  if (napi_create_buffer(env, len, (void **)data, &b) != napi_ok) return NULL;
  return b;
}

static size_t args(napi_env env, napi_callback_info info, napi_value *argv) {
  size_t argc = MAX_ARGS;
  for (int i = 0; i < MAX_ARGS; i++) napi_get_undefined(env, &argv[i]);
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  return argc;
}

static napi_value generate_private_key(napi_env env, napi_callback_info info) {
  (void)info;
  uint8_t *k;
  napi_value b = new_buffer(env, 32, &k);
  if (!b || wg_random(k, 32) != 0) return throw_msg(env, "no randomness");
  k[0] &= 248; k[31] = (k[31] & 127) | 64; /* clamped, as `wg genkey` stores it */
  return b;
}

static napi_value public_key(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS]; bytes priv; uint8_t *out;
  args(env, info, a);
  if (get_bytes(env, a[0], 32, &priv, "privateKey")) return NULL;
  napi_value b = new_buffer(env, 32, &out);
  if (!b || wg_x25519_public(out, priv.p) != 0) return throw_msg(env, "X25519 public key failed");
  return b;
}

static napi_value x25519(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS]; bytes priv, pub; uint8_t *out;
  args(env, info, a);
  if (get_bytes(env, a[0], 32, &priv, "privateKey") || get_bytes(env, a[1], 32, &pub, "publicKey")) return NULL;
  napi_value b = new_buffer(env, 32, &out);
  if (!b || wg_x25519(out, priv.p, pub.p) != 0) return throw_msg(env, "X25519 failed (low-order public key?)");
  return b;
}

/* aeadSeal(key, counter, plaintext, aad?, headroom?, padTo?) → Buffer of headroom zero bytes
 * followed by ciphertext ‖ tag, the plaintext padded with zeros to a multiple of padTo. */
static napi_value aead_seal(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS]; bytes key, pt, aad; uint64_t ctr; uint32_t head = 0, pad = 0; uint8_t *out;
  size_t argc = args(env, info, a);
  if (get_bytes(env, a[0], 32, &key, "key") || get_u64(env, a[1], &ctr, "counter") ||
      get_bytes(env, a[2], -1, &pt, "plaintext") || get_opt_bytes(env, a[3], &aad, "aad")) return NULL;
  if (argc > 4) CALL(env, napi_get_value_uint32(env, a[4], &head));
  if (argc > 5) CALL(env, napi_get_value_uint32(env, a[5], &pad));
  if (head > 64 || pad > 16) return throw_msg(env, "headroom ≤ 64 and padTo ≤ 16");
  size_t padded = pad > 1 ? (pt.n + pad - 1) / pad * pad : pt.n;
  napi_value b = new_buffer(env, head + padded + WG_TAG_LEN, &out);
  if (!b) return throw_msg(env, "out of memory");
  memset(out, 0, head);
  if (wg_aead_seal(out + head, key.p, ctr, pt.p, pt.n, padded, aad.p, aad.n) != 0) return throw_msg(env, "seal failed");
  return b;
}

/* aeadOpen(key, counter, ciphertext, aad?) → plaintext, or null when the tag does not verify. */
static napi_value aead_open(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS], r; bytes key, ct, aad; uint64_t ctr; uint8_t *out;
  args(env, info, a);
  if (get_bytes(env, a[0], 32, &key, "key") || get_u64(env, a[1], &ctr, "counter") ||
      get_bytes(env, a[2], -1, &ct, "ciphertext") || get_opt_bytes(env, a[3], &aad, "aad")) return NULL;
  if (ct.n < WG_TAG_LEN) { napi_get_null(env, &r); return r; }
  napi_value b = new_buffer(env, ct.n - WG_TAG_LEN, &out);
  if (!b) return throw_msg(env, "out of memory");
  if (wg_aead_open(out, key.p, ctr, ct.p, ct.n, aad.p, aad.n) != 0) { napi_get_null(env, &r); return r; }
  return b;
}

/* The same with an explicit 12-byte nonce (RFC 8439's own vectors). */
static napi_value aead_seal_nonce(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS]; bytes key, nonce, pt, aad; uint8_t *out;
  args(env, info, a);
  if (get_bytes(env, a[0], 32, &key, "key") || get_bytes(env, a[1], 12, &nonce, "nonce") ||
      get_bytes(env, a[2], -1, &pt, "plaintext") || get_opt_bytes(env, a[3], &aad, "aad")) return NULL;
  napi_value b = new_buffer(env, pt.n + WG_TAG_LEN, &out);
  if (!b || wg_aead_seal_n(out, key.p, nonce.p, pt.p, pt.n, pt.n, aad.p, aad.n) != 0) return throw_msg(env, "seal failed");
  return b;
}

static napi_value aead_open_nonce(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS], r; bytes key, nonce, ct, aad; uint8_t *out;
  args(env, info, a);
  if (get_bytes(env, a[0], 32, &key, "key") || get_bytes(env, a[1], 12, &nonce, "nonce") ||
      get_bytes(env, a[2], -1, &ct, "ciphertext") || get_opt_bytes(env, a[3], &aad, "aad")) return NULL;
  if (ct.n < WG_TAG_LEN) { napi_get_null(env, &r); return r; }
  napi_value b = new_buffer(env, ct.n - WG_TAG_LEN, &out);
  if (!b) return throw_msg(env, "out of memory");
  if (wg_aead_open_n(out, key.p, nonce.p, ct.p, ct.n, aad.p, aad.n) != 0) { napi_get_null(env, &r); return r; }
  return b;
}

static napi_value hchacha20(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS]; bytes key, nonce; uint8_t *out;
  args(env, info, a);
  if (get_bytes(env, a[0], 32, &key, "key") || get_bytes(env, a[1], 16, &nonce, "nonce")) return NULL;
  napi_value b = new_buffer(env, 32, &out);
  if (!b || wg_hchacha20(out, key.p, nonce.p) != 0) return throw_msg(env, "HChaCha20 failed");
  return b;
}

static napi_value xaead_seal(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS]; bytes key, nonce, pt, aad; uint8_t *out;
  args(env, info, a);
  if (get_bytes(env, a[0], 32, &key, "key") || get_bytes(env, a[1], 24, &nonce, "nonce") ||
      get_bytes(env, a[2], -1, &pt, "plaintext") || get_opt_bytes(env, a[3], &aad, "aad")) return NULL;
  napi_value b = new_buffer(env, pt.n + WG_TAG_LEN, &out);
  if (!b || wg_xaead_seal(out, key.p, nonce.p, pt.p, pt.n, aad.p, aad.n) != 0) return throw_msg(env, "seal failed");
  return b;
}

static napi_value xaead_open(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS], r; bytes key, nonce, ct, aad; uint8_t *out;
  args(env, info, a);
  if (get_bytes(env, a[0], 32, &key, "key") || get_bytes(env, a[1], 24, &nonce, "nonce") ||
      get_bytes(env, a[2], -1, &ct, "ciphertext") || get_opt_bytes(env, a[3], &aad, "aad")) return NULL;
  if (ct.n < WG_TAG_LEN) { napi_get_null(env, &r); return r; }
  napi_value b = new_buffer(env, ct.n - WG_TAG_LEN, &out);
  if (!b) return throw_msg(env, "out of memory");
  if (wg_xaead_open(out, key.p, nonce.p, ct.p, ct.n, aad.p, aad.n) != 0) { napi_get_null(env, &r); return r; }
  return b;
}

/* hash(...parts) → BLAKE2s-256 of the concatenation. */
static napi_value hash(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS]; struct wg_part parts[MAX_ARGS]; uint8_t *out; bytes b;
  size_t argc = args(env, info, a);
  for (size_t i = 0; i < argc; i++) {
    if (get_bytes(env, a[i], -1, &b, "part")) return NULL;
    parts[i].p = b.p; parts[i].n = b.n;
  }
  napi_value r = new_buffer(env, 32, &out);
  if (!r || wg_hash(out, parts, argc) != 0) return throw_msg(env, "BLAKE2s failed");
  return r;
}

/* hmac(key, ...parts) → HMAC-BLAKE2s. */
static napi_value hmac(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS]; struct wg_part parts[MAX_ARGS]; uint8_t *out; bytes key, b;
  size_t argc = args(env, info, a);
  if (argc < 1 || get_bytes(env, a[0], -1, &key, "key")) return argc < 1 ? throw_msg(env, "key required") : NULL;
  for (size_t i = 1; i < argc; i++) {
    if (get_bytes(env, a[i], -1, &b, "part")) return NULL;
    parts[i - 1].p = b.p; parts[i - 1].n = b.n;
  }
  napi_value r = new_buffer(env, 32, &out);
  if (!r || wg_hmac(out, key.p, key.n, parts, argc - 1) != 0) return throw_msg(env, "HMAC-BLAKE2s failed");
  return r;
}

/* mac(key, data, outLen) → keyed BLAKE2s of outLen bytes (16 for mac1/mac2/cookies). */
static napi_value mac(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS]; bytes key, data; uint32_t n; uint8_t *out;
  args(env, info, a);
  if (get_bytes(env, a[0], -1, &key, "key") || get_bytes(env, a[1], -1, &data, "data")) return NULL;
  CALL(env, napi_get_value_uint32(env, a[2], &n));
  if (n < 1 || n > 32 || key.n < 1 || key.n > 32) return throw_msg(env, "mac: key 1..32 bytes, output 1..32 bytes");
  napi_value r = new_buffer(env, n, &out);
  if (!r || wg_mac(out, n, key.p, key.n, data.p, data.n) != 0) return throw_msg(env, "keyed BLAKE2s failed");
  return r;
}

/* kdf(key, input, n) → [τ1, …, τn] (WireGuard's KDF_n). */
static napi_value kdf(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS], arr; bytes key, in; uint32_t n; uint8_t outs[96];
  args(env, info, a);
  if (get_bytes(env, a[0], 32, &key, "key") || get_opt_bytes(env, a[1], &in, "input")) return NULL;
  CALL(env, napi_get_value_uint32(env, a[2], &n));
  if (n < 1 || n > 3 || wg_kdf(outs, (int)n, key.p, in.p, in.n) != 0) return throw_msg(env, "KDF failed");
  CALL(env, napi_create_array_with_length(env, n, &arr));
  for (uint32_t i = 0; i < n; i++) {
    uint8_t *o; napi_value b = new_buffer(env, 32, &o);
    if (!b) return throw_msg(env, "out of memory");
    memcpy(o, outs + 32 * i, 32);
    CALL(env, napi_set_element(env, arr, i, b));
  }
  wg_wipe(outs, sizeof outs);
  return arr;
}

/* tunOpen(name) → file descriptor of a TUN interface (IFF_NO_PI); throws with the errno name. */
static napi_value tun_open(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS], r; char name[32]; size_t len = 0;
  args(env, info, a);
  if (napi_get_value_string_utf8(env, a[0], name, sizeof name, &len) != napi_ok || len == 0 || len >= 16) {
    napi_throw_type_error(env, "ERR_WG_ARG", "interface name must be 1..15 characters");
    return NULL;
  }
  int fd = wg_tun_open(name);
  if (fd < 0) {
    char msg[80];
    snprintf(msg, sizeof msg, "cannot open TUN %s: %s", name, strerror(-fd));
    return throw_msg(env, msg);
  }
  CALL(env, napi_create_int32(env, fd, &r));
  return r;
}

/* tunRead(fd, onPackets) → a stop function. onPackets(Buffer[]) runs on the JS thread with every
 * batch the reader thread collected. */
typedef struct {
  napi_threadsafe_function tsfn;
  struct wg_tun_reader *reader;
  int stopped;
  int refs; /* the thread-safe function and the stop function each hold one */
} tun_read_state;

static void tun_unref(tun_read_state *st) {
  if (--st->refs == 0) free(st);
}

static void tun_deliver(void *ctx, struct wg_tun_batch *b) {
  tun_read_state *st = ctx;
  if (napi_call_threadsafe_function(st->tsfn, b, napi_tsfn_nonblocking) != napi_ok) wg_tun_batch_free(b);
}

static void tun_call_js(napi_env env, napi_value cb, void *ctx, void *data) {
  struct wg_tun_batch *b = data;
  tun_read_state *st = ctx;
  if (env && cb && !st->stopped) {
    napi_value arr, undef, buf;
    if (napi_create_array_with_length(env, b->count, &arr) == napi_ok) {
      for (size_t i = 0; i < b->count; i++) {
        if (napi_create_buffer_copy(env, b->lengths[i], b->packets[i], NULL, &buf) == napi_ok) napi_set_element(env, arr, (uint32_t)i, buf);
      }
      napi_get_undefined(env, &undef);
      napi_call_function(env, undef, cb, 1, &arr, NULL);
    }
  }
  wg_tun_batch_free(b);
}

static void tun_finalize(napi_env env, void *data, void *hint) {
  (void)env; (void)hint;
  tun_unref(data);
}

static napi_value tun_stop(napi_env env, napi_callback_info info) {
  void *data; napi_value undef;
  napi_get_cb_info(env, info, NULL, NULL, NULL, &data);
  tun_read_state *st = data;
  if (!st->stopped) {
    st->stopped = 1;
    wg_tun_reader_stop(st->reader); /* joined: the thread makes no more calls */
    napi_release_threadsafe_function(st->tsfn, napi_tsfn_abort);
  }
  napi_get_undefined(env, &undef);
  return undef;
}

static napi_value tun_read(napi_env env, napi_callback_info info) {
  napi_value a[MAX_ARGS], name, stop; int32_t fd;
  args(env, info, a);
  if (napi_get_value_int32(env, a[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, "ERR_WG_ARG", "fd must be a file descriptor");
    return NULL;
  }
  tun_read_state *st = calloc(1, sizeof *st);
  if (!st) return throw_msg(env, "out of memory");
  CALL(env, napi_create_string_utf8(env, "loom-wg-tun-reader", NAPI_AUTO_LENGTH, &name));
  if (napi_create_threadsafe_function(env, a[1], NULL, name, 0, 1, st, tun_finalize, st, tun_call_js, &st->tsfn) != napi_ok) {
    free(st);
    return throw_msg(env, "onPackets must be a function");
  }
  st->reader = wg_tun_reader_start(fd, tun_deliver, st);
  if (!st->reader) {
    st->stopped = 1;
    st->refs = 1;
    napi_release_threadsafe_function(st->tsfn, napi_tsfn_abort);
    return throw_msg(env, "cannot start the TUN reader thread");
  }
  CALL(env, napi_create_function(env, "stop", NAPI_AUTO_LENGTH, tun_stop, st, &stop));
  st->refs = 2;
  CALL(env, napi_add_finalizer(env, stop, st, tun_finalize, NULL, NULL));
  return stop;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor p[] = {
#define FN(name, f) {name, NULL, f, NULL, NULL, NULL, napi_enumerable, NULL}
    FN("generatePrivateKey", generate_private_key), FN("publicKey", public_key), FN("x25519", x25519),
    FN("aeadSeal", aead_seal), FN("aeadOpen", aead_open),
    FN("aeadSealNonce", aead_seal_nonce), FN("aeadOpenNonce", aead_open_nonce),
    FN("hchacha20", hchacha20), FN("xaeadSeal", xaead_seal), FN("xaeadOpen", xaead_open),
    FN("tunOpen", tun_open), FN("tunRead", tun_read), FN("hash", hash), FN("hmac", hmac), FN("mac", mac), FN("kdf", kdf),
#undef FN
  };
  if (napi_define_properties(env, exports, sizeof p / sizeof p[0], p) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
