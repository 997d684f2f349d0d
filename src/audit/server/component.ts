/**
 * The audit part of loom-server: stores what sidecars deliver (its own tables), serves it to org
 * members, prunes it, and on the local backend runs and supervises the host's sidecar. The BPF
 * addon is never loaded here.
 */
import { EventEmitter } from 'node:events';
import type { Config } from '../../server/config/load.js';
import type { Logger } from '../../common/log.js';
import type { ServerComponent } from '../../server/component.js';
import type { User } from '../../server/auth/users.js';
import type { Resource } from '../../server/orgs/access.js';
import type { Provisioner } from '../../weaver/provisioner.js';
import type { RuntimeHooks } from '../../provisioners/local/hooks.js';
import type { PodAuditCredentials } from '../../provisioners/kubernetes/provisioner.js';
import { auditMigrations } from './migrations.js';
import { AuditStore } from './store.js';
import { registerIngest, registerRead, type AuditRouteDeps } from './routes.js';
import { LocalSidecar } from './local-sidecar.js';

export interface AuditComponentDeps {
  /** The one authorization rule (src/server/orgs/access.ts) for reading a weaver's audit: the weaver, or 404/403. */
  readableWeaver(user: User, id: string): { id: string; resource: Resource };
  provisioner: Provisioner;
  /** Test aid: extra sidecar environment (e.g. LOOM_AUDIT_RING_BYTES). */
  sidecarEnv?: Record<string, string>;
}

export interface AuditComponent extends ServerComponent {
  sidecar(): LocalSidecar | null;
  store(): AuditStore;
}

const PRUNE_INTERVAL_MS = 60_000;

export function auditComponent(config: Config, log: Logger, deps: AuditComponentDeps): AuditComponent {
  const audit = config.weaver.audit;
  const bus = new EventEmitter();
  bus.setMaxListeners(0);
  let store: AuditStore | null = null;
  let sidecar: LocalSidecar | null = null;
  let removeHook: (() => void) | null = null;
  let pruneTimer: NodeJS.Timeout | null = null;
  let baseUrl = '';
  const routeDeps = (): AuditRouteDeps => ({
    store: store!,
    readableWeaver: deps.readableWeaver,
    onStored: (fn) => {
      bus.on('stored', fn);
      return () => bus.off('stored', fn);
    },
    stored: (ids) => bus.emit('stored', ids),
  });
  return {
    name: 'audit',
    migrations: auditMigrations,
    sidecar: () => sidecar,
    store: () => store!,
    async start(ctx) {
      store = new AuditStore(ctx.db);
      const prune = () => {
        const n = store!.prune(audit.retentionDays, audit.maxEventsPerWeaver);
        if (n) log.info({ deleted: n }, 'audit retention');
      };
      prune();
      pruneTimer = setInterval(prune, PRUNE_INTERVAL_MS);
      pruneTimer.unref();
      // Kubernetes: each weaver pod's sidecar gets its own credential, minted here (hashed in our
      // tables, bound to that weaver) and carried into the pod by the backend in a Secret.
      const pods = deps.provisioner as { useAuditCredentials?: (c: PodAuditCredentials) => () => void };
      if (audit.enabled && config.weaver.backend === 'kubernetes' && pods.useAuditCredentials) {
        removeHook = pods.useAuditCredentials({
          mint: (w) => {
            const c = store!.mintCredential('pod', w.weaverId);
            store!.bind(c.id, { weaver_id: w.weaverId, org_id: w.orgId, owner_user_id: w.ownerUserId });
            return c.token;
          },
          revoke: (weaverId) => store!.revokeForWeaver(weaverId),
        });
      }
      const hooks = (deps.provisioner as { hooks?: RuntimeHooks }).hooks;
      if (audit.enabled && config.weaver.backend === 'local' && hooks) {
        sidecar = new LocalSidecar({
          dataDir: config.dataDir,
          // the sidecar reaches the server at the address it listens on (known once listening)
          serverUrl: () => baseUrl || ctx.baseUrl,
          store,
          log: log.child({ component: 'audit' }),
          batchIntervalMs: audit.batchIntervalMs,
          bufferMaxBytes: audit.bufferMaxBytes,
          metricsPort: audit.metricsPort,
          healthPort: audit.healthPort,
          ...(deps.sidecarEnv ? { env: deps.sidecarEnv } : {}),
        });
        removeHook = hooks.add(sidecar.hook());
        ctx.healthChecks.set('audit_sidecar', async () => (sidecar?.current ? { ok: true, detail: `running, ${sidecar.current.attached} programs attached` } : { ok: false, detail: 'not running' }));
      }
    },
    async registerPublic(app, ctx) {
      await registerIngest(app, routeDeps());
      if (sidecar) {
        // start the sidecar once the server listens (it needs the URL); weaver creation waits for it
        app.addHook('onListen', async () => {
          const a = app.server.address();
          if (a && typeof a === 'object') baseUrl = `http://${a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}`;
          sidecar!.start().catch((e: unknown) => ctx.log.error({ err: e }, 'audit sidecar did not start'));
        });
      }
    },
    async registerApi(api, ctx) {
      await registerRead(api, ctx, routeDeps());
    },
    async stop() {
      if (pruneTimer) clearInterval(pruneTimer);
      removeHook?.();
      await sidecar?.stop();
    },
  };
}
