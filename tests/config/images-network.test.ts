// Issue 17's settings: weaver network mode and allowed ranges, image build sources and timeouts.
import t from 'tap';
import { ConfigError, loadConfig } from '../../src/server/config/load.js';

t.test('defaults: outbound through slirp4netns, nothing internal allowed, Debian mirror', async (t) => {
  const c = loadConfig({});
  t.equal(c.weaver.network, 'slirp4netns');
  t.same(c.weaver.networkAllowedNetworks, []);
  t.equal(c.images.buildMirror, 'http://deb.debian.org/debian');
  t.same(c.images.buildExtraSources, []);
  t.equal(c.images.buildTimeoutSecs, 1800);
  t.equal(c.images.pullTimeoutSecs, 60);
});

t.test('values are read', async (t) => {
  const c = loadConfig({
    LOOM_SERVER_WEAVER_NETWORK: 'loopback',
    LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS: '10.20.0.0/16,fd12::/64',
    LOOM_IMAGE_BUILD_MIRROR: 'http://mirror.example/debian',
    LOOM_IMAGE_BUILD_EXTRA_SOURCES: 'deb http://deb.debian.org/debian-security bookworm-security main',
    LOOM_IMAGE_PULL_TIMEOUT_SECS: '5',
  });
  t.equal(c.weaver.network, 'loopback');
  t.same(c.weaver.networkAllowedNetworks, ['10.20.0.0/16', 'fd12::/64']);
  t.equal(c.images.buildMirror, 'http://mirror.example/debian');
  t.same(c.images.buildExtraSources, ['deb http://deb.debian.org/debian-security bookworm-security main']);
  t.equal(c.images.pullTimeoutSecs, 5);
});

t.test('bad values stop the server naming the variable', async (t) => {
  for (const [env, variable] of [
    [{ LOOM_SERVER_WEAVER_NETWORK: 'host' }, 'LOOM_SERVER_WEAVER_NETWORK'],
    [{ LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS: '10.0.0.0/33' }, 'LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS'],
    [{ LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS: 'example.com' }, 'LOOM_SERVER_WEAVER_NETWORK_ALLOWED_NETWORKS'],
    [{ LOOM_IMAGE_BUILD_MIRROR: 'ftp://x/debian' }, 'LOOM_IMAGE_BUILD_MIRROR'],
    [{ LOOM_IMAGE_BUILD_MIRROR: 'http://x/debian --variant=extract' }, 'LOOM_IMAGE_BUILD_MIRROR'],
    [{ LOOM_IMAGE_BUILD_EXTRA_SOURCES: '--include=evil' }, 'LOOM_IMAGE_BUILD_EXTRA_SOURCES'],
    [{ LOOM_IMAGE_BUILD_EXTRA_SOURCES: 'deb bookworm main' }, 'LOOM_IMAGE_BUILD_EXTRA_SOURCES'],
    [{ LOOM_IMAGE_BUILD_TIMEOUT_SECS: '1' }, 'LOOM_IMAGE_BUILD_TIMEOUT_SECS'],
    [{ LOOM_IMAGE_PULL_TIMEOUT_SECS: '0' }, 'LOOM_IMAGE_PULL_TIMEOUT_SECS'],
  ] as const) {
    let err: unknown = null;
    try {
      loadConfig(env);
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof ConfigError, `${JSON.stringify(env)} is refused`);
    t.equal((err as ConfigError | null)?.variable, variable, `naming ${variable}`);
  }
});
