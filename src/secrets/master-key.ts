/**
 * The master key file: 64 hex digits (a 256-bit key), mode 0400, owned by the server's user.
 * Generated on first start when absent; never logged, never in the database.
 */
import { closeSync, constants, fsyncSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LoomError } from '../common/errors.js';
import { KEY_BYTES } from './crypto.js';

/** A master key problem: the server prints the message as its one line and stops. */
export class MasterKeyError extends LoomError {
  constructor(message: string) {
    super(500, 'secrets_master_key', message);
  }
}

export function parseMasterKey(text: string, path: string): Buffer {
  const hex = text.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new MasterKeyError(`secrets master key ${path} is not 64 hex digits (a 256-bit key); set LOOM_SECRETS_MASTER_KEY_FILE to the right file`);
  return Buffer.from(hex, 'hex');
}

/** Reads the key; null when the file does not exist. Refuses a key others can read. */
export function readMasterKey(path: string): Buffer | null {
  let st;
  try {
    st = lstatSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new MasterKeyError(`cannot read secrets master key ${path}: ${(e as Error).message}`);
  }
  if (!st.isFile()) throw new MasterKeyError(`secrets master key ${path} is not a regular file`);
  if (st.mode & 0o077) throw new MasterKeyError(`secrets master key ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)}); chmod 400 it`);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new MasterKeyError(`cannot read secrets master key ${path}: ${(e as Error).message}`);
  }
  return parseMasterKey(text, path);
}

export function newMasterKey(): Buffer {
  return randomBytes(KEY_BYTES);
}

/** Writes a key file with mode 0400 (exclusive create: never overwrites). */
export function writeMasterKey(path: string, key: Buffer): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o400);
  try {
    writeSync(fd, `${key.toString('hex')}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Replaces the key file atomically with a file written beside it (path + suffix). */
export function installMasterKey(from: string, to: string): void {
  renameSync(from, to);
  const dfd = openSync(dirname(to), constants.O_RDONLY);
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}
