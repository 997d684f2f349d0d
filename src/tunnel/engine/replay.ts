// Sliding window against replayed transport counters (RFC 6479's ring of bit blocks, as
// wireguard-go's replay.go). Only call accept() after the packet authenticated.
const BLOCK_BITS = 32;
const RING_BLOCKS = 64; // a power of two
const WINDOW = (RING_BLOCKS - 1) * BLOCK_BITS; // 2016 packets of reordering tolerated

export class ReplayWindow {
  private readonly ring = new Uint32Array(RING_BLOCKS);
  private last = 0;

  /** True the first time a counter within the window (and below limit) is seen. */
  accept(counter: number, limit: number): boolean {
    if (!Number.isSafeInteger(counter) || counter < 0 || counter >= limit) return false;
    let block = Math.floor(counter / BLOCK_BITS);
    if (counter > this.last) {
      const current = Math.floor(this.last / BLOCK_BITS);
      const diff = Math.min(block - current, RING_BLOCKS);
      for (let i = current + 1; i <= current + diff; i++) this.ring[i & (RING_BLOCKS - 1)] = 0;
      this.last = counter;
    } else if (this.last - counter > WINDOW) {
      return false;
    }
    block &= RING_BLOCKS - 1;
    const bit = 1 << (counter % BLOCK_BITS);
    const old = this.ring[block]!;
    this.ring[block] = old | bit;
    return (old & bit) === 0;
  }
}

export const REPLAY_WINDOW_SIZE = WINDOW;
