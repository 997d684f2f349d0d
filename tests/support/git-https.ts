/**
 * A real smart-HTTP git server for clone tests: `git http-backend` (CGI) behind a Node HTTPS
 * server on 127.0.0.1 with a throwaway self-signed certificate (SAN localhost and 127.0.0.1).
 * Records every request (and whether it carried credentials); repos under /private/ answer 401.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createServer, type Server } from 'node:https';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { tempDir } from './server.js';

export interface GitHttps {
  port: number;
  /** The certificate (PEM), as a CA bundle file readable by any user. */
  caFile: string;
  requests: { url: string; authorization: boolean }[];
  close(): Promise<void>;
}

/** A bare repo <root>/<path>.git with the given files committed on branch main. */
export function makeRepo(root: string, path: string, files: Record<string, string | Buffer>): void {
  const work = tempDir('loom-git-work-');
  for (const [name, body] of Object.entries(files)) writeFileSync(join(work, name), body);
  const git = (args: string[], cwd: string) => execFileSync('git', args, { cwd, env: { PATH: process.env.PATH, HOME: work, GIT_CONFIG_NOSYSTEM: '1' }, stdio: 'pipe' });
  git(['init', '-q', '-b', 'main'], work);
  git(['add', '.'], work);
  git(['-c', 'user.email=t@example.com', '-c', 'user.name=t', 'commit', '-qm', 'init'], work);
  const bare = join(root, `${path}.git`);
  mkdirSync(join(bare, '..'), { recursive: true });
  git(['clone', '-q', '--bare', work, bare], root);
  git(['config', 'http.receivepack', 'false'], bare);
}

export async function startGitHttps(root: string): Promise<GitHttps> {
  const dir = tempDir('loom-git-tls-');
  chmodSync(dir, 0o755);
  const key = join(dir, 'key.pem');
  const cert = join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=loom-secret-subject.internal', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'pipe' });
  chmodSync(cert, 0o644);
  const requests: GitHttps['requests'] = [];
  const server: Server = createServer({ key: readFileSync(key), cert: readFileSync(cert) }, (req, res) => {
    const url = new URL(req.url ?? '/', 'https://x');
    requests.push({ url: url.pathname + url.search, authorization: !!req.headers.authorization });
    if (url.pathname.startsWith('/private/')) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="loom-test"' });
      res.end('auth needed');
      return;
    }
    const cgi = spawn('git', ['http-backend'], {
      env: {
        PATH: process.env.PATH, GIT_PROJECT_ROOT: root, GIT_HTTP_EXPORT_ALL: '1', GIT_CONFIG_NOSYSTEM: '1', HOME: dir,
        REQUEST_METHOD: req.method ?? 'GET', PATH_INFO: url.pathname, QUERY_STRING: url.search.replace(/^\?/, ''),
        CONTENT_TYPE: req.headers['content-type'] ?? '', REMOTE_ADDR: '127.0.0.1', GIT_HTTP_MAX_REQUEST_BUFFER: '100M',
        ...(req.headers['content-encoding'] ? { HTTP_CONTENT_ENCODING: req.headers['content-encoding'] } : {}),
        ...(req.headers['git-protocol'] ? { GIT_PROTOCOL: String(req.headers['git-protocol']) } : {}),
      },
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    req.pipe(cgi.stdin);
    let head = Buffer.alloc(0);
    let headersDone = false;
    cgi.stdout.on('data', (b: Buffer) => {
      if (headersDone) return void res.write(b);
      head = Buffer.concat([head, b]);
      const i = head.indexOf('\r\n\r\n');
      if (i < 0) return;
      headersDone = true;
      let status = 200;
      const headers: Record<string, string> = {};
      for (const line of head.subarray(0, i).toString('latin1').split('\r\n')) {
        const c = line.indexOf(':');
        const k = line.slice(0, c).trim().toLowerCase();
        const v = line.slice(c + 1).trim();
        if (k === 'status') status = Number(v.split(' ')[0]);
        else headers[k] = v;
      }
      res.writeHead(status, headers);
      res.write(head.subarray(i + 4));
    });
    cgi.stdout.on('end', () => res.end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    caFile: cert,
    requests,
    close: () => new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}
