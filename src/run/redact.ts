/**
 * Secret redaction. `Redactor` holds the known values; `StreamRedactor` filters a stream whose
 * writes may split a value anywhere (even one byte per write): it holds back the longest tail
 * that is still a prefix of some secret, so at most max-secret-length − 1 characters wait.
 */
import { StringDecoder } from 'node:string_decoder';

export class Redactor {
  private entries: { value: string; mark: string }[] = [];
  add(name: string, value: string): void {
    if (!value || this.entries.some((e) => e.value === value)) return;
    this.entries.push({ value, mark: `[REDACTED:SECRET_${name}]` });
    // Longest first: a value containing another is replaced whole.
    this.entries.sort((a, b) => b.value.length - a.value.length);
  }
  get maxLength(): number {
    return this.entries[0]?.value.length ?? 0;
  }
  /** Earliest occurrence at or after `from` (longest value on a tie). */
  find(s: string, from: number): { at: number; len: number; mark: string } | undefined {
    let best: { at: number; len: number; mark: string } | undefined;
    for (const e of this.entries) {
      const at = s.indexOf(e.value, from);
      if (at >= 0 && (!best || at < best.at)) best = { at, len: e.value.length, mark: e.mark };
    }
    return best;
  }
  /** Length of the longest suffix of `s` that is a proper prefix of some value. */
  pendingTail(s: string): number {
    for (let k = Math.min(this.maxLength - 1, s.length); k > 0; k--) {
      const tail = s.slice(s.length - k);
      if (this.entries.some((e) => e.value.startsWith(tail))) return k;
    }
    return 0;
  }
  redact(s: string): string {
    let out = '';
    let i = 0;
    for (let m = this.find(s, 0); m; m = this.find(s, i)) {
      out += s.slice(i, m.at) + m.mark;
      i = m.at + m.len;
    }
    return out + s.slice(i);
  }
  /** Redacts every string inside a JSON-able value. */
  deep<T>(v: T): T {
    if (typeof v === 'string') return this.redact(v) as T;
    if (Array.isArray(v)) return v.map((x) => this.deep(x)) as T;
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, this.deep(x)])) as T;
    return v;
  }
}

export class StreamRedactor {
  private pending = '';
  private decoder = new StringDecoder('utf8');
  constructor(private readonly r: Redactor) {}
  write(chunk: Buffer | string): string {
    const s = this.pending + (typeof chunk === 'string' ? chunk : this.decoder.write(chunk));
    let out = '';
    let i = 0;
    for (let m = this.r.find(s, 0); m; m = this.r.find(s, i)) {
      out += s.slice(i, m.at) + m.mark;
      i = m.at + m.len;
    }
    const rest = s.slice(i);
    const keep = this.r.pendingTail(rest);
    this.pending = rest.slice(rest.length - keep);
    return out + rest.slice(0, rest.length - keep);
  }
  end(): string {
    const s = this.pending + this.decoder.end();
    this.pending = '';
    return this.r.redact(s);
  }
}

/** Splits text into complete lines; the last partial line waits for more or for end(). */
export class LineSplitter {
  private buf = '';
  push(s: string): string[] {
    this.buf += s;
    const parts = this.buf.split('\n');
    this.buf = parts.pop()!;
    return parts;
  }
  end(): string[] {
    const b = this.buf;
    this.buf = '';
    return b ? [b] : [];
  }
}
