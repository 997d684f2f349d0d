import { join } from 'node:path';
import type { Config } from '../server/config/load.js';
import type { Logger } from '../common/log.js';
import type { ServerComponent } from '../server/component.js';
import type { WeaverComponent } from '../weaver/component.js';
import type { LocalProvisioner } from '../provisioners/local/provisioner.js';
import { secretsMigrations } from './migrations.js';
import { Keyring } from './keyring.js';
import { SecretsStore } from './store.js';
import { SecretsService } from './service.js';
import { registerSecretsApi, registerSecretsInternal, registerSecretsK8s, type PodIdentifier } from './routes.js';
import { LocalSecretsInjector } from './local-injector.js';

/**
 * Secrets as a server component: its tables, the master key (a wrong or missing one stops the
 * server), the API, the weaver-facing fetch route, and on the local backend the tmpfs injector
 * and the private-clone token source.
 */
export function secretsComponent(config: Config, log: Logger, weavers: WeaverComponent | null): ServerComponent {
  const clog = log.child({ component: 'secrets' });
  let svc: SecretsService | null = null;
  const cleanup: (() => void)[] = [];
  const service = () => {
    if (!svc) throw new Error('secrets component not started');
    return svc;
  };
  return {
    name: 'secrets',
    migrations: secretsMigrations,
    async start(ctx) {
      const keyring = Keyring.open(ctx.db, config.secrets.masterKeyFile, clog);
      const s = new SecretsService({ store: new SecretsStore(ctx.db), keyring, orgs: ctx.orgs, weavers: weavers?.directory ?? null, log: clog });
      svc = s;
      if (!weavers) return;
      cleanup.push(weavers.directory.onRemoved((id) => s.forgetWeaver(id)));
      if (weavers.provisioner.name === 'local') {
        const local = weavers.provisioner as LocalProvisioner;
        const injector = new LocalSecretsInjector(s, weavers.directory, config.secrets.tmpfsSize, clog, join(config.dataDir, 'secrets', 'live'));
        await injector.start();
        cleanup.push(local.hooks.add(injector), () => injector.stop());
        local.gitToken = async (w) => {
          const ref = weavers.directory.get(w.id) ?? { id: w.id, org_id: w.orgId, owner_user_id: '', repo: w.repo };
          return s.gitToken(ref, w.secretName);
        };
        cleanup.push(() => {
          local.gitToken = null;
        });
      }
    },
    async registerApi(api) {
      await registerSecretsApi(api, service());
    },
    async registerPublic(app) {
      await registerSecretsInternal(app, service());
      if (weavers && weavers.provisioner.name === 'kubernetes' && config.secrets.kubernetesUrl) {
        await registerSecretsK8s(app, service(), weavers.provisioner as unknown as PodIdentifier, weavers.directory);
      }
    },
    async stop() {
      for (const c of cleanup.splice(0).reverse()) c();
    },
  };
}
