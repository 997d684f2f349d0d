/* WireGuard's primitives on the OpenSSL 3 that Node links statically and exports. */
#ifndef LOOM_WG_CRYPTO_H
#define LOOM_WG_CRYPTO_H
#include <stddef.h>
#include <stdint.h>

#define WG_KEY_LEN 32
#define WG_HASH_LEN 32
#define WG_TAG_LEN 16
#define WG_MAC_LEN 16

int wg_random(uint8_t *out, size_t len);
/* X25519: public key of a private key; shared secret (fails on an all-zero result). */
int wg_x25519_public(uint8_t pub[32], const uint8_t priv[32]);
int wg_x25519(uint8_t out[32], const uint8_t priv[32], const uint8_t pub[32]);

/* ChaCha20-Poly1305 (RFC 8439) with WireGuard's nonce: 32 zero bits then a 64-bit LE counter. */
int wg_aead_seal(uint8_t *out, const uint8_t key[32], uint64_t counter,
                 const uint8_t *pt, size_t ptlen, size_t padded_len,
                 const uint8_t *aad, size_t aadlen);
int wg_aead_open(uint8_t *out, const uint8_t key[32], uint64_t counter,
                 const uint8_t *ct, size_t ctlen, const uint8_t *aad, size_t aadlen);
/* A raw 12-byte nonce (RFC 8439 test vectors and XChaCha). */
int wg_aead_seal_n(uint8_t *out, const uint8_t key[32], const uint8_t nonce[12],
                   const uint8_t *pt, size_t ptlen, size_t padded_len,
                   const uint8_t *aad, size_t aadlen);
int wg_aead_open_n(uint8_t *out, const uint8_t key[32], const uint8_t nonce[12],
                   const uint8_t *ct, size_t ctlen, const uint8_t *aad, size_t aadlen);

/* HChaCha20 and XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha), for cookie replies. */
int wg_hchacha20(uint8_t out[32], const uint8_t key[32], const uint8_t nonce[16]);
int wg_xaead_seal(uint8_t *out, const uint8_t key[32], const uint8_t nonce[24],
                  const uint8_t *pt, size_t ptlen, const uint8_t *aad, size_t aadlen);
int wg_xaead_open(uint8_t *out, const uint8_t key[32], const uint8_t nonce[24],
                  const uint8_t *ct, size_t ctlen, const uint8_t *aad, size_t aadlen);

/* BLAKE2s-256 over several parts; HMAC-BLAKE2s; keyed BLAKE2s with a chosen output length. */
struct wg_part { const uint8_t *p; size_t n; };
int wg_hash(uint8_t out[32], const struct wg_part *parts, size_t nparts);
int wg_hmac(uint8_t out[32], const uint8_t *key, size_t keylen, const struct wg_part *parts, size_t nparts);
int wg_mac(uint8_t *out, size_t outlen, const uint8_t *key, size_t keylen, const uint8_t *data, size_t len);
/* WireGuard's KDF_n (HKDF with HMAC-BLAKE2s): n (1..3) outputs of 32 bytes. */
int wg_kdf(uint8_t *out, int n, const uint8_t key[32], const uint8_t *input, size_t inlen);

void wg_wipe(void *p, size_t n);
#endif
