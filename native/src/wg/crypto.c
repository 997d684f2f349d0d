/* WireGuard's primitives, all from OpenSSL 3 (the copy inside the node binary).
 * Return 0 on success, -1 on failure (bad tag, bad key, library error). */
#include "crypto.h"

#include <string.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>

/* The addon runs on the JS thread only, so one cipher context each is reused. */
static EVP_CIPHER_CTX *aead_ctx(void) {
  static EVP_CIPHER_CTX *c;
  if (!c) c = EVP_CIPHER_CTX_new();
  return c;
}

/* Explicitly fetched once: OpenSSL 3's implicit fetch behind EVP_chacha20_poly1305() costs more
 * than sealing a whole packet. */
static const EVP_CIPHER *chachapoly(void) {
  static EVP_CIPHER *c;
  if (!c) c = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
  return c;
}

static const EVP_MD *blake2s(void) {
  static EVP_MD *m;
  if (!m) m = EVP_MD_fetch(NULL, "BLAKE2S-256", NULL);
  return m;
}

int wg_random(uint8_t *out, size_t len) { return RAND_bytes(out, (int)len) == 1 ? 0 : -1; }

void wg_wipe(void *p, size_t n) { OPENSSL_cleanse(p, n); }

int wg_x25519_public(uint8_t pub[32], const uint8_t priv[32]) {
  EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, 32);
  size_t n = 32;
  int rc = (k && EVP_PKEY_get_raw_public_key(k, pub, &n) == 1 && n == 32) ? 0 : -1;
  EVP_PKEY_free(k);
  return rc;
}

int wg_x25519(uint8_t out[32], const uint8_t priv[32], const uint8_t pub[32]) {
  EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, priv, 32);
  EVP_PKEY *p = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, pub, 32);
  EVP_PKEY_CTX *c = k ? EVP_PKEY_CTX_new(k, NULL) : NULL;
  size_t n = 32;
  /* OpenSSL refuses an all-zero shared secret (a low-order point), as WireGuard requires. */
  int rc = (c && p && EVP_PKEY_derive_init(c) == 1 && EVP_PKEY_derive_set_peer(c, p) == 1 &&
            EVP_PKEY_derive(c, out, &n) == 1 && n == 32) ? 0 : -1;
  EVP_PKEY_CTX_free(c);
  EVP_PKEY_free(p);
  EVP_PKEY_free(k);
  return rc;
}

static void counter_nonce(uint8_t nonce[12], uint64_t counter) {
  memset(nonce, 0, 4);
  for (int i = 0; i < 8; i++) nonce[4 + i] = (uint8_t)(counter >> (8 * i));
}

int wg_aead_seal_n(uint8_t *out, const uint8_t key[32], const uint8_t nonce[12],
                   const uint8_t *pt, size_t ptlen, size_t padded_len,
                   const uint8_t *aad, size_t aadlen) {
  EVP_CIPHER_CTX *c = aead_ctx();
  int n = 0;
  static const uint8_t zeros[16];
  if (!c || padded_len < ptlen || padded_len - ptlen > sizeof zeros) return -1;
  if (EVP_EncryptInit_ex(c, chachapoly(), NULL, key, nonce) != 1) return -1;
  if (aadlen && EVP_EncryptUpdate(c, NULL, &n, aad, (int)aadlen) != 1) return -1;
  if (ptlen && EVP_EncryptUpdate(c, out, &n, pt, (int)ptlen) != 1) return -1;
  /* Padding is encrypted in place of a copy of the packet (WireGuard pads to 16 bytes). */
  if (padded_len > ptlen && EVP_EncryptUpdate(c, out + ptlen, &n, zeros, (int)(padded_len - ptlen)) != 1) return -1;
  if (EVP_EncryptFinal_ex(c, out + padded_len, &n) != 1) return -1;
  return EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, WG_TAG_LEN, out + padded_len) == 1 ? 0 : -1;
}

int wg_aead_open_n(uint8_t *out, const uint8_t key[32], const uint8_t nonce[12],
                   const uint8_t *ct, size_t ctlen, const uint8_t *aad, size_t aadlen) {
  EVP_CIPHER_CTX *c = aead_ctx();
  int n = 0;
  if (!c || ctlen < WG_TAG_LEN) return -1;
  size_t len = ctlen - WG_TAG_LEN;
  if (EVP_DecryptInit_ex(c, chachapoly(), NULL, key, nonce) != 1) return -1;
  if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, WG_TAG_LEN, (void *)(ct + len)) != 1) return -1;
  if (aadlen && EVP_DecryptUpdate(c, NULL, &n, aad, (int)aadlen) != 1) return -1;
  if (len && EVP_DecryptUpdate(c, out, &n, ct, (int)len) != 1) return -1;
  if (EVP_DecryptFinal_ex(c, out + len, &n) != 1) {
    wg_wipe(out, len); /* never hand out unauthenticated plaintext */
    return -1;
  }
  return 0;
}

int wg_aead_seal(uint8_t *out, const uint8_t key[32], uint64_t counter,
                 const uint8_t *pt, size_t ptlen, size_t padded_len,
                 const uint8_t *aad, size_t aadlen) {
  uint8_t nonce[12];
  counter_nonce(nonce, counter);
  return wg_aead_seal_n(out, key, nonce, pt, ptlen, padded_len, aad, aadlen);
}

int wg_aead_open(uint8_t *out, const uint8_t key[32], uint64_t counter,
                 const uint8_t *ct, size_t ctlen, const uint8_t *aad, size_t aadlen) {
  uint8_t nonce[12];
  counter_nonce(nonce, counter);
  return wg_aead_open_n(out, key, nonce, ct, ctlen, aad, aadlen);
}

static uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void put_le32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

/* OpenSSL has no HChaCha20, but its ChaCha20 block is the same 20 rounds plus a final addition of
 * the input state. With a 16-byte IV (32-bit counter ‖ 96-bit nonce) the input state is exactly
 * HChaCha20's (constants ‖ key ‖ 128-bit nonce), so HChaCha20 = block words 0..3 and 12..15
 * minus the input words. */
int wg_hchacha20(uint8_t out[32], const uint8_t key[32], const uint8_t nonce[16]) {
  static const uint32_t sigma[4] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
  uint8_t zeros[64] = {0}, block[64];
  int n = 0, rc = -1;
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  if (c && EVP_EncryptInit_ex(c, EVP_chacha20(), NULL, key, nonce) == 1 &&
      EVP_EncryptUpdate(c, block, &n, zeros, 64) == 1 && n == 64) {
    for (int i = 0; i < 4; i++) put_le32(out + 4 * i, le32(block + 4 * i) - sigma[i]);
    for (int i = 0; i < 4; i++) put_le32(out + 16 + 4 * i, le32(block + 48 + 4 * i) - le32(nonce + 4 * i));
    rc = 0;
  }
  wg_wipe(block, sizeof block);
  EVP_CIPHER_CTX_free(c);
  return rc;
}

int wg_xaead_seal(uint8_t *out, const uint8_t key[32], const uint8_t nonce[24],
                  const uint8_t *pt, size_t ptlen, const uint8_t *aad, size_t aadlen) {
  uint8_t sub[32], n12[12] = {0};
  if (wg_hchacha20(sub, key, nonce) != 0) return -1;
  memcpy(n12 + 4, nonce + 16, 8);
  int rc = wg_aead_seal_n(out, sub, n12, pt, ptlen, ptlen, aad, aadlen);
  wg_wipe(sub, sizeof sub);
  return rc;
}

int wg_xaead_open(uint8_t *out, const uint8_t key[32], const uint8_t nonce[24],
                  const uint8_t *ct, size_t ctlen, const uint8_t *aad, size_t aadlen) {
  uint8_t sub[32], n12[12] = {0};
  if (wg_hchacha20(sub, key, nonce) != 0) return -1;
  memcpy(n12 + 4, nonce + 16, 8);
  int rc = wg_aead_open_n(out, sub, n12, ct, ctlen, aad, aadlen);
  wg_wipe(sub, sizeof sub);
  return rc;
}

int wg_hash(uint8_t out[32], const struct wg_part *parts, size_t nparts) {
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  unsigned int n = 0;
  int ok = c && EVP_DigestInit_ex(c, blake2s(), NULL) == 1;
  for (size_t i = 0; ok && i < nparts; i++) ok = EVP_DigestUpdate(c, parts[i].p, parts[i].n) == 1;
  ok = ok && EVP_DigestFinal_ex(c, out, &n) == 1 && n == 32;
  EVP_MD_CTX_free(c);
  return ok ? 0 : -1;
}

/* HMAC-BLAKE2s (RFC 2104 with a 64-byte block), built on the digest so it takes several parts. */
int wg_hmac(uint8_t out[32], const uint8_t *key, size_t keylen, const struct wg_part *parts, size_t nparts) {
  uint8_t k[64] = {0}, pad[64], inner[32];
  struct wg_part p[8];
  if (nparts > 7) return -1;
  if (keylen > 64) {
    struct wg_part kp = {key, keylen};
    if (wg_hash(k, &kp, 1) != 0) return -1;
  } else {
    memcpy(k, key, keylen);
  }
  for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
  p[0].p = pad; p[0].n = 64;
  for (size_t i = 0; i < nparts; i++) p[i + 1] = parts[i];
  int rc = wg_hash(inner, p, nparts + 1);
  for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
  p[1].p = inner; p[1].n = 32;
  if (rc == 0) rc = wg_hash(out, p, 2);
  wg_wipe(k, sizeof k); wg_wipe(pad, sizeof pad); wg_wipe(inner, sizeof inner);
  return rc;
}

/* Keyed BLAKE2s (not HMAC) with the output length as a parameter: mac1, mac2, cookies. */
int wg_mac(uint8_t *out, size_t outlen, const uint8_t *key, size_t keylen, const uint8_t *data, size_t len) {
  static EVP_MAC *mac;
  if (!mac) mac = EVP_MAC_fetch(NULL, "BLAKE2SMAC", NULL);
  if (!mac || outlen < 1 || outlen > 32 || keylen < 1 || keylen > 32) return -1;
  EVP_MAC_CTX *c = EVP_MAC_CTX_new(mac);
  size_t n = 0, sz = outlen;
  OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &sz), OSSL_PARAM_construct_end()};
  int ok = c && EVP_MAC_init(c, key, keylen, params) == 1 && EVP_MAC_update(c, data, len) == 1 &&
           EVP_MAC_final(c, out, &n, outlen) == 1 && n == outlen;
  EVP_MAC_CTX_free(c);
  return ok ? 0 : -1;
}

int wg_kdf(uint8_t *out, int n, const uint8_t key[32], const uint8_t *input, size_t inlen) {
  uint8_t t0[32], prev[32], ctr;
  struct wg_part in = {input, inlen};
  if (n < 1 || n > 3 || wg_hmac(t0, key, 32, &in, 1) != 0) return -1;
  for (int i = 0; i < n; i++) {
    ctr = (uint8_t)(i + 1);
    struct wg_part p[2] = {{prev, 32}, {&ctr, 1}};
    int rc = i == 0 ? wg_hmac(prev, t0, 32, &p[1], 1) : wg_hmac(prev, t0, 32, p, 2);
    if (rc != 0) { wg_wipe(t0, 32); return -1; }
    memcpy(out + 32 * i, prev, 32);
  }
  wg_wipe(t0, 32); wg_wipe(prev, 32);
  return 0;
}
