// WireGuard's protocol constants (whitepaper §6.1) and a restartable one-shot timer.
export const REKEY_AFTER_MESSAGES = 2 ** 60;
// 2^64 − 2^13 − 1 in the whitepaper; counters here are safe integers, so the bound that bites is
// 2^53 (unreachable within REJECT_AFTER_TIME at any real rate).
export const REJECT_AFTER_MESSAGES = Number.MAX_SAFE_INTEGER;
export const REKEY_AFTER_TIME_MS = 120_000;
export const REJECT_AFTER_TIME_MS = 180_000;
export const REKEY_ATTEMPT_TIME_MS = 90_000;
export const REKEY_TIMEOUT_MS = 5_000;
export const KEEPALIVE_TIMEOUT_MS = 10_000;
export const COOKIE_SECRET_MAX_AGE_MS = 120_000;
export const MAX_TIMER_HANDSHAKES = REKEY_ATTEMPT_TIME_MS / REKEY_TIMEOUT_MS; // 18
export const INITIATIONS_PER_SECOND = 50;
export const MAX_STAGED_PACKETS = 128;

/** Up to a third of a second of jitter on handshake timers, as the whitepaper asks. */
export function jitterMs(): number {
  return Math.floor(Math.random() * 334);
}

export class Timer {
  private handle: NodeJS.Timeout | null = null;
  constructor(private readonly fire: () => void) {}
  get pending(): boolean {
    return this.handle !== null;
  }
  /** (Re)arms the timer; it never keeps the process alive on its own. */
  mod(ms: number): void {
    if (this.handle) clearTimeout(this.handle);
    this.handle = setTimeout(() => {
      this.handle = null;
      this.fire();
    }, ms);
    this.handle.unref();
  }
  del(): void {
    if (this.handle) clearTimeout(this.handle);
    this.handle = null;
  }
}
