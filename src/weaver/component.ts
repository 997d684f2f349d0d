import type { Config } from '../server/config/load.js';
import type { Logger } from '../common/log.js';
import type { ServerComponent } from '../server/component.js';
import type { Provisioner } from './provisioner.js';
import { weaverMigrations } from './migrations.js';
import { WeaverService } from './service.js';
import { WeaverStore } from './store.js';
import { WeaverMetrics } from './metrics.js';
import { registerWeaverApi, registerWeaverAttach } from './routes.js';

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

/** The weaver component, with what other parts may use of it (audit: the visibility rule and the backend). */
export interface WeaverComponent extends ServerComponent {
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
  return {
    name: 'weaver',
    backend: b,
    service,
    migrations: weaverMigrations,
    async start(ctx) {
      const store = new WeaverStore(ctx.db);
      svc = new WeaverService({
        config: config.weaver,
        store,
        orgs: ctx.orgs,
        provisioner: b.provisioner,
        log: log.child({ component: 'weaver' }),
        metrics: new WeaverMetrics(ctx.metrics.registry, () => store.countLive()),
        ...(b.defaultImage ? { backendDefaultImage: b.defaultImage } : {}),
      });
      ctx.healthChecks.set('weaver_backend', () => b.provisioner.health());
      await svc.start();
    },
    async registerApi(api, ctx) {
      await registerWeaverApi(api, ctx, service());
      if (b.registerApi) await b.registerApi(api, ctx);
    },
    async registerPublic(app, ctx) {
      await registerWeaverAttach(app, ctx, service());
    },
    async stop() {
      await svc?.stop();
    },
  };
}
