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
 * stdin/stdout (stripping the pipe byte). The relay is ~60 lines of C, compiled once with the
 * host's cc into <dataDir>/local/bin (keyed by the source hash); LOOM_ATTACH_RELAY may point
 * at a prebuilt binary (a packaged build should ship one); python3 is the last fallback.
 * Resize goes through conmon's `winsz` fifo ("<rows> <cols>\n").
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join, dirname, basename } from 'node:path';
import { LoomError } from '../../common/errors.js';
import type { TerminalStream } from '../../weaver/provisioner.js';
import { exists, run } from './util.js';
import { which } from './runtime.js';

const RELAY_C = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
/* loom-attach-relay <dir> <name>: stdio <-> conmon attach socket (SOCK_SEQPACKET). */
static int write_all(int fd, const char *b, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, b, n);
    if (w < 0) { if (errno == EINTR) continue; return -1; }
    b += w; n -= (size_t)w;
  }
  return 0;
}
int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: %s dir name\n", argv[0]); return 2; }
  signal(SIGPIPE, SIG_IGN);
  int dfd = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) { perror("open socket dir"); return 1; }
  struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof a.sun_path, "/proc/self/fd/%d/%s", dfd, argv[2]);
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) { perror("socket"); return 1; }
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
  write_all(2, "+\n", 2); /* connected */
  static char buf[65536];
  struct pollfd p[2] = {{0, POLLIN, 0}, {s, POLLIN, 0}};
  int in_open = 1;
  for (;;) {
    p[0].fd = in_open ? 0 : -1;
    if (poll(p, 2, -1) < 0) { if (errno == EINTR) continue; perror("poll"); return 1; }
    if (p[1].revents) {
      ssize_t n = recv(s, buf, sizeof buf, 0);
      if (n < 0) { if (errno == EINTR || errno == EAGAIN) continue; return 0; }
      if (n == 0) return 0;
      if (n > 1 && write_all(1, buf + 1, (size_t)n - 1) < 0) return 0;
    }
    if (in_open && p[0].revents) {
      ssize_t n = read(0, buf, 4096);
      if (n < 0) { if (errno == EINTR || errno == EAGAIN) continue; return 0; }
      if (n == 0) return 0; /* detach: the container keeps running */
      if (send(s, buf, (size_t)n, MSG_NOSIGNAL) < 0) return 0;
    }
  }
}
`;

const RELAY_PY = String.raw`
import os, socket, sys, select
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
d = os.open(sys.argv[1], os.O_PATH)
s.connect("/proc/self/fd/%d/%s" % (d, sys.argv[2]))
os.write(2, b"+\n")
while True:
    r, _, _ = select.select([0, s], [], [])
    if s in r:
        b = s.recv(65536)
        if not b: sys.exit(0)
        if len(b) > 1: os.write(1, b[1:])
    if 0 in r:
        b = os.read(0, 4096)
        if not b: sys.exit(0)
        s.send(b)
`;

export interface RelayCommand {
  cmd: string;
  args: string[];
}

/** Finds or builds the attach relay; throws when no way to talk SOCK_SEQPACKET exists. */
export async function ensureAttachRelay(binDir: string): Promise<RelayCommand> {
  const env = process.env.LOOM_ATTACH_RELAY;
  if (env && (await exists(env))) return { cmd: env, args: [] };
  const hash = createHash('sha256').update(RELAY_C).digest('hex').slice(0, 12);
  const bin = join(binDir, `loom-attach-relay-${hash}`);
  if (await exists(bin)) return { cmd: bin, args: [] };
  const cc = which('cc') ?? which('gcc') ?? which('clang');
  if (cc) {
    await fsp.mkdir(binDir, { recursive: true });
    const src = join(binDir, `relay-${hash}-${process.pid}.c`);
    const tmp = `${bin}.${process.pid}.tmp`;
    await fsp.writeFile(src, RELAY_C);
    const r = await run(cc, ['-O2', '-o', tmp, src], { timeoutMs: 60_000 });
    await fsp.rm(src, { force: true });
    if (r.code === 0) {
      await fsp.rename(tmp, bin);
      return { cmd: bin, args: [] };
    }
    await fsp.rm(tmp, { force: true });
  }
  const py = which('python3');
  if (py) return { cmd: py, args: ['-c', RELAY_PY] };
  throw new LoomError(503, 'attach_unavailable', 'cannot attach: no attach relay (set LOOM_ATTACH_RELAY, or install a C compiler or python3)');
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
