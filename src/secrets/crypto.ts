/**
 * Envelope encryption for secret values: a 256-bit master key (KEK) wraps a random data key (DEK)
 * per secret version; the DEK encrypts the value. Both with AES-256-GCM, each bound by associated
 * data to what it belongs to, so a ciphertext moved to another row (another name, scope or
 * version) fails to open instead of yielding someone else's value.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';

const IV_BYTES = 12;
const TAG_BYTES = 16;
export const KEY_BYTES = 32;

/** iv | ciphertext | tag */
export function seal(key: Buffer, plaintext: Buffer, aad: string): Buffer {
  const iv = randomBytes(IV_BYTES);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([c.update(plaintext), c.final()]);
  return Buffer.concat([iv, body, c.getAuthTag()]);
}

/** Throws when the key, the associated data or the bytes are not the ones sealed. */
export function open(key: Buffer, sealed: Buffer, aad: string): Buffer {
  if (sealed.length < IV_BYTES + TAG_BYTES) throw new Error('sealed value is truncated');
  const iv = sealed.subarray(0, IV_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const d = createDecipheriv('aes-256-gcm', key, iv);
  d.setAAD(Buffer.from(aad, 'utf8'));
  d.setAuthTag(tag);
  return Buffer.concat([d.update(sealed.subarray(IV_BYTES, sealed.length - TAG_BYTES)), d.final()]);
}

/** What a secret version's value is bound to. */
export interface ValueBinding {
  secretId: string;
  orgId: string;
  scope: string;
  target: string;
  name: string;
  version: number;
}

export const valueAad = (b: ValueBinding): string => `loom-secret-value:v1\0${b.secretId}\0${b.orgId}\0${b.scope}\0${b.target}\0${b.name}\0${b.version}`;
export const dekAad = (b: ValueBinding, kekVersion: number): string => `loom-secret-dek:v1\0${b.secretId}\0${b.name}\0${b.version}\0${kekVersion}`;

/** A key check value: identifies a master key without revealing it (HMAC of a fixed label). */
export const keyCheck = (kek: Buffer): string => createHmac('sha256', kek).update('loom-secrets-master-key-check:v1').digest('hex');

export interface SealedVersion {
  wrappedDek: Buffer;
  ciphertext: Buffer;
}

export function encryptVersion(kek: Buffer, kekVersion: number, b: ValueBinding, value: Buffer): SealedVersion {
  const dek = randomBytes(KEY_BYTES);
  try {
    return { ciphertext: seal(dek, value, valueAad(b)), wrappedDek: seal(kek, dek, dekAad(b, kekVersion)) };
  } finally {
    dek.fill(0);
  }
}

export function decryptVersion(kek: Buffer, kekVersion: number, b: ValueBinding, v: SealedVersion): Buffer {
  const dek = open(kek, v.wrappedDek, dekAad(b, kekVersion));
  try {
    return open(dek, v.ciphertext, valueAad(b));
  } finally {
    dek.fill(0);
  }
}

/** Re-wraps a data key under a new master key; the value's ciphertext is untouched. */
export function rewrapDek(oldKek: Buffer, oldVersion: number, newKek: Buffer, newVersion: number, b: ValueBinding, wrapped: Buffer): Buffer {
  const dek = open(oldKek, wrapped, dekAad(b, oldVersion));
  try {
    return seal(newKek, dek, dekAad(b, newVersion));
  } finally {
    dek.fill(0);
  }
}
