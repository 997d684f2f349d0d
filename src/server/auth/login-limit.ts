import { LoomError } from '../../common/errors.js';

/**
 * Brute-force brake for sign-in and token-issuing routes: failures are counted per key (an
 * account, `user:<name>`, and a client address, `addr:<ip>`) in a sliding window; once a key
 * reaches the limit every try on it is refused with 429 and a Retry-After until the oldest
 * failure leaves the window — even with the right password, so guessing cannot be confirmed.
 * In memory on purpose: a restart forgets the counts, which costs an attacker a restart they cannot cause.
 */
export class LoginLimiter {
  private readonly failures = new Map<string, number[]>();

  constructor(private readonly maxFailures: number, private readonly windowMs: number) {}

  private recent(key: string, now: number): number[] {
    const list = (this.failures.get(key) ?? []).filter((t) => now - t < this.windowMs);
    if (list.length) this.failures.set(key, list);
    else this.failures.delete(key);
    return list;
  }

  /** Seconds until a blocked key may try again, or 0 when none of the keys is blocked. */
  retryAfter(keys: string[], now = Date.now()): number {
    let wait = 0;
    for (const k of keys) {
      const list = this.recent(k, now);
      if (list.length >= this.maxFailures) wait = Math.max(wait, Math.ceil((list[list.length - this.maxFailures]! + this.windowMs - now) / 1000));
    }
    return wait;
  }

  /** Throws 429 (with details.retry_after_seconds, sent as Retry-After) when a key is blocked. */
  check(keys: string[]): void {
    const wait = this.retryAfter(keys);
    if (wait > 0) {
      throw new LoomError(429, 'too_many_attempts', `too many failed attempts; try again in ${wait} s`, { retry_after_seconds: wait });
    }
  }

  fail(keys: string[], now = Date.now()): void {
    for (const k of keys) {
      const list = this.recent(k, now);
      list.push(now);
      this.failures.set(k, list.slice(-this.maxFailures));
    }
    // Bound memory under a spray of distinct keys: drop the oldest keys first.
    while (this.failures.size > 100_000) this.failures.delete(this.failures.keys().next().value as string);
  }

  /** A success proves the account's secret: its count resets (the address's does not). */
  succeed(accountKey: string): void {
    this.failures.delete(accountKey);
  }
}
