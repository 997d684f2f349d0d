import WebSocket from 'ws';

/** A test client of the attach protocol: collects output, sends input and resizes. */
export class AttachClient {
  output = '';
  controls: { type: string; code?: number | null; message?: string }[] = [];
  closed: Promise<{ code: number; reason: string }>;
  private waiters: (() => void)[] = [];

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (d: Buffer, binary: boolean) => {
      if (binary) this.output += d.toString('utf8');
      else this.controls.push(JSON.parse(d.toString('utf8')) as { type: string });
      for (const w of this.waiters.splice(0)) w();
    });
    this.closed = new Promise((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
  }

  static connect(url: string, weaverId: string, auth: { token?: string; ticket?: string }): Promise<AttachClient> {
    const wsUrl = `${url.replace(/^http/, 'ws')}/api/weaver/${weaverId}/attach${auth.ticket ? `?ticket=${encodeURIComponent(auth.ticket)}` : ''}`;
    const ws = new WebSocket(wsUrl, auth.token ? { headers: { authorization: `Bearer ${auth.token}` } } : {});
    return new Promise((resolve, reject) => {
      ws.once('open', () => resolve(new AttachClient(ws)));
      ws.once('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString()));
        res.on('end', () => reject(Object.assign(new Error(`attach refused: HTTP ${res.statusCode} ${body}`), { status: res.statusCode, body })));
      });
      ws.once('error', reject);
    });
  }

  send(text: string): void {
    this.ws.send(Buffer.from(text), { binary: true });
  }

  resize(cols: number, rows: number): void {
    this.ws.send(JSON.stringify({ type: 'resize', cols, rows }));
  }

  /** Waits until the output (from `from` on) matches. */
  async waitFor(re: RegExp, timeoutMs = 15_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.output.slice(from).match(re);
      if (m) return m;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${re}; output so far:\n${JSON.stringify(this.output.slice(-2000))}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  close(): Promise<{ code: number; reason: string }> {
    this.ws.close(1000, 'detach');
    return this.closed;
  }
}

export async function waitUntil<T>(fn: () => Promise<T | null | undefined | false>, what: string, timeoutMs = 30_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
