/**
 * The sidecar's on-disk buffer for events the server could not take yet: JSON-lines segment
 * files in one directory, oldest first. Bounded by maxBytes: appending past the cap drops the
 * oldest events (and counts them). Survives a sidecar restart: segments are re-read at open and
 * the read position of the oldest segment is kept in a small `head` file.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

interface Segment {
  n: number;
  bytes: number;
  events: number;
}

export class DiskBuffer {
  private readonly segs: Segment[] = [];
  /** lines of the oldest segment already consumed or dropped */
  private headLine = 0;
  private headBytes = 0;
  private headCache: { n: number; lines: string[] } | null = null;
  private readonly segMax: number;
  bytes = 0;
  events = 0;
  droppedEvents = 0;

  constructor(private readonly dir: string, readonly maxBytes: number) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.segMax = Math.max(4096, Math.min(1 << 20, Math.floor(maxBytes / 8)));
    for (const f of readdirSync(dir).filter((f) => /^seg-\d+\.jsonl$/.test(f)).sort((a, b) => num(a) - num(b))) {
      const text = readFileSync(join(dir, f), 'utf8');
      const lines = text.split('\n').filter(Boolean);
      this.segs.push({ n: num(f), bytes: Buffer.byteLength(text), events: lines.length });
    }
    const head = existsSync(join(dir, 'head')) ? (JSON.parse(readFileSync(join(dir, 'head'), 'utf8')) as { n: number; line: number }) : null;
    if (head && this.segs[0]?.n === head.n) {
      const lines = this.lines(this.segs[0]);
      this.headLine = Math.min(head.line, lines.length);
      this.headBytes = lines.slice(0, this.headLine).reduce((a, l) => a + Buffer.byteLength(l) + 1, 0);
    }
    this.bytes = this.segs.reduce((a, s) => a + s.bytes, 0) - this.headBytes;
    this.events = this.segs.reduce((a, s) => a + s.events, 0) - this.headLine;
  }

  get empty(): boolean {
    return this.events === 0;
  }

  /** Appends serialized events (one JSON each); drops the oldest beyond the cap. Returns how many were dropped. */
  append(items: string[]): number {
    if (!items.length) return 0;
    let last = this.segs[this.segs.length - 1];
    let chunk: string[] = [];
    let chunkBytes = 0;
    const flush = () => {
      if (!chunk.length || !last) return;
      appendFileSync(join(this.dir, `seg-${last.n}.jsonl`), chunk.join('\n') + '\n');
      last.bytes += chunkBytes;
      last.events += chunk.length;
      this.bytes += chunkBytes;
      this.events += chunk.length;
      chunk = [];
      chunkBytes = 0;
    };
    for (const s of items) {
      const b = Buffer.byteLength(s) + 1;
      if (!last || last.bytes + chunkBytes + b > this.segMax) {
        flush();
        last = { n: (last?.n ?? 0) + 1, bytes: 0, events: 0 };
        this.segs.push(last);
      }
      chunk.push(s);
      chunkBytes += b;
    }
    flush();
    return this.enforceCap();
  }

  private enforceCap(): number {
    let dropped = 0;
    while (this.bytes > this.maxBytes && this.events > 0) {
      const seg = this.segs[0]!;
      const lines = this.lines(seg);
      // drop whole lines from the head until under the cap (or the segment is used up)
      while (this.headLine < lines.length && this.bytes > this.maxBytes) {
        const b = Buffer.byteLength(lines[this.headLine]!) + 1;
        this.headLine++;
        this.headBytes += b;
        this.bytes -= b;
        this.events--;
        dropped++;
      }
      if (this.headLine >= lines.length) this.dropHeadSegment();
    }
    this.droppedEvents += dropped;
    this.saveHead();
    return dropped;
  }

  /** Up to maxEvents oldest events totalling at most maxBytes (at least one). Does not remove them. */
  peek(maxEvents: number, maxBytes: number): string[] {
    const out: string[] = [];
    let bytes = 0;
    let line = this.headLine;
    for (const seg of this.segs) {
      const lines = this.lines(seg);
      for (let i = seg === this.segs[0] ? line : 0; i < lines.length; i++) {
        const b = Buffer.byteLength(lines[i]!) + 1;
        if (out.length >= maxEvents || (out.length > 0 && bytes + b > maxBytes)) return out;
        out.push(lines[i]!);
        bytes += b;
      }
      line = 0;
    }
    return out;
  }

  /** Removes the `count` oldest events (after a successful send of peek()'s result). */
  ack(count: number): void {
    while (count > 0 && this.segs.length) {
      const seg = this.segs[0]!;
      const lines = this.lines(seg);
      const take = Math.min(count, lines.length - this.headLine);
      for (let i = 0; i < take; i++) {
        const b = Buffer.byteLength(lines[this.headLine]!) + 1;
        this.headLine++;
        this.headBytes += b;
        this.bytes -= b;
        this.events--;
      }
      count -= take;
      if (this.headLine >= lines.length) this.dropHeadSegment();
    }
    this.saveHead();
  }

  /** The timestamp (ns) of the oldest buffered event, or null. */
  oldestTimestampNs(): bigint | null {
    const first = this.peek(1, Infinity)[0];
    if (!first) return null;
    const m = /"timestamp_ns":"(\d+)"/.exec(first);
    return m ? BigInt(m[1]!) : null;
  }

  private dropHeadSegment(): void {
    const seg = this.segs.shift();
    if (!seg) return;
    try {
      unlinkSync(join(this.dir, `seg-${seg.n}.jsonl`));
    } catch {
      /* already gone */
    }
    this.headLine = 0;
    this.headBytes = 0;
    this.headCache = null;
  }

  private lines(seg: Segment): string[] {
    if (seg === this.segs[0] && this.headCache?.n === seg.n && this.headCache.lines.length === seg.events) return this.headCache.lines;
    const p = join(this.dir, `seg-${seg.n}.jsonl`);
    const lines = existsSync(p) ? readFileSync(p, 'utf8').split('\n').filter(Boolean) : [];
    if (seg === this.segs[0]) this.headCache = { n: seg.n, lines };
    return lines;
  }

  private saveHead(): void {
    const p = join(this.dir, 'head');
    const seg = this.segs[0];
    writeFileSync(`${p}.tmp`, JSON.stringify({ n: seg?.n ?? 0, line: seg ? this.headLine : 0 }));
    renameSync(`${p}.tmp`, p);
  }

  /** Bytes on disk (for tests): the segment files. */
  diskBytes(): number {
    return this.segs.reduce((a, s) => a + (existsSync(join(this.dir, `seg-${s.n}.jsonl`)) ? statSync(join(this.dir, `seg-${s.n}.jsonl`)).size : 0), 0);
  }
}

function num(f: string): number {
  return Number(/\d+/.exec(f)![0]);
}
