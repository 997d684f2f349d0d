/**
 * WireGuard tunnels on the kubernetes backend (issue 14 item 7): the real loom-server against the
 * K8S STAND-IN API server (tests/support/k8s-standin — not a cluster). The stand-in kubelet does not
 * run containers: the wireguard sidecar's `wg` is a STAND-IN script in the pod's exec root that
 * records its argv, and the pod IP's wireguard-go is a STAND-IN UDP socket on a random loopback
 * address (port 51820) that echoes what it receives. What is tested for real: the Secret that
 * carries the weaver's ephemeral key (and its deletion with the weaver or the pod), the session
 * answering with the key of that Secret, peers set through the exec API in the sidecar container,
 * and loom-server's UDP gateway forwarding a handshake initiation made for that key to the pod IP.
 */
import t from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import { randomBytes, randomInt } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { K8sStandin, STANDIN_BANNER } from '../support/k8s-standin/index.js';
import { startServer, tempDir } from '../support/server.js';
import { waitUntil } from '../support/attach.js';
import { newKeyPair, publicKeyFor } from '../../src/tunnel/keys.js';
import { mac1Key } from '../../src/tunnel/mac1.js';
import { wgCrypto } from '../../src/tunnel/engine/native.js';

t.comment(`these tests run loom-server against the ${STANDIN_BANNER}`);

type Weaver = { id: string; status: string };
type Session = { id: string; weaver_public_key: string; weaver_address: string; client_address: string; endpoints: string[] };
type Err = { error: { code: string; message: string } };

const secretData = (s: unknown, key: string): string => Buffer.from(((s as { data: Record<string, string> }).data)[key]!, 'base64').toString();

/** A handshake initiation from a client, with a valid mac1 for the responder (all the gateway checks). */
function initiation(responderPublic: Buffer): Buffer {
  const m = Buffer.alloc(148);
  m[0] = 1;
  randomBytes(112).copy(m, 4);
  wgCrypto().mac(mac1Key(responderPublic), m.subarray(0, 116), 16).copy(m, 116);
  return m;
}

async function bindUdp(host: string, port: number): Promise<Socket> {
  const s = createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(port, host, () => resolve());
  });
  return s;
}

t.test('a kubernetes weaver: key in its Secret, session with the pod endpoint, gateway to the pod IP, Secret gone with the weaver', async (t) => {
  const standin = await K8sStandin.start({ kubelet: 'auto', kubeletDelayMs: 20 });
  t.teardown(() => standin.close());
  const kubeconfig = join(tempDir('loom-kube-'), 'config');
  writeFileSync(kubeconfig, standin.kubeconfigYaml());
  const srv = await startServer({
    t,
    env: {
      LOOM_SERVER_WEAVER_BACKEND: 'kubernetes',
      KUBECONFIG: kubeconfig,
      LOOM_SERVER_WEAVER_DEFAULT_IMAGE: 'docker.io/library/busybox:1.36',
      LOOM_TUNNEL_K8S_IMAGE: 'ghcr.io/loom/wireguard:1.0',
      LOOM_TUNNEL_UDP_ADDR: '127.0.0.1:0',
    },
  });
  const alice = await srv.token('alice');
  const mallory = await srv.token('mallory');
  const client = newKeyPair();
  t.equal((await srv.api('POST', '/api/wg/devices', alice, { name: 'laptop', public_key: client.publicKey.toString('base64') })).status, 201);

  const created = await srv.api<Weaver>('POST', '/api/weaver', alice, {});
  t.equal(created.status, 202);
  const id = created.body.id;
  const pod = `weaver-${id}`;
  await waitUntil(async () => (await srv.api<Weaver>('GET', `/api/weaver/${id}`, alice)).body.status === 'running', 'the weaver runs');

  // The key: in the weaver's own Secret, nowhere in the pod.
  const secret = standin.secrets.get(`loom-weavers/loom-wg-${id}`);
  t.ok(secret, 'a Secret loom-wg-<id>');
  const privateKey = Buffer.from(secretData(secret, 'private-key'), 'base64');
  t.equal(privateKey.length, 32, 'it holds a 32-byte WireGuard private key');
  const weaverPublic = publicKeyFor(privateKey);
  const podJson = JSON.stringify(standin.pod(pod));
  t.notOk(podJson.includes(secretData(secret, 'private-key')), 'the key is not in the pod spec');
  const sidecar = (standin.pod(pod)!.spec.initContainers ?? []).find((c) => c.name === 'wireguard');
  t.ok(sidecar, 'the pod has the wireguard sidecar');

  // No pod IP yet: no endpoint, a clear 409, nothing stored.
  const early = await srv.api<Err>('POST', '/api/wg/sessions', alice, { weaver_id: id, device: 'laptop' });
  t.equal(early.status, 409);
  t.equal(early.body.error.code, 'tunnel_unavailable');

  // The pod IP: a random loopback address, where a STAND-IN for the sidecar's wireguard-go listens.
  const podIp = `127.${randomInt(1, 255)}.${randomInt(1, 255)}.${randomInt(2, 255)}`;
  const fakeWg = await bindUdp(podIp, 51820);
  t.teardown(() => fakeWg.close());
  const received: Buffer[] = [];
  fakeWg.on('message', (m, r) => {
    received.push(m);
    fakeWg.send(Buffer.concat([Buffer.from('reply:'), m.subarray(0, 4)]), r.port, r.address);
  });
  // The sidecar's `wg` (STAND-IN): records each call in the pod's exec root.
  const root = standin.podRootOf(pod);
  writeFileSync(join(root, 'bin/wg'), '#!/bin/sh\necho "$@" >> /tmp/wg-calls\n');
  chmodSync(join(root, 'bin/wg'), 0o755);
  standin.update(pod, (p) => {
    p.status = { ...(p.status ?? {}), podIP: podIp };
  });

  t.equal((await srv.api<Err>('POST', '/api/wg/sessions', mallory, { weaver_id: id, device: 'laptop' })).status, 404, "another org's user gets no session");
  let session!: Session;
  await waitUntil(async () => {
    const r = await srv.api<Session>('POST', '/api/wg/sessions', alice, { weaver_id: id, device: 'laptop' });
    if (r.status === 201) session = r.body;
    return r.status === 201;
  }, 'the session opens once the informer has the pod IP');
  t.equal(session.weaver_public_key, weaverPublic.toString('base64'), 'the session names the key held in the pod\'s Secret');
  t.equal(session.weaver_address, secretData(secret, 'address'), 'and the address the sidecar configures');
  const peerExec = standin.execs.filter((e) => e.pod === pod && e.container === 'wireguard');
  t.same(peerExec.map((e) => e.command), [['wg', 'set', 'loomwg', 'peer', client.publicKey.toString('base64'), 'allowed-ips', `${session.client_address}/128`]], 'the peer was set in the sidecar through the exec API');
  t.equal(readFileSync(join(root, 'tmp/wg-calls'), 'utf8'), `set loomwg peer ${client.publicKey.toString('base64')} allowed-ips ${session.client_address}/128\n`);
  t.ok(standin.execs.filter((e) => e.pod === pod).every((e) => e.container === 'wireguard'), 'nothing ran in the weaver container');

  // The gateway: an initiation for this weaver's key goes to the pod IP's UDP port, the reply comes back.
  t.equal(session.endpoints.length, 1);
  const [gwHost, gwPort] = [session.endpoints[0]!.replace(/:\d+$/, ''), Number(session.endpoints[0]!.split(':').pop())];
  const laptop = await bindUdp('127.0.0.1', 0);
  t.teardown(() => laptop.close());
  const reply = new Promise<Buffer>((resolve) => laptop.once('message', (m) => resolve(m)));
  const init = initiation(weaverPublic);
  laptop.send(init, gwPort, gwHost);
  t.same(await reply, Buffer.concat([Buffer.from('reply:'), init.subarray(0, 4)]), 'the pod\'s answer came back through the gateway');
  t.same(received[0], init, 'the pod IP got the initiation unchanged');
  // One for another key is not routed to this pod (a second send then a probe of order).
  const stray = initiation(newKeyPair().publicKey);
  const reply2 = new Promise<Buffer>((resolve) => laptop.once('message', (m) => resolve(m)));
  laptop.send(stray, gwPort, gwHost);
  laptop.send(init, gwPort, gwHost);
  await reply2;
  t.equal(received.length, 2, 'an initiation for an unknown key was dropped, the next valid one arrived');
  t.same(received[1], init);

  // A failing `wg set` in the sidecar fails the session (a clear 502) and stores nothing.
  const desktop = newKeyPair().publicKey.toString('base64');
  t.equal((await srv.api('POST', '/api/wg/devices', alice, { name: 'desktop', public_key: desktop })).status, 201);
  writeFileSync(join(root, 'bin/wg'), '#!/bin/sh\necho "wg: no such device loomwg" >&2\nexit 1\n');
  const failed = await srv.api<Err>('POST', '/api/wg/sessions', alice, { weaver_id: id, device: 'desktop' });
  t.equal(failed.status, 502);
  t.equal(failed.body.error.code, 'tunnel_config_failed');
  t.match(failed.body.error.message, /no such device/);
  const listed = await srv.api<{ sessions: Session[] }>('GET', '/api/wg/sessions', alice);
  t.same(listed.body.sessions.map((x) => x.id), [session.id], 'no session was stored for the failed peer');
  writeFileSync(join(root, 'bin/wg'), '#!/bin/sh\necho "$@" >> /tmp/wg-calls\n');

  // The sidecar restarts (wireguard-go died; the kubelet restarted it): its new wireguard-go has no
  // peers, so loom-server sets the open session's peer again.
  writeFileSync(join(root, 'tmp/wg-calls'), '');
  standin.update(pod, (p) => {
    for (const c of p.status?.initContainerStatuses ?? []) if (c.name === 'wireguard') c.restartCount = 1;
  });
  await waitUntil(async () => readFileSync(join(root, 'tmp/wg-calls'), 'utf8') === `set loomwg peer ${client.publicKey.toString('base64')} allowed-ips ${session.client_address}/128\n`, 'the peer set again in the restarted sidecar');
  t.pass('a restarted sidecar got the session\'s peer again');

  // Session closed: the peer is removed in the sidecar.
  t.equal((await srv.api('DELETE', `/api/wg/sessions/${session.id}`, alice)).status, 204);
  t.same(standin.execs.filter((e) => e.pod === pod).pop()?.command, ['wg', 'set', 'loomwg', 'peer', client.publicKey.toString('base64'), 'remove']);

  // Deleting the weaver deletes its Secret.
  t.equal((await srv.api('DELETE', `/api/weaver/${id}`, alice)).status < 300, true, 'weaver deleted');
  await waitUntil(async () => !standin.secrets.has(`loom-weavers/loom-wg-${id}`), 'the Secret is deleted with the weaver');
  const gone = await srv.api<Err>('POST', '/api/wg/sessions', alice, { weaver_id: id, device: 'laptop' });
  t.equal(gone.status, 404, 'no session on a deleted weaver');

  // A pod removed outside Loom takes its Secret along too.
  const second = await srv.api<Weaver>('POST', '/api/weaver', alice, {});
  await waitUntil(async () => standin.secrets.has(`loom-weavers/loom-wg-${second.body.id}`), 'the second weaver\'s Secret');
  standin.deletePod(`weaver-${second.body.id}`);
  await waitUntil(async () => !standin.secrets.has(`loom-weavers/loom-wg-${second.body.id}`), 'the Secret goes with a pod deleted outside Loom');
});
