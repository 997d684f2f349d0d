import WebSocket from 'ws';
import type { ApiClient } from './client.js';
import { CliError } from './client.js';

/** Ctrl+P Ctrl+Q, as in docker attach: everything else (Ctrl+C included) goes to the program. */
export const DETACH_KEYS = Buffer.from([0x10, 0x11]);

export interface AttachResult {
  /** 'exit': the program ended (with its code); 'detach': the user detached; 'closed': the server closed. */
  how: 'exit' | 'detach' | 'closed';
  exitCode: number | null;
}

/** Attaches the local terminal (or piped stdin/stdout) to a weaver over the WebSocket protocol. */
export function attachTerminal(api: ApiClient, weaverId: string, io: { stdin: NodeJS.ReadStream; stdout: NodeJS.WriteStream } = { stdin: process.stdin, stdout: process.stdout }): Promise<AttachResult> {
  const url = `${api.serverUrl.replace(/^http/, 'ws')}/api/weaver/${encodeURIComponent(weaverId)}/attach`;
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${api.requireToken()}` }, perMessageDeflate: false });
  const tty = io.stdin.isTTY === true;
  return new Promise<AttachResult>((resolve, reject) => {
    let result: AttachResult = { how: 'closed', exitCode: null };
    let pendingPrefix = false;
    const sendSize = () => {
      if (io.stdout.isTTY && io.stdout.columns && io.stdout.rows) ws.send(JSON.stringify({ type: 'resize', cols: io.stdout.columns, rows: io.stdout.rows }));
    };
    const onInput = (chunk: Buffer) => {
      // Look for the detach sequence, also split across two reads.
      let data = chunk;
      if (pendingPrefix) {
        pendingPrefix = false;
        if (data[0] === DETACH_KEYS[1]) return detach();
        data = Buffer.concat([DETACH_KEYS.subarray(0, 1), data]);
      }
      const at = data.indexOf(DETACH_KEYS);
      if (at >= 0) {
        if (at > 0) ws.send(data.subarray(0, at), { binary: true });
        return detach();
      }
      if (data[data.length - 1] === DETACH_KEYS[0]) {
        pendingPrefix = true;
        data = data.subarray(0, -1);
      }
      if (data.length) ws.send(data, { binary: true });
    };
    const onEnd = () => {
      // Piped input ended: give the program a moment to answer, then detach.
      setTimeout(detach, 500);
    };
    const detach = () => {
      result = { how: 'detach', exitCode: null };
      ws.close(1000, 'detach');
    };
    const cleanup = () => {
      io.stdin.off('data', onInput);
      io.stdin.off('end', onEnd);
      process.off('SIGWINCH', sendSize);
      if (tty) io.stdin.setRawMode(false);
      io.stdin.pause();
    };
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => {
        let msg = `attach refused (HTTP ${res.statusCode})`;
        try {
          msg = (JSON.parse(body) as { error: { message: string } }).error.message;
        } catch {
          /* keep the generic message */
        }
        reject(new CliError(msg, 1));
      });
    });
    ws.on('error', (e) => reject(new CliError(`attach failed: ${e.message}`)));
    ws.on('open', () => {
      if (tty) io.stdin.setRawMode(true);
      sendSize();
      process.on('SIGWINCH', sendSize);
      io.stdin.on('data', onInput);
      io.stdin.on('end', onEnd);
      io.stdin.resume();
    });
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        io.stdout.write(data);
        return;
      }
      try {
        const msg = JSON.parse(data.toString('utf8')) as { type?: string; code?: number | null; message?: string };
        if (msg.type === 'exit') result = { how: 'exit', exitCode: msg.code ?? null };
        else if (msg.type === 'error' && msg.message) process.stderr.write(`\r\nloom: ${msg.message}\r\n`);
      } catch {
        /* ignore malformed control frames */
      }
    });
    ws.on('close', () => {
      cleanup();
      resolve(result);
    });
  });
}
