/**
 * The wireguard sidecar's program (pod-spec.ts TUNNEL_SIDECAR_SCRIPT) run for real: Debian's
 * wireguard-go and wg in a fresh network namespace (the pod's) with a private mount namespace where
 * a tmpfs on /run stands for the container's /var/run and holds the Secret's files, as the kubelet
 * would mount them. Not a container: the same program, the same tools, the real kernel interface.
 */
import t from 'tap';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TUNNEL_IFACE, TUNNEL_PORT, TUNNEL_SIDECAR_SCRIPT } from '../../src/provisioners/kubernetes/pod-spec.js';
import { newKeyPair } from '../../src/tunnel/keys.js';
import { waitUntil } from '../support/attach.js';

const missing = ['wireguard-go', 'wg', 'ip', 'unshare', 'nsenter'].filter((b) => {
  try {
    execFileSync('sh', ['-c', `command -v ${b}`], { stdio: 'ignore' });
    return false;
  } catch {
    return true;
  }
});
const why = process.getuid?.() !== 0 ? 'needs root (network and mount namespaces)' : missing.length ? `needs ${missing.join(', ')}` : '';
if (why && process.env['CI'] === 'true') t.fail(`prerequisites missing in CI: ${why}`);

t.test('the sidecar program brings up wireguard-go with the Secret\'s key and address', { skip: why || false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'loom-wg-sidecar-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const keys = newKeyPair();
  const address = 'fd12:3456:789a:1::1';
  writeFileSync(join(dir, 'private-key'), keys.privateKey.toString('base64'), { mode: 0o400 });
  writeFileSync(join(dir, 'address'), address, { mode: 0o400 });
  const setup = 'mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/loom-wg && cp "$1/private-key" "$1/address" /run/loom-wg/ && exec sh -c "$2"';
  const child = spawn('unshare', ['--net', '--mount', '--propagation', 'private', '--', 'sh', '-c', setup, 'sh', dir, TUNNEL_SIDECAR_SCRIPT], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  child.once('exit', () => (exited = true));
  // The whole process group (the script and its wireguard-go), even when an assertion fails.
  t.teardown(() => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      /* already gone */
    }
  });
  const inPod = (...argv: string[]) => execFileSync('nsenter', ['-t', String(child.pid), '-n', '-m', '--', ...argv], { encoding: 'utf8' });
  const link = () => {
    try {
      return inPod('ip', '-o', 'link', 'show', TUNNEL_IFACE);
    } catch {
      return '';
    }
  };
  await waitUntil(async () => {
    if (exited) throw new Error(`the sidecar program exited: ${stderr}`);
    return /[<,]UP[,>]/.test(link());
  }, 'the interface up', 20_000);
  t.equal(inPod('wg', 'show', TUNNEL_IFACE, 'public-key').trim(), keys.publicKey.toString('base64'), 'wireguard-go has the Secret\'s key');
  t.equal(inPod('wg', 'show', TUNNEL_IFACE, 'listen-port').trim(), String(TUNNEL_PORT), 'listening on the published UDP port');
  t.match(inPod('ip', '-6', '-o', 'addr', 'show', 'dev', TUNNEL_IFACE), new RegExp(`inet6 ${address}/64`), 'the Secret\'s address');
  const ifaces = inPod('ip', '-o', 'link', 'show').split('\n').filter(Boolean).map((l) => l.split(':')[1]!.trim());
  t.same(ifaces.sort(), ['lo', TUNNEL_IFACE].sort(), 'only lo and the WireGuard interface in this namespace');
  // What loom-server's exec does when a session opens, and when it ends.
  const peer = newKeyPair().publicKey.toString('base64');
  inPod('wg', 'set', TUNNEL_IFACE, 'peer', peer, 'allowed-ips', 'fd12:3456:789a:1::2/128');
  t.match(inPod('wg', 'show', TUNNEL_IFACE, 'allowed-ips'), `${peer}\tfd12:3456:789a:1::2/128`);
  inPod('wg', 'set', TUNNEL_IFACE, 'peer', peer, 'remove');
  t.equal(inPod('wg', 'show', TUNNEL_IFACE, 'peers').trim(), '', 'the peer is gone');
  t.notOk(exited, 'the program keeps running beside wireguard-go');
});

t.test('the sidecar program fails when the Secret\'s key is missing (no silent half-up endpoint)', { skip: why || false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'loom-wg-sidecar-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'address'), 'fd12:3456:789a:1::1');
  const setup = 'mount -t tmpfs tmpfs /run && mkdir /run/loom-wg && cp "$1/address" /run/loom-wg/ && exec sh -c "$2"';
  const child = spawn('unshare', ['--net', '--mount', '--propagation', 'private', '--', 'sh', '-c', setup, 'sh', dir, TUNNEL_SIDECAR_SCRIPT], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      /* already gone */
    }
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  // 'close', not 'exit': stderr is read to its end before the assertion on it
  const code = await new Promise<number | null>((r) => child.once('close', (c) => r(c)));
  t.not(code, 0, 'non-zero exit (the kubelet restarts the sidecar; the pod is not Ready)');
  t.match(stderr, /private-key/, 'the error names the missing key file');
});
