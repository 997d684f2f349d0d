/**
 * Attaching to conmon's terminal.
 *
 * conmon 2.1 listens on `<bundle>/attach` with an AF_UNIX SOCK_SEQPACKET socket (conn_sock.c:
 * `bind_unix_socket("attach", SOCK_SEQPACKET | …)`); there is no stream variant. Every message
 * conmon sends is `<1 byte pipe id: 2 stdout, 3 stderr><bytes>`; every message a client sends
 * goes to the container's stdin (the pty master). Several clients may be connected at once;
 * with `--leave-stdin-open` a client's disconnect does not close the container's stdin.
 *
 * Node's net module only speaks SOCK_STREAM (connect() to a seqpacket socket fails with
 * EPROTOTYPE) and libuv cannot adopt a seqpacket fd, so each TerminalStream runs a tiny relay
 * process that connects to the socket and copies bytes between the socket and its
 * stdin/stdout (stripping the pipe byte). The relay is ~60 lines of C in
 * native/src/attach-relay.c, built beside the N-API addon by node-gyp.
 * Resize goes through conmon's `winsz` fifo ("<rows> <cols>\n").
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join, dirname, basename } from 'node:path';
import { LoomError } from '../../common/errors.js';
import { packageRoot } from '../../common/package-root.js';
import type { TerminalStream } from '../../weaver/provisioner.js';
import { exists } from './util.js';

export interface RelayCommand {
  cmd: string;
  args: string[];
}

/** The relay built with the native addon (native/src/attach-relay.c) by `npm ci`. */
export async function ensureAttachRelay(): Promise<RelayCommand> {
  const bin = join(packageRoot(), 'native', 'build', 'Release', 'loom-attach-relay');
  if (await exists(bin)) return { cmd: bin, args: [] };
  throw new LoomError(503, 'attach_unavailable', `cannot attach: ${bin} is missing; build the native code (npm ci, or npx node-gyp rebuild --directory native)`);
}

export interface AttachOptions {
  relay: RelayCommand;
  /** Path of conmon's attach socket. */
  socketPath: string;
  resize: (cols: number, rows: number) => Promise<void>;
  /** Resolves the exit code once the relay ended (the process exited or conmon went away). */
  exitCode: () => Promise<number | undefined>;
}

/** Opens one TerminalStream; resolves once connected (the relay has connected the socket). */
export function openTerminalStream(o: AttachOptions): Promise<TerminalStream> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(o.relay.cmd, [...o.relay.args, dirname(o.socketPath), basename(o.socketPath)], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const dataCbs: ((b: Buffer) => void)[] = [];
    const closeCbs: ((i: { exitCode?: number; error?: string }) => void)[] = [];
    const pending: Buffer[] = [];
    let detached = false;
    let closed = false;
    let closeInfo: { exitCode?: number; error?: string } | null = null;
    let errText = '';
    let settled = false;
    let connected = false;
    child.stderr!.on('data', (b: Buffer) => {
      errText += b.toString('utf8');
      if (!connected && errText.startsWith('+\n')) {
        connected = true;
        errText = errText.slice(2);
        if (!settled) {
          settled = true;
          resolve(stream);
        }
      }
    });
    child.stdout!.on('data', (b: Buffer) => {
      if (dataCbs.length === 0) pending.push(b);
      else for (const cb of dataCbs) cb(b);
    });
    child.stdin!.on('error', () => undefined);
    const fire = (info: { exitCode?: number; error?: string }) => {
      if (closed) return;
      closed = true;
      closeInfo = info;
      for (const cb of closeCbs) cb(info);
    };
    child.on('error', (e) => {
      if (!settled) {
        settled = true;
        reject(new LoomError(503, 'attach_failed', `attach relay: ${e.message}`));
      } else fire({ error: e.message });
    });
    child.on('close', (code) => {
      if (!settled) {
        settled = true;
        reject(new LoomError(409, 'attach_failed', `cannot attach: ${errText.trim() || `relay exited ${code}`}`));
        return;
      }
      if (detached) return fire({});
      if (code !== 0 && errText.trim()) return fire({ error: errText.trim() });
      o.exitCode().then(
        (exitCode) => fire(exitCode === undefined ? {} : { exitCode }),
        () => fire({}),
      );
    });
    const stream: TerminalStream = {
      onData(cb) {
        dataCbs.push(cb);
        if (pending.length) {
          const all = Buffer.concat(pending.splice(0));
          cb(all);
        }
      },
      onClose(cb) {
        if (closeInfo) cb(closeInfo);
        else closeCbs.push(cb);
      },
      write(data) {
        if (!closed && !detached) child.stdin!.write(data);
      },
      resize(cols, rows) {
        o.resize(cols, rows).catch(() => undefined);
      },
      close() {
        if (detached || closed) return;
        detached = true;
        child.stdin!.end();
        const t = setTimeout(() => child.kill('SIGKILL'), 1000);
        t.unref();
        child.once('close', () => clearTimeout(t));
      },
    };
  });
}
