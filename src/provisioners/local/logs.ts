/**
 * Reading conmon's k8s-file logs: each line is "<RFC3339 ts> <stdout|stderr> <F|P> <text>";
 * F ends a line, P is a partial line (no newline was seen yet).
 */
import { promises as fsp, watch as fsWatch, type FSWatcher } from 'node:fs';
import { sleep } from './util.js';

/** One k8s-file record → the bytes the process wrote. */
export function parseLogLine(line: string): Buffer | null {
  const a = line.indexOf(' ');
  const b = a < 0 ? -1 : line.indexOf(' ', a + 1);
  const c = b < 0 ? -1 : line.indexOf(' ', b + 1);
  if (c < 0) {
    // "<ts> stdout F" with empty text
    const parts = line.split(' ');
    if (parts.length === 3 && (parts[2] === 'F' || parts[2] === 'P')) return Buffer.from(parts[2] === 'F' ? '\n' : '');
    return null;
  }
  const tag = line.slice(b + 1, c);
  const text = line.slice(c + 1);
  return Buffer.from(tag === 'P' ? text : `${text}\n`);
}

/** Splits file content into records; returns the parsed chunks and the unconsumed tail. */
function parseChunk(text: string): { chunks: Buffer[]; rest: string } {
  const lines = text.split('\n');
  const rest = lines.pop() ?? '';
  const chunks: Buffer[] = [];
  for (const l of lines) {
    const b = parseLogLine(l);
    if (b) chunks.push(b);
  }
  return { chunks, rest };
}

/** Groups records into output lines so that `tail` counts lines as the process wrote them. */
function toLines(chunks: Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  let cur: Buffer[] = [];
  for (const c of chunks) {
    cur.push(c);
    if (c.length && c[c.length - 1] === 0x0a) {
      out.push(Buffer.concat(cur));
      cur = [];
    }
  }
  if (cur.length) out.push(Buffer.concat(cur));
  return out;
}

export async function readLogTail(file: string, tail?: number): Promise<Buffer[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    return [];
  }
  const { chunks, rest } = parseChunk(text.endsWith('\n') ? text : `${text}\n`);
  void rest;
  const lines = toLines(chunks);
  return tail === undefined ? lines : tail <= 0 ? [] : lines.slice(-tail);
}

/** Tail then follow: yields new output as conmon appends it until `ended()` or the signal aborts. */
export async function* followLog(file: string, tail: number | undefined, ended: () => Promise<boolean>, signal?: AbortSignal): AsyncGenerator<Buffer> {
  let offset = 0;
  let rest = '';
  try {
    const text = await fsp.readFile(file, 'utf8');
    const cut = text.lastIndexOf('\n') + 1;
    offset = Buffer.byteLength(text.slice(0, cut));
    const lines = toLines(parseChunk(text.slice(0, cut)).chunks);
    for (const l of tail === undefined ? lines : tail <= 0 ? [] : lines.slice(-tail)) yield l;
  } catch {
    /* the file appears later */
  }
  let wake: (() => void) | null = null;
  const poke = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  let watcher: FSWatcher | null = null;
  const arm = () => {
    if (watcher) return;
    try {
      watcher = fsWatch(file, poke);
      watcher.on('error', () => undefined);
    } catch {
      watcher = null;
    }
  };
  signal?.addEventListener('abort', poke, { once: true });
  try {
    let endedSeen = false;
    while (!signal?.aborted) {
      arm();
      const fh = await fsp.open(file, 'r').catch(() => null);
      let got = false;
      if (fh) {
        try {
          const { size } = await fh.stat();
          if (size < offset) offset = 0; // rotated
          if (size > offset) {
            const buf = Buffer.alloc(size - offset);
            const { bytesRead } = await fh.read(buf, 0, buf.length, offset);
            offset += bytesRead;
            const { chunks, rest: r } = parseChunk(rest + buf.subarray(0, bytesRead).toString('utf8'));
            rest = r;
            for (const c of chunks) if (c.length) yield c;
            got = bytesRead > 0;
          }
        } finally {
          await fh.close();
        }
      }
      if (got) continue;
      if (endedSeen) return;
      if (await ended()) {
        endedSeen = true; // one more read to drain what conmon wrote last
        await sleep(50);
        continue;
      }
      await new Promise<void>((r) => {
        wake = r;
        setTimeout(poke, 500).unref();
      });
    }
  } finally {
    signal?.removeEventListener('abort', poke);
    (watcher as FSWatcher | null)?.close();
  }
}
