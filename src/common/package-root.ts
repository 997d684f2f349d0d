import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | null = null;

function isLoomPackage(dir: string): boolean {
  const p = join(dir, 'package.json');
  if (!existsSync(p)) return false;
  try {
    return (JSON.parse(readFileSync(p, 'utf8')) as { name?: string }).name === 'loom';
  } catch {
    return false;
  }
}

/**
 * The Loom package root (where native/build/Release lives): the nearest ancestor of this module
 * whose package.json is Loom's. Works from src/ (tsx), dist/ and an installed package alike.
 */
export function packageRoot(): string {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (isLoomPackage(dir)) return (cached = dir);
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the Loom package root (the package.json named "loom")');
    dir = up;
  }
}
