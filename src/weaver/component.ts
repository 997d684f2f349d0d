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
    return { provisioner: new KubernetesProvisioner({ config: config.weaver, log: log.child({ backend: 'kubernetes' }) }) };
  }
  const { localBackend } = await import('../provisioners/local/component.js');
  return localBackend(config, log.child({ backend: 'local' }));
}

/** The weaver API as a server component. */
export async function weaverComponent(config: Config, log: Logger, backend?: BackendHandle): Promise<ServerComponent> {
  const b = backend ?? (await createBackend(config, log));
  let svc: WeaverService | null = null;
  const service = () => {
    if (!svc) throw new Error('weaver component not started');
    return svc;
  };
  return {
    name: 'weaver',
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
