/**
 * Materializing a container's root filesystem from an unpacked image, copy-on-write.
 * `Materializer` is the seam where the branching feature's copy primitive (btrfs subvolume
 * snapshot, reflink copy) plugs in; overlayfs is the default and takes a few milliseconds
 * on ext4 whatever the image size.
 */
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { run } from './util.js';

export interface Materializer {
  readonly kind: string;
  /** Makes `target` a writable view of `lower`; private state (upper layer etc.) goes under `stateDir`. */
  materialize(lower: string, stateDir: string, target: string): Promise<void>;
  /** Undoes materialize(); idempotent. Leaves `stateDir` for the caller to remove. */
  release(stateDir: string, target: string): Promise<void>;
}

/** Mount points below `prefix` (or equal to it), deepest first, from /proc/self/mountinfo. */
export async function mountsUnder(prefix: string): Promise<string[]> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const mp = f[4]?.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (mp && (mp === prefix || mp.startsWith(prefix.endsWith('/') ? prefix : `${prefix}/`))) out.push(mp);
  }
  return out.sort((a, b) => b.length - a.length);
}

export async function unmountAll(prefix: string): Promise<void> {
  for (let round = 0; round < 3; round++) {
    const mps = await mountsUnder(prefix);
    if (mps.length === 0) return;
    for (const mp of mps) {
      const r = await run('umount', [mp]);
      if (r.code !== 0) await run('umount', ['-l', mp]);
    }
  }
}

/** lowerdir = image rootfs (read-only), upperdir/workdir under stateDir. */
export class OverlayMaterializer implements Materializer {
  readonly kind = 'overlayfs';

  async materialize(lower: string, stateDir: string, target: string): Promise<void> {
    const upper = join(stateDir, 'upper');
    const work = join(stateDir, 'work');
    await Promise.all([fsp.mkdir(upper, { recursive: true }), fsp.mkdir(work, { recursive: true }), fsp.mkdir(target, { recursive: true })]);
    const r = await run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lower},upperdir=${upper},workdir=${work}`, target]);
    if (r.code !== 0) throw new Error(`overlay mount failed: ${r.stderr.trim()}`);
  }

  async release(_stateDir: string, target: string): Promise<void> {
    await unmountAll(target);
  }
}

/** Plain recursive copy: the fallback where overlayfs is unavailable (slow for big images). */
export class CopyMaterializer implements Materializer {
  readonly kind = 'copy';

  async materialize(lower: string, _stateDir: string, target: string): Promise<void> {
    await fsp.mkdir(target, { recursive: true });
    const r = await run('cp', ['-a', '--reflink=auto', `${lower}/.`, target], { timeoutMs: 600_000 });
    if (r.code !== 0) throw new Error(`copy failed: ${r.stderr.trim()}`);
  }

  async release(): Promise<void> {
    /* the caller removes the directory */
  }
}
