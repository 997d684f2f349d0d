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

export interface AttachOptions {
  /** Ping the server this often; no pong by the next ping means the connection is dead. */
  pingMs?: number;
  /** How long to keep trying to reconnect after the connection is lost. */
  reconnectMs?: number;
}

/** Close codes the server sends on purpose: the session is over, do not reconnect. */
const FINAL_CLOSE_CODES = new Set([1000, 1001, 1008, 1011, 4401, 4403]);

const envSeconds = (raw: string | undefined, dflt: number) => {
  const v = Number(raw);
  return Number.isFinite(v) && v > 0 ? v * 1000 : dflt;
};

/**
 * Attaches the local terminal (or piped stdin/stdout) to a weaver over the WebSocket protocol.
 * The CLI pings the server (LOOM_ATTACH_PING_SECS, default 15) and, when the connection drops
 * without the server ending the session (a network blip, a proxy restart), reconnects by itself
 * for up to LOOM_ATTACH_RECONNECT_SECS (default 60) with a fresh attach ticket, asking the server
 * to replay only the output it missed (`since=<position>`).
 */
export function attachTerminal(
  api: ApiClient,
  weaverId: string,
  io: { stdin: NodeJS.ReadStream; stdout: NodeJS.WriteStream } = { stdin: process.stdin, stdout: process.stdout },
  opts: AttachOptions = {},
): Promise<AttachResult> {
  const pingMs = opts.pingMs ?? envSeconds(process.env['LOOM_ATTACH_PING_SECS'], 15_000);
  const reconnectMs = opts.reconnectMs ?? envSeconds(process.env['LOOM_ATTACH_RECONNECT_SECS'], 60_000);
  const base = `${api.serverUrl.replace(/^http/, 'ws')}/api/weaver/${encodeURIComponent(weaverId)}/attach`;
  const tty = io.stdin.isTTY === true;
  return new Promise<AttachResult>((resolve, reject) => {
    let result: AttachResult = { how: 'closed', exitCode: null };
    let ws: WebSocket | null = null;
    let pendingPrefix = false;
    let position: number | null = null; // how far into the weaver's output we have printed
    let finished = false;
    let inputStarted = false;
    let lostAt = 0;
    let revokedWhy: string | null = null;

    const send = (data: Buffer | string, binary: boolean) => {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(data, { binary });
    };
    const sendSize = () => {
      if (io.stdout.isTTY && io.stdout.columns && io.stdout.rows) send(JSON.stringify({ type: 'resize', cols: io.stdout.columns, rows: io.stdout.rows }), false);
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
        if (at > 0) send(data.subarray(0, at), true);
        return detach();
      }
      if (data[data.length - 1] === DETACH_KEYS[0]) {
        pendingPrefix = true;
        data = data.subarray(0, -1);
      }
      if (data.length) send(data, true);
    };
    const onEnd = () => {
      // Piped input ended: give the program a moment to answer, then detach.
      setTimeout(detach, 500);
    };
    const detach = () => {
      result = { how: 'detach', exitCode: null };
      if (ws && ws.readyState === WebSocket.OPEN) ws.close(1000, 'detach');
      else finish();
    };
    const finish = (err?: CliError) => {
      if (finished) return;
      finished = true;
      io.stdin.off('data', onInput);
      io.stdin.off('end', onEnd);
      process.off('SIGWINCH', sendSize);
      if (tty && inputStarted) io.stdin.setRawMode(false);
      io.stdin.pause();
      if (err) reject(err);
      else resolve(result);
    };
    const startInput = () => {
      if (inputStarted) return;
      inputStarted = true;
      if (tty) io.stdin.setRawMode(true);
      process.on('SIGWINCH', sendSize);
      io.stdin.on('data', onInput);
      io.stdin.on('end', onEnd);
      io.stdin.resume();
    };
    const note = (text: string) => process.stderr.write(`\r\n[loom: ${text}]\r\n`);

    /** One connection; resolves how it ended. */
    const connect = async (): Promise<void> => {
      let url = base;
      let headers: Record<string, string> = { authorization: `Bearer ${api.requireToken()}` };
      if (position !== null) {
        // Reconnecting: a fresh single-use ticket, and only the output we missed.
        const t = await api.post<{ ticket: string }>(`/api/weaver/${encodeURIComponent(weaverId)}/attach-ticket`);
        url = `${base}?ticket=${encodeURIComponent(t.ticket)}&since=${position}`;
        headers = {};
      }
      const sock = new WebSocket(url, { headers, perMessageDeflate: false });
      ws = sock;
      let answered = true;
      const pinger = setInterval(() => {
        if (sock.readyState !== WebSocket.OPEN) return;
        if (!answered) return sock.terminate();
        answered = false;
        sock.ping();
      }, pingMs);
      sock.on('pong', () => (answered = true));
      await new Promise<void>((done, fail) => {
        let opened = false;
        sock.on('unexpected-response', (_req, res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => {
            let msg = `attach refused (HTTP ${res.statusCode})`;
            try {
              msg = (JSON.parse(body) as { error: { message: string } }).error.message;
            } catch {
              /* keep the generic message */
            }
            fail(new CliError(msg, 1, undefined, res.statusCode));
          });
        });
        sock.on('error', (e) => {
          if (!opened) fail(new CliError(`attach failed: ${e.message}`, 1, 'unreachable'));
        });
        sock.on('open', () => {
          opened = true;
          answered = true;
          if (lostAt) note('reconnected');
          lostAt = 0;
          sendSize();
          startInput();
        });
        sock.on('message', (data: Buffer, isBinary: boolean) => {
          answered = true;
          if (isBinary) {
            io.stdout.write(data);
            if (position !== null) position += data.length;
            return;
          }
          try {
            const msg = JSON.parse(data.toString('utf8')) as { type?: string; code?: number | string | null; message?: string; from?: number; to?: number };
            if (msg.type === 'exit') result = { how: 'exit', exitCode: typeof msg.code === 'number' ? msg.code : null };
            else if (msg.type === 'replay' && typeof msg.from === 'number') {
              if (position !== null && msg.from > position) note(`${msg.from - position} bytes of output were lost while disconnected`);
              position = msg.from;
            } else if (msg.type === 'error' && msg.message) {
              // Revocations end the command with this message (below); others are shown now.
              if (msg.code === 'credential_revoked' || msg.code === 'access_revoked') revokedWhy = msg.message;
              else process.stderr.write(`\r\nloom: ${msg.message}\r\n`);
            }
          } catch {
            /* ignore malformed control frames */
          }
        });
        sock.on('close', (code) => {
          clearInterval(pinger);
          if (!opened) return; // 'error' or 'unexpected-response' decides
          if (code === 4401 || code === 4403) return fail(new CliError(`the server ended the session: ${revokedWhy ?? 'access withdrawn'}`, 1, 'revoked'));
          if (result.how !== 'closed' || FINAL_CLOSE_CODES.has(code) || position === null) return done();
          fail(Object.assign(new CliError('connection lost', 1, 'connection_lost'), { lost: true }));
        });
      });
    };

    void (async () => {
      for (;;) {
        if (finished) return;
        try {
          await connect();
          return finish();
        } catch (e) {
          const err = e instanceof CliError ? e : new CliError(String(e));
          // Refusals (token revoked, weaver gone, not running) end the session; network errors retry.
          const retryable = finished === false && result.how === 'closed' && position !== null && (err.code === 'connection_lost' || err.code === 'unreachable' || (err.status !== undefined && err.status >= 502));
          if (!retryable) return finish(err);
          if (!lostAt) {
            lostAt = Date.now();
            note('connection lost; reconnecting');
          }
          if (Date.now() - lostAt > reconnectMs) return finish(new CliError(`connection lost; could not reconnect within ${Math.round(reconnectMs / 1000)} s`));
          await new Promise((r) => setTimeout(r, Math.min(2000, 100 + (Date.now() - lostAt) / 4)));
        }
      }
    })();
  });
}
