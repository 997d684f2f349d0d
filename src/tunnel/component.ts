import type { Config } from '../server/config/load.js';
import type { Logger } from '../common/log.js';
import type { ServerComponent } from '../server/component.js';
import type { WeaverComponent } from '../weaver/component.js';
import type { LocalProvisioner } from '../provisioners/local/provisioner.js';
import type { KubernetesProvisioner } from '../provisioners/kubernetes/provisioner.js';
import { KubernetesEndpoints } from './kubernetes/endpoints.js';
import { LoomError } from '../common/errors.js';
import { tunnelMigrations } from './migrations.js';
import { TunnelStore } from './store.js';
import { TunnelService } from './service.js';
import { registerTunnelApi } from './routes.js';
import { LocalEndpoints } from './local/endpoint-hook.js';
import { Gateway } from './local/gateway.js';
import { registerRelay } from './relay.js';

function splitAddr(addr: string): { host: string; port: number } {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(addr.slice(i + 1)) };
}

/**
 * WireGuard tunnels as a server component: devices and sessions (coordination), and on the local
 * backend the weaver-side endpoint (a runtime hook) and the UDP gateway.
 */
export function tunnelComponent(config: Config, log: Logger, weavers: WeaverComponent | null): ServerComponent {
  const clog = log.child({ component: 'tunnel' });
  let svc: TunnelService | null = null;
  let gateway: Gateway | null = null;
  let gatewayPort = 0;
  const cleanup: (() => void)[] = [];
  const service = () => {
    if (!svc) throw new Error('tunnel component not started');
    return svc;
  };
  return {
    name: 'tunnel',
    migrations: tunnelMigrations,
    async start(ctx) {
      const store = new TunnelStore(ctx.db);
      store.ulaPrefix();
      let endpoints: LocalEndpoints | KubernetesEndpoints | null = null;
      if (weavers && weavers.provisioner.name === 'kubernetes' && (weavers.provisioner as KubernetesProvisioner).tunnels) {
        // wireguard-go in a sidecar of each weaver pod; the gateway sends to the pod IP.
        const pods = weavers.provisioner as KubernetesProvisioner;
        const ep = new KubernetesEndpoints(store, pods, clog);
        endpoints = ep;
        cleanup.push(pods.useTunnelKeys(ep));
        // A (re)started sidecar's wireguard-go has no peers: set the weaver's sessions again.
        cleanup.push(
          pods.onTunnelSidecarReady((id) => {
            const peers = svc?.peersOf(id) ?? [];
            void (async () => {
              for (const p of peers) await ep.addPeer(id, p.publicKey, p.address);
            })().catch((e: unknown) => clog.warn({ weaver: id, err: e }, 're-adding wireguard peers to a restarted sidecar failed'));
          }),
        );
        const live = (id: string) => {
          const e = ep.live(id);
          return e ? { weaverId: id, publicKey: e.publicKey, pid: 0, port: e.port, host: e.host } : null;
        };
        gateway = new Gateway({ get: live, all: () => store.liveWeavers().flatMap((w) => live(w.weaver_id) ?? []) }, clog);
      }
      if (weavers && weavers.provisioner.name === 'local') {
        endpoints = new LocalEndpoints(store, clog, (id) => service().peersOf(id));
        const ep = endpoints;
        cleanup.push((weavers.provisioner as LocalProvisioner).hooks.add(ep));
        const live = (id: string) => {
          const e = ep.live(id);
          return e ? { weaverId: id, publicKey: e.publicKey, pid: e.pid, port: e.port } : null;
        };
        // The routing serves the relay always, and the UDP port when one is configured.
        gateway = new Gateway({ get: live, all: () => store.liveWeavers().flatMap((w) => live(w.weaver_id) ?? []) }, clog);
      }
      if (gateway) {
        if (config.tunnel.udpAddr) {
          const { host, port } = splitAddr(config.tunnel.udpAddr);
          try {
            gatewayPort = await gateway.listen(host, port);
          } catch (e) {
            await gateway.stop();
            throw new LoomError(500, 'listen_failed', `cannot listen on UDP ${config.tunnel.udpAddr}: ${(e as Error).message} (set LOOM_TUNNEL_UDP_ADDR)`);
          }
          clog.info({ udp: `${host}:${gatewayPort}` }, 'wireguard gateway listening');
        }
      }
      const s = new TunnelService({
        store,
        orgs: ctx.orgs,
        streams: ctx.streams,
        weavers: weavers?.directory ?? null,
        endpoints,
        udpEndpoints: () => {
          if (!gatewayPort) return [];
          if (config.tunnel.udpEndpoint) return [config.tunnel.udpEndpoint];
          // A specific bind address is where clients reach the gateway; a wildcard means the public name.
          const bound = splitAddr(config.tunnel.udpAddr).host;
          const host = bound === '0.0.0.0' || bound === '::' ? new URL(ctx.baseUrl).hostname : bound;
          return [`${host.includes(':') ? `[${host}]` : host}:${gatewayPort}`];
        },
        relayUrl: (id) => (gateway ? `${ctx.baseUrl.replace(/^http/, 'ws')}/api/wg/relay?session=${encodeURIComponent(id)}` : null),
        log: clog,
      });
      svc = s;
      s.adopt();
      if (weavers) {
        cleanup.push(
          weavers.directory.onRemoved((id) => {
            gateway?.dropWeaver(id);
            s.forgetWeaver(id);
          }),
        );
      }
    },
    async registerApi(api) {
      await registerTunnelApi(api, service);
    },
    async registerPublic(app, ctx) {
      if (gateway) await registerRelay(app, ctx, service, gateway);
    },
    async stop() {
      svc?.stop();
      for (const c of cleanup.splice(0).reverse()) c();
      await gateway?.stop();
    },
  };
}
