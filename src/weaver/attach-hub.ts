import type { TerminalStream } from './provisioner.js';

/** One attached client (a WebSocket, in practice). */
export interface AttachClient {
  sendData(chunk: Buffer): void;
  sendControl(msg: { type: 'exit'; code: number | null } | { type: 'error'; message: string } | { type: 'replay'; from: number; to: number }): void;
  close(code: number, reason: string): void;
}

export const SCROLLBACK_BYTES = 64 * 1024;

/**
 * Fans one backend terminal out to many clients. It keeps the recent output (scrollback) so
 * a client that attaches later first sees what the others saw, and it stays connected while
 * the weaver runs so the scrollback is complete even when nobody is attached.
 */
export class AttachHub {
  private readonly clients = new Set<AttachClient>();
  private chunks: Buffer[] = [];
  private size = 0;
  /** Bytes of output the hub has seen since it opened: the position of the end of the scrollback. */
  private total = 0;
  private ended = false;

  private constructor(private readonly stream: TerminalStream, private readonly onEnd: () => void) {
    stream.onData((chunk) => this.broadcast(chunk));
    stream.onClose((info) => {
      this.ended = true;
      for (const c of this.clients) {
        if (info.error) c.sendControl({ type: 'error', message: info.error });
        c.sendControl({ type: 'exit', code: info.exitCode ?? null });
        c.close(1000, 'process exited');
      }
      this.clients.clear();
      this.onEnd();
    });
  }

  /** Opens the backend stream; `seed` is earlier output (e.g. the log tail) to start the scrollback with. */
  static async open(open: () => Promise<TerminalStream>, seed: Buffer[], onEnd: () => void): Promise<AttachHub> {
    const hub = new AttachHub(await open(), onEnd);
    for (const s of seed) hub.remember(s);
    return hub;
  }

  private remember(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    this.total += chunk.length;
    while (this.size > SCROLLBACK_BYTES && this.chunks.length > 1) this.size -= this.chunks.shift()!.length;
    if (this.size > SCROLLBACK_BYTES) {
      const only = this.chunks[0]!;
      this.chunks = [only.subarray(only.length - SCROLLBACK_BYTES)];
      this.size = SCROLLBACK_BYTES;
    }
  }

  private broadcast(chunk: Buffer): void {
    this.remember(chunk);
    for (const c of this.clients) c.sendData(chunk);
  }

  /**
   * Adds a client. It first gets `{type:"replay",from,to}` and the scrollback between those
   * positions: all of it, or, for a client reconnecting with `since` (the position it had
   * reached), only what it missed — `from` greater than `since` means older output was lost.
   */
  join(client: AttachClient, since?: number): () => void {
    const start = this.total - this.size;
    const from = since !== undefined && since >= start && since <= this.total ? since : start;
    client.sendControl({ type: 'replay', from, to: this.total });
    if (this.total > from) client.sendData(Buffer.concat(this.chunks).subarray(from - start));
    this.clients.add(client);
    return () => this.clients.delete(client);
  }

  write(data: Buffer): void {
    if (!this.ended) this.stream.write(data);
  }

  resize(cols: number, rows: number): void {
    if (!this.ended) this.stream.resize(cols, rows);
  }

  /** Disconnects every client and the backend stream; the weaver keeps running. */
  close(reason = 'weaver deleted'): void {
    for (const c of this.clients) c.close(1001, reason);
    this.clients.clear();
    if (!this.ended) {
      this.ended = true;
      this.stream.close();
      this.onEnd();
    }
  }
}
