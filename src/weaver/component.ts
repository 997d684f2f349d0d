import type { Config } from '../server/config/load.js';
import type { Logger } from '../common/log.js';
import type { ServerComponent } from '../server/component.js';
import type { Provisioner } from './provisioner.js';
import { weaverMigrations } from './migrations.js';
import { WeaverService } from './service.js';
import { WeaverStore } from './store.js';
import { WeaverMetrics } from './metrics.js';
import { registerWeaverApi, registerWeaverAttach } from './routes.js';
import { registerExecApi, registerExecSocket } from './exec-routes.js';

export interface BackendHandle {
  provisioner: Provisioner;
  defaultImage?: string;
  /** Backend-specific API routes (e.g. the local image store). */
  registerApi?: ServerComponent['registerApi'];
}

/** Builds the configured backend; each is imported only when chosen. */
export async function createBackend(config: Config, log: Logger): Promise<BackendHandle> {
  if (config.weaver.backend === 'kubernetes') {
    const { KubernetesProvisioner } = await import('../provisioners/kubernetes/index.js');
    return { provisioner: new KubernetesProvisioner({ config: config.weaver, log: log.child({ backend: 'kubernetes' }), ...(config.secrets.kubernetesUrl ? { secretsUrl: config.secrets.kubernetesUrl, secretsSizeLimit: config.secrets.tmpfsSize } : {}), ...(config.tunnel.k8sImage ? { tunnelImage: config.tunnel.k8sImage } : {}) }) };
  }
  const { localBackend } = await import('../provisioners/local/component.js');
  return localBackend(config, log.child({ backend: 'local' }));
}

/** What other components may know of weavers: records by id (read-only) and removals. */
export interface WeaverDirectory {
  get(id: string): { id: string; org_id: string; owner_user_id: string; repo?: string } | null;
  onRemoved(cb: (id: string) => void): () => void;
}

/** The weaver component, with what other parts may use of it (secrets: records and removals; audit: the visibility rule and the backend). */
export interface WeaverComponent extends ServerComponent {
  readonly directory: WeaverDirectory;
  readonly provisioner: Provisioner;
  readonly backend: BackendHandle;
  service(): WeaverService;
}

/** The weaver API as a server component. */
export async function weaverComponent(config: Config, log: Logger, backend?: BackendHandle): Promise<WeaverComponent> {
  const b = backend ?? (await createBackend(config, log));
  let svc: WeaverService | null = null;
  const service = () => {
    if (!svc) throw new Error('weaver component not started');
    return svc;
  };
  const removed = new Set<(id: string) => void>();
  return {
    name: 'weaver',
    provisioner: b.provisioner,
    directory: {
      get(id) {
        const w = svc?.record(id);
        return w ? { id: w.id, org_id: w.org_id, owner_user_id: w.owner_user_id, ...(w.repo ? { repo: w.repo } : {}) } : null;
      },
      onRemoved(cb) {
        removed.add(cb);
        return () => removed.delete(cb);
      },
    },
    backend: b,
    service,
    migrations: weaverMigrations,
    async start(ctx) {
      const store = new WeaverStore(ctx.db);
      ctx.quotas.addSource({ name: 'weavers', usage: (o) => store.usage(o) });
      svc = new WeaverService({
        config: config.weaver,
        store,
        orgs: ctx.orgs,
        provisioner: b.provisioner,
        quotas: ctx.quotas,
        log: log.child({ component: 'weaver' }),
        metrics: new WeaverMetrics(ctx.metrics.registry, () => store.countLive()),
        ...(b.defaultImage ? { backendDefaultImage: b.defaultImage } : {}),
        snapshotLookup: () => ctx.snapshotLookup,
      });
      ctx.weaverBranching = svc.branchingPort();
      svc.onRemoved((id) => {
        for (const cb of removed) cb(id);
      });
      ctx.healthChecks.set('weaver_backend', () => b.provisioner.health());
      await svc.start();
    },
    async registerApi(api, ctx) {
      await registerWeaverApi(api, ctx, service());
      await registerExecApi(api, ctx, service(), b.provisioner, config.weaver);
      if (b.registerApi) await b.registerApi(api, ctx);
    },
    async registerPublic(app, ctx) {
      await registerWeaverAttach(app, ctx, service());
      await registerExecSocket(app, ctx, service(), b.provisioner);
    },
    async stop() {
      await svc?.stop();
    },
  };
}
