/** Prints rows as an aligned table (or nothing but the header when empty). */
export function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  process.stdout.write(line(headers) + '\n');
  for (const r of rows) process.stdout.write(line(r) + '\n');
}

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

/** "3m", "2h5m", "1d2h": compact durations for tables. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  const neg = ms < 0;
  let s = Math.floor(Math.abs(ms) / 1000);
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  const out = d ? `${d}d${h}h` : h ? `${h}h${m}m` : m ? `${m}m${s}s` : `${s}s`;
  return neg ? `-${out}` : out;
}

/** True when progress output is wanted: a terminal on stderr and not --json. */
export const interactive = (json: boolean): boolean => !json && process.stderr.isTTY === true;

/** A one-line status on stderr that rewrites itself on a terminal and stays quiet when piped. */
export class Progress {
  private last = '';
  constructor(private readonly enabled: boolean) {}
  update(text: string): void {
    if (!this.enabled || text === this.last) return;
    this.last = text;
    process.stderr.write(`\r\x1b[2K${text}`);
  }
  done(text?: string): void {
    if (!this.enabled) return;
    process.stderr.write(`\r\x1b[2K${text ? text + '\n' : ''}`);
  }
}

export function progressBar(pct: number, width = 24): string {
  const p = Math.max(0, Math.min(100, pct));
  const filled = Math.round((p / 100) * width);
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${p.toFixed(0).padStart(3)}%`;
}
