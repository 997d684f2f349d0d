/**
 * Repository clones are untrusted operations (issue 9 item 3), through the real loom-server with
 * the local backend and a real smart-HTTP git server over TLS on 127.0.0.1:
 * internal destinations are refused by default with a plain reason and no connection made; the
 * operator's allow-list lets them through (name resolved once and pinned); the server's own git
 * configuration and credential helper are never used; an oversized repository is cut off.
 */
import t from 'tap';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { startServer, tempDir, type TestServer } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { makeRepo, startGitHttps, type GitHttps } from '../support/git-https.js';

type Weaver = { id: string; status: string; reason?: string };

const root = tempDir('loom-git-root-');
makeRepo(root, 'small', { 'README.md': 'cloned through the allow-list\n' });
makeRepo(root, 'big', { 'blob.bin': randomBytes(3 * 1024 * 1024) });
makeRepo(root, 'private/secret', { 'a.txt': 'no\n' });

let git: GitHttps;
t.before(async () => {
  git = await startGitHttps(root);
});
t.teardown(() => git?.close());

async function settle(srv: TestServer, tok: string, body: Record<string, unknown>): Promise<Weaver> {
  const r = await srv.api<Weaver>('POST', '/api/weaver', tok, body);
  if (r.status !== 202) throw new Error(`create: ${r.status} ${JSON.stringify(r.body)}`);
  return waitUntil(async () => {
    const g = await srv.api<Weaver>('GET', `/api/weaver/${r.body.id}`, tok);
    return g.body.status === 'running' || g.body.status === 'failed' ? g.body : null;
  }, 'weaver to run or fail', 90_000);
}

async function cleanup(srv: TestServer, tok: string): Promise<void> {
  for (const w of (await srv.api<{ weavers: Weaver[] }>('GET', '/api/weavers', tok)).body.weavers ?? []) await srv.api('DELETE', `/api/weaver/${w.id}`, tok);
  await srv.stop();
}

t.test('by default a clone of a loopback address is refused before any connection, with a plain reason', async (t) => {
  const srv = await startServer({ env: { LOOM_SERVER_WEAVER_GIT_CA_FILE: git.caFile } });
  const tok = await srv.token('alice');
  t.teardown(() => cleanup(srv, tok));
  const before = git.requests.length;
  for (const host of ['127.0.0.1', 'localhost']) {
    const w = await settle(srv, tok, { repo: `https://${host}:${git.port}/small.git` });
    t.equal(w.status, 'failed', host);
    t.match(w.reason, /git clone failed: the repository host .* resolves to an internal \(loopback\) address/, host);
    t.notMatch(w.reason, /SSL|certificate|loom-secret-subject|refused|port \d|errno|curl/i, 'no transport detail');
  }
  t.equal(git.requests.length, before, 'the git server saw no request');
  // A closed port on another internal address answers the same fixed reason (no scanner).
  const w = await settle(srv, tok, { repo: 'https://10.255.255.1:1/x.git' });
  t.match(w.reason, /internal \(private\) address/);
});

t.test('with the allow-list: clones; the server HOME credential helper never runs; an oversized repo is cut off', async (t) => {
  // The server's own git configuration: a credential helper that leaves a marker, and TLS
  // verification off (so a clone that read this file would reach the 401 and ask the helper).
  const home = tempDir('loom-server-home-');
  const marker = join(home, 'helper-ran');
  const helper = join(home, 'helper.sh');
  writeFileSync(helper, `#!/bin/sh\ntouch ${marker}\necho username=operator\necho password=hunter2\n`);
  chmodSync(helper, 0o755);
  writeFileSync(join(home, '.gitconfig'), `[credential]\n\thelper = ${helper}\n[http]\n\tsslVerify = false\n`);
  mkdirSync(join(home, '.config', 'git'), { recursive: true });
  writeFileSync(join(home, '.config', 'git', 'config'), `[credential]\n\thelper = ${helper}\n`);
  const srv = await startServer({
    env: {
      HOME: home,
      LOOM_SERVER_WEAVER_GIT_ALLOWED_NETWORKS: '127.0.0.0/8,::1/128',
      LOOM_SERVER_WEAVER_GIT_CA_FILE: git.caFile,
      LOOM_SERVER_WEAVER_GIT_MAX_BYTES: String(1024 * 1024),
    },
  });
  const tok = await srv.token('alice');
  t.teardown(() => cleanup(srv, tok));

  await t.test('an allowed internal host clones (through the pinned name)', async (t) => {
    const w = await settle(srv, tok, { repo: `https://localhost:${git.port}/small.git` });
    t.equal(w.status, 'running', w.reason ?? '');
    const file = join(srv.dataDir, 'local', 'weavers', w.id, 'rootfs', 'workspace', 'small', 'README.md');
    t.equal(readFileSync(file, 'utf8'), 'cloned through the allow-list\n');
    t.equal(statSync(file).uid, 100000 + 1000, 'the clone is owned by the weaver user (uid 1000 in the default user namespace, host 101000), not root');
  });

  await t.test('a repository that asks for credentials: the helper is never run and nothing is sent', async (t) => {
    const w = await settle(srv, tok, { repo: `https://127.0.0.1:${git.port}/private/secret.git` });
    t.equal(w.status, 'failed');
    t.match(w.reason, /the repository needs credentials; only public repositories can be cloned/);
    t.notOk(existsSync(marker), 'the credential helper of the server HOME did not run');
    t.ok(git.requests.some((r) => r.url.startsWith('/private/')), 'the request reached the server');
    t.notOk(git.requests.some((r) => r.authorization), 'no request carried an Authorization header');
  });

  await t.test('a repository over LOOM_SERVER_WEAVER_GIT_MAX_BYTES is cut off', async (t) => {
    const w = await settle(srv, tok, { repo: `https://127.0.0.1:${git.port}/big.git` });
    t.equal(w.status, 'failed');
    t.match(w.reason, /the repository is larger than the limit of 1Mi \(LOOM_SERVER_WEAVER_GIT_MAX_BYTES\)/);
    t.notOk(existsSync(join(srv.dataDir, 'local', 'weavers', w.id, 'rootfs', 'workspace', 'big', 'blob.bin')), 'nothing of it left in the workspace');
  });
});

t.test('a wrong allow-list stops the server at start naming the variable', async (t) => {
  await t.rejects(startServer({ env: { LOOM_SERVER_WEAVER_GIT_ALLOWED_NETWORKS: '10.0.0.0/33' } }), /LOOM_SERVER_WEAVER_GIT_ALLOWED_NETWORKS/);
});
