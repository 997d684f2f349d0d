/**
 * The WireGuard primitives of the native addon against their published vectors: RFC 7748
 * (X25519), RFC 8439 (ChaCha20-Poly1305), RFC 7693 (BLAKE2s), draft-irtf-cfrg-xchacha
 * (HChaCha20, XChaCha20-Poly1305); plus WireGuard's own derived constants.
 */
import t from 'tap';
import { wgCrypto } from '../../src/tunnel/engine/native.js';
import { initialChainingKeyAndHash, tai64n } from '../../src/tunnel/engine/noise.js';
import { generateKeyPair, publicKeyOf } from '../../src/tunnel/engine/index.js';
import { ReplayWindow, REPLAY_WINDOW_SIZE } from '../../src/tunnel/engine/replay.js';

const h = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const hex = (b: Buffer | null) => (b ? b.toString('hex') : null);
const c = wgCrypto();

const SUNSCREEN = Buffer.from(
  "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.",
);

t.test('RFC 7748 X25519', async (t) => {
  // §5.2, first vector: scalar multiplication of an arbitrary u.
  t.equal(
    hex(c.x25519(h('a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4'), h('e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c'))),
    'c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552',
  );
  // §6.1 Diffie-Hellman: both public keys and the shared secret from each side.
  const alice = h('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a');
  const bob = h('5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb');
  t.equal(hex(c.publicKey(alice)), '8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a');
  t.equal(hex(publicKeyOf(bob)), 'de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f');
  const shared = '4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742';
  t.equal(hex(c.x25519(alice, c.publicKey(bob))), shared);
  t.equal(hex(c.x25519(bob, c.publicKey(alice))), shared);
  // A low-order point gives an all-zero secret, which WireGuard must refuse.
  t.throws(() => c.x25519(alice, Buffer.alloc(32)), /X25519 failed/);
  t.throws(() => c.x25519(alice, Buffer.alloc(31)), /32-byte/);
});

t.test('generated keys are clamped and agree', async (t) => {
  const a = generateKeyPair();
  const b = generateKeyPair();
  t.equal(a.privateKey[0]! & 7, 0);
  t.equal(a.privateKey[31]! & 0xc0, 0x40);
  t.same(publicKeyOf(a.privateKey), a.publicKey);
  t.same(c.x25519(a.privateKey, b.publicKey), c.x25519(b.privateKey, a.publicKey));
  t.notSame(a.privateKey, b.privateKey);
  t.throws(() => publicKeyOf(Buffer.alloc(5)), /32-byte/);
});

t.test('RFC 8439 §2.8.2 ChaCha20-Poly1305', async (t) => {
  const key = h('808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f');
  const nonce = h('070000004041424344454647');
  const aad = h('50515253c0c1c2c3c4c5c6c7');
  const ct = h(`d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
    3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
    92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
    3ff4def08e4b7a9de576d26586cec64b6116`);
  const tag = h('1ae10b594f09e26a7e902ecbd0600691');
  t.same(c.aeadSealNonce(key, nonce, SUNSCREEN, aad), Buffer.concat([ct, tag]));
  t.same(c.aeadOpenNonce(key, nonce, Buffer.concat([ct, tag]), aad), SUNSCREEN);
  const bad = Buffer.concat([ct, tag]);
  bad[3]! ^= 1;
  t.equal(c.aeadOpenNonce(key, nonce, bad, aad), null, 'a flipped bit fails the tag');
  t.equal(c.aeadOpenNonce(key, nonce, Buffer.concat([ct, tag]), h('50')), null, 'other AAD fails the tag');
});

t.test('RFC 8439 Appendix A.5 AEAD decryption', async (t) => {
  const key = h('1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0');
  const nonce = h('000000000102030405060708');
  const aad = h('f33388860000000000004e91');
  const ct = h(`64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2
    4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf
    332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855
    9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4
    b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e
    af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a
    0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10
    49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29
    a6ad5cb4022b02709b`);
  const tag = h('eead9d67890cbb22392336fea1851f38');
  const pt = c.aeadOpenNonce(key, nonce, Buffer.concat([ct, tag]), aad);
  t.ok(pt?.toString().startsWith('Internet-Drafts are draft documents valid for a maximum of six months'));
  t.equal(pt?.length, ct.length);
});

t.test('WireGuard nonce: 32 zero bits then the little-endian counter; padding', async (t) => {
  const key = h('808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f');
  const counter = 0x0102030405;
  const nonce = h('00000000' + '0504030201000000');
  t.same(c.aeadSeal(key, counter, SUNSCREEN, null), c.aeadSealNonce(key, nonce, SUNSCREEN, null));
  const padded = c.aeadSeal(key, 7, Buffer.from('abc'), null, 16, 16);
  t.equal(padded.length, 16 + 16 + 16, 'headroom + plaintext padded to 16 + tag');
  t.same(padded.subarray(0, 16), Buffer.alloc(16));
  t.same(c.aeadOpen(key, 7, padded.subarray(16)), Buffer.concat([Buffer.from('abc'), Buffer.alloc(13)]));
  t.equal(c.aeadOpen(key, 8, padded.subarray(16)), null, 'another counter fails');
  t.throws(() => c.aeadSeal(key, -1, SUNSCREEN), /safe integer/);
});

t.test('RFC 7693 BLAKE2s-256 ("abc", Appendix B) and keyed BLAKE2s', async (t) => {
  t.equal(hex(c.hash(Buffer.from('abc'))), '508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982');
  t.equal(hex(c.hash(Buffer.from('a'), Buffer.from('bc'))), '508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982', 'parts concatenate');
  // The reference implementation's keyed KAT (blake2s-kat.txt): key 00..1f, empty input.
  const key = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
  t.equal(hex(c.mac(key, Buffer.alloc(0), 32)), '48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49');
  // and input 00 (second KAT line)
  t.equal(hex(c.mac(key, Buffer.from([0]), 32)), '40d15fee7c328830166ac3f918650f807e7e01e177258cdc0a39b11f598066f1');
  // BLAKE2s-128 (mac1's size) is its own parameter block, not a truncation.
  const m16 = c.mac(key, Buffer.from('x'), 16);
  t.equal(m16.length, 16);
  t.notSame(m16, c.mac(key, Buffer.from('x'), 32).subarray(0, 16));
  t.equal(hex(m16), '18d3cce9a01412f2dd8f3e70721615af', 'same as Python hashlib.blake2s(digest_size=16)');
});

t.test('HMAC-BLAKE2s and the KDF', async (t) => {
  // RFC 2104 HMAC with BLAKE2s (64-byte block), as Python's hmac module computes it.
  t.equal(hex(c.hmac(Buffer.alloc(32, 'k'), Buffer.from('data'))), '1b3b81abdc97a097da15fce4e261a1199ad81f9aa193a97a3eaeb4d770bbf6dd');
  const key = c.hash(Buffer.from('k'));
  const input = Buffer.from('input');
  const [t1, t2, t3] = c.kdf(key, input, 3);
  const t0 = c.hmac(key, input);
  t.same(t1, c.hmac(t0, Buffer.from([1])));
  t.same(t2, c.hmac(t0, t1!, Buffer.from([2])));
  t.same(t3, c.hmac(t0, t2!, Buffer.from([3])));
  t.same(c.kdf(key, input, 1), [t1]);
});

t.test('draft-irtf-cfrg-xchacha: HChaCha20 (§2.2.1) and XChaCha20-Poly1305 (A.3.1)', async (t) => {
  const key = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
  t.equal(
    hex(c.hchacha20(key, h('000000090000004a0000000031415927'))),
    '82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc',
  );
  const k = h('808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f');
  const iv = h('404142434445464748494a4b4c4d4e4f5051525354555657');
  const aad = h('50515253c0c1c2c3c4c5c6c7');
  const expected = h(`bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
    731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
    2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
    21f9664c97637da9768812f615c68b13b52e
    c0875924c1c7987947deafd8780acf49`);
  t.same(c.xaeadSeal(k, iv, SUNSCREEN, aad), expected);
  t.same(c.xaeadOpen(k, iv, expected, aad), SUNSCREEN);
  t.equal(c.xaeadOpen(k, iv, expected, h('50')), null);
});

t.test("WireGuard's initial chaining key and hash come from the construction and identifier", async (t) => {
  const { chainingKey, hash } = initialChainingKeyAndHash();
  // BLAKE2s("Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s") and BLAKE2s(Ci ‖ "WireGuard v1 zx2c4 Jason@zx2c4.com"),
  // as hard-coded by other implementations (boringtun's INITIAL_CHAIN_KEY / INITIAL_CHAIN_HASH).
  t.equal(hex(chainingKey), '60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36');
  t.equal(hex(hash), '2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3');
});

t.test('TAI64N timestamps: label, seconds, whitened nanoseconds, monotonic', async (t) => {
  const ts = tai64n(1_700_000_000_123);
  t.equal(ts.readBigUInt64BE(0), 0x400000000000000an + 1_700_000_000n);
  t.equal(ts.readUInt32BE(8) % 0x1000000, 0);
  t.ok(Buffer.compare(tai64n(1_700_000_001_000), ts) > 0);
});

t.test('replay window: first sight only, old counters out of the window refused', async (t) => {
  const w = new ReplayWindow();
  const limit = 2 ** 53;
  t.ok(w.accept(0, limit));
  t.notOk(w.accept(0, limit), 'the same counter twice');
  t.ok(w.accept(5, limit));
  t.ok(w.accept(3, limit), 'reordered, never seen');
  t.notOk(w.accept(3, limit));
  t.ok(w.accept(10_000, limit), 'a jump ahead');
  t.notOk(w.accept(10_000 - REPLAY_WINDOW_SIZE - 1, limit), 'behind the window');
  t.ok(w.accept(10_000 - 100, limit), 'inside the window');
  t.notOk(w.accept(limit, limit), 'at the limit');
  let fresh = 0;
  for (let i = 10_001; i < 12_000; i++) if (w.accept(i, limit)) fresh++;
  t.equal(fresh, 1999, 'every new counter in order is accepted');
  t.notOk(w.accept(11_999, limit));
});
