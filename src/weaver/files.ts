/**
 * Files in a weaver, done through exec of a small toolbox *inside* the weaver, as its user
 * (local: a read-only static busybox the backend mounts at /.loom/busybox; Kubernetes: the image's
 * sh/cat/tar/stat).
 *
 * Why exec rather than opening files from the host: the kernel resolves every path inside the
 * weaver's own mount namespace and root, so `..`, absolute symlinks and /proc/self/root can only
 * ever reach the weaver's files — the host's /etc/shadow is not in that namespace at all —
 * and it sees the weaver's real mounts (/workspace, secrets tmpfs) that a host-side walk of the
 * root filesystem would miss. Permissions are the weaver user's own: the files API can never write
 * where `loom exec` could not, and new files are owned by that user (through any user-namespace
 * mapping) without the server computing ids. It works the same on both backends. The cost is one
 * exec per call (a few ms, see bench/exec); data moves through pipes at memory speed.
 * We still refuse `..` components and relative paths up front, for clear 400s.
 */
import { LoomError, badRequest } from '../common/errors.js';
import type { ExecProcess, ExecRequest, Provisioner } from './provisioner.js';
import { Readable } from 'node:stream';

export interface FileStat {
  path: string;
  type: 'file' | 'directory' | 'symlink' | 'other';
  size: number;
  /** Permission bits, octal, e.g. "644". */
  mode: string;
  uid: number;
  gid: number;
  /** Modification time, ISO 8601. */
  mtime: string;
}

export function checkPath(p: unknown): string {
  if (typeof p !== 'string' || p === '') throw badRequest('path is required (an absolute path inside the weaver)', 'bad_path');
  if (p.length > 4096 || p.includes('\0')) throw badRequest('path is too long or contains NUL', 'bad_path');
  if (!p.startsWith('/')) throw badRequest(`path ${JSON.stringify(p)} must be absolute`, 'bad_path');
  if (p.split('/').includes('..')) throw badRequest(`path ${JSON.stringify(p)} must not contain ".."`, 'bad_path');
  return p;
}

/** A toolbox failure as the API error it is, from the tool's stderr. */
export function toolError(stderr: string, path: string, fallback: string): LoomError {
  const s = stderr.trim();
  if (/No such file or directory|nonexistent directory|can't stat|cannot stat/i.test(s)) return new LoomError(404, 'not_found', `${path}: no such file or directory in the weaver`);
  if (/Permission denied|Operation not permitted|Read-only file system/i.test(s)) return new LoomError(403, 'permission_denied', `${path}: permission denied for the weaver's user`);
  if (/Is a directory/i.test(s)) return new LoomError(400, 'is_a_directory', `${path} is a directory (use ?archive=tar)`);
  if (/Not a directory/i.test(s)) return new LoomError(400, 'not_a_directory', `${path}: a parent is not a directory`);
  if (/No space left/i.test(s)) return new LoomError(507, 'no_space', `${path}: no space left in the weaver`);
  return new LoomError(400, 'file_operation_failed', `${fallback}: ${s.split('\n').slice(-1)[0] || 'failed'}`);
}

const collect = async (s: NodeJS.ReadableStream, cap = 64 * 1024): Promise<string> => {
  let out = '';
  for await (const b of s as AsyncIterable<Buffer>) if (out.length < cap) out += b.toString('utf8');
  return out;
};

/** File operations on one backend. */
export class WeaverFiles {
  constructor(private readonly p: Provisioner) {}

  private argv(id: string, tool: string, args: string[]): string[] {
    return [...this.p.toolbox(id), tool, ...args];
  }

  /** Runs a toolbox command to its end; throws the mapped error on a non-zero exit. */
  private async run(id: string, tool: string, args: string[], path: string, what: string): Promise<string> {
    const proc = await this.p.exec(id, { command: this.argv(id, tool, args), tty: false, stdin: false, cwd: '/' });
    const [out, err, exit] = await Promise.all([collect(proc.stdout, 1024 * 1024), collect(proc.stderr), proc.exit]);
    if (exit.error) throw new LoomError(501, 'toolbox_missing', `the weaver has no ${tool} for the files API: ${exit.error}`);
    if (exit.exitCode !== 0) throw toolError(err, path, what);
    return out;
  }

  /** lstat by default; `follow` resolves a final symlink (inside the weaver). */
  async stat(id: string, path: string, follow = false): Promise<FileStat> {
    const out = await this.run(id, 'stat', [...(follow ? ['-L'] : []), '-c', '%F|%s|%a|%u|%g|%Y', path], path, 'stat failed');
    const [type, size, mode, uid, gid, mtime] = out.trim().split('|');
    const t = type ?? '';
    return {
      path,
      type: t.startsWith('regular') ? 'file' : t === 'directory' ? 'directory' : t === 'symbolic link' ? 'symlink' : 'other',
      size: Number(size),
      mode: mode ?? '',
      uid: Number(uid),
      gid: Number(gid),
      mtime: new Date(Number(mtime) * 1000).toISOString(),
    };
  }

  /** A file's bytes, or a tar of a directory; `stat` says which. The caller pipes `stdout` (or takes them in `stdoutSink`). */
  async read(id: string, path: string, stdoutSink?: ExecRequest['stdoutSink']): Promise<{ stat: FileStat; proc: ExecProcess }> {
    const st = await this.stat(id, path, true);
    if (st.type === 'other') throw badRequest(`${path} is not a regular file or directory`, 'not_a_file');
    const args = st.type === 'directory' ? ['-c', '-f', '-', '-C', path, '.'] : [path];
    const proc = await this.p.exec(id, { command: this.argv(id, st.type === 'directory' ? 'tar' : 'cat', args), tty: false, stdin: false, cwd: '/', ...(stdoutSink ? { stdoutSink } : {}) });
    return { stat: st, proc };
  }

  /**
   * Writes `body` to `path` (a file, atomically: a temporary file renamed into place only once
   * the whole body arrived) or unpacks it as a tar into the directory `path` (created if
   * missing). Throws 413 when the body exceeds `maxBytes`; nothing is renamed into place then.
   */
  async write(id: string, path: string, body: Readable, o: { archive: boolean; mode?: string; maxBytes: number }): Promise<{ bytes: number }> {
    const tb = this.p.toolbox(id)[0] ?? '';
    const tmp = `${path.replace(/\/[^/]*$/, '')}/.${path.split('/').pop()}.loom-upload-${process.pid}-${Date.now().toString(36)}`;
    // Fixed scripts, every value passed as an argument ("$1"…), never spliced into the text.
    const script = o.archive
      ? 'B=$1; $B mkdir -p -- "$2" && exec $B tar -x -f - -C "$2"'
      : 'B=$1; if [ -d "$2" ]; then echo "$2: Is a directory" >&2; exit 21; fi; $B cat > "$4" || exit 1; ' +
        'if [ -n "$3" ]; then $B chmod "$3" "$4" || { $B rm -f "$4"; exit 1; }; fi; $B mv -f "$4" "$2" || { $B rm -f "$4"; exit 1; }';
    const proc = await this.p.exec(id, { command: this.argv(id, 'sh', ['-c', script, 'sh', tb, path, o.mode ?? '', tmp]), tty: false, stdin: true, cwd: '/' });
    const errText = collect(proc.stderr);
    proc.stdout.resume();
    let bytes = 0;
    let tooBig = false;
    let bodyError: Error | null = null;
    const stdin = proc.stdin!;
    await new Promise<void>((resolve) => {
      const stop = () => {
        body.unpipe(stdin as NodeJS.WritableStream);
        body.resume();
        proc.kill();
        resolve();
      };
      body.on('data', (b: Buffer) => {
        bytes += b.length;
        if (bytes > o.maxBytes && !tooBig) {
          tooBig = true;
          stop();
        }
      });
      body.on('error', (e) => {
        bodyError = e;
        stop();
      });
      body.on('end', () => resolve());
      body.pipe(stdin as NodeJS.WritableStream);
    });
    const exit = await proc.exit;
    if (tooBig || bodyError) {
      if (!o.archive) await this.run(id, 'rm', ['-f', tmp], tmp, 'cleanup').catch(() => undefined);
      if (tooBig) throw new LoomError(413, 'too_large', `upload exceeds the limit of ${o.maxBytes} bytes`);
      throw new LoomError(400, 'upload_interrupted', `the upload was interrupted: ${(bodyError as Error | null)?.message ?? ''}`);
    }
    if (exit.error) throw new LoomError(501, 'toolbox_missing', `the weaver has no sh for the files API: ${exit.error}`);
    if (exit.exitCode !== 0) throw toolError(await errText, path, o.archive ? 'unpacking the archive failed' : 'writing the file failed');
    return { bytes };
  }
}
