/**
 * A private git repository over HTTPS for clone tests: a self-signed CA (openssl), a Node HTTPS
 * server that requires HTTP basic auth with one token, and git's own `git http-backend` (CGI)
 * behind it. Every Authorization header it is sent is recorded.
 */
import { spawn, execFileSync } from 'node:child_process';
import { createServer, type Server } from 'node:https';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';

export interface GitHttpsServer {
  /** https://127.0.0.1:<port>/<name>.git */
  url(name: string): string;
  /** PEM of the CA that signed the server's certificate (for GIT_SSL_CAINFO). */
  caFile: string;
  /** Every Authorization header value seen, and the paths requested with a good one. */
  authHeaders: string[];
  served: string[];
  close(): Promise<void>;
}

export async function startGitHttps(dir: string, token: string, repos: Record<string, Record<string, string>>): Promise<GitHttpsServer> {
  const root = join(dir, 'repos');
  mkdirSync(root, { recursive: true });
  for (const [name, files] of Object.entries(repos)) {
    const work = join(dir, `work-${name}`);
    mkdirSync(work, { recursive: true });
    for (const [f, text] of Object.entries(files)) writeFileSync(join(work, f), text);
    const git = (args: string[], cwd: string) => execFileSync('git', args, { cwd, env: { ...process.env, GIT_CONFIG_GLOBAL: '/dev/null', GIT_CONFIG_NOSYSTEM: '1' }, stdio: 'pipe' });
    git(['init', '-q', '-b', 'main'], work);
    git(['add', '.'], work);
    git(['-c', 'user.name=t', '-c', 'user.email=t@example.com', 'commit', '-qm', 'init'], work);
    git(['clone', '-q', '--bare', work, join(root, `${name}.git`)], dir);
  }
  const key = join(dir, 'key.pem');
  const cert = join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'pipe' });
  // Clones run as the weaver's unprivileged user: the CA bundle must be readable by anyone.
  chmodSync(dir, 0o755);
  chmodSync(cert, 0o644);
  const expected = `Basic ${Buffer.from(`x-access-token:${token}`).toString('base64')}`;
  const authHeaders: string[] = [];
  const served: string[] = [];
  const server: Server = createServer({ key: readFileSync(key), cert: readFileSync(cert) }, (req, res) => {
    const auth = req.headers.authorization;
    if (auth) authHeaders.push(auth);
    if (auth !== expected) {
      res.writeHead(401, { 'www-authenticate': 'Basic realm="private"' }).end('authentication required\n');
      req.resume();
      return;
    }
    const u = new URL(req.url ?? '/', 'https://127.0.0.1');
    served.push(u.pathname);
    const cgi = spawn('git', ['http-backend'], {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        GIT_PROJECT_ROOT: root,
        GIT_HTTP_EXPORT_ALL: '1',
        REQUEST_METHOD: req.method ?? 'GET',
        PATH_INFO: decodeURIComponent(u.pathname),
        QUERY_STRING: u.search.slice(1),
        CONTENT_TYPE: req.headers['content-type'] ?? '',
        ...(req.headers['content-encoding'] ? { HTTP_CONTENT_ENCODING: req.headers['content-encoding'] } : {}),
        ...(req.headers['git-protocol'] ? { GIT_PROTOCOL: String(req.headers['git-protocol']) } : {}),
        REMOTE_USER: 'x-access-token',
        REMOTE_ADDR: '127.0.0.1',
      },
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    req.pipe(cgi.stdin);
    let head = Buffer.alloc(0);
    let headersDone = false;
    cgi.stdout.on('data', (chunk: Buffer) => {
      if (headersDone) return void res.write(chunk);
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      headersDone = true;
      let status = 200;
      const headers: Record<string, string> = {};
      for (const line of head.subarray(0, end).toString('latin1').split('\r\n')) {
        const i = line.indexOf(':');
        const k = line.slice(0, i).trim();
        const v = line.slice(i + 1).trim();
        if (k.toLowerCase() === 'status') status = Number(v.split(' ')[0]);
        else headers[k] = v;
      }
      res.writeHead(status, headers);
      res.write(head.subarray(end + 4));
    });
    cgi.on('close', () => res.end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: (name) => `https://127.0.0.1:${port}/${name}.git`,
    caFile: cert,
    authHeaders,
    served,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
