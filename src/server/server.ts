import type { FastifyInstance } from 'fastify';
import { loadConfig, testKnobs, type Config } from './config/load.js';
import { createLogger, type Logger } from '../common/log.js';
import { migrate, openDatabase } from './store/db.js';
import { coreMigrations } from './store/core-migrations.js';
import { Metrics } from './metrics.js';
import { OrgService } from './orgs/orgs.js';
import { UserService } from './auth/users.js';
import { TokenService, offsetClock } from './auth/tokens.js';
import { DeviceFlow } from './auth/device.js';
import { AccessEvents } from './events.js';
import { StreamRegistry } from './streams.js';
import { LoginLimiter } from './auth/login-limit.js';
import type { AppContext } from './context.js';
import type { ServerComponent } from './component.js';
import { buildApp } from './app.js';
import { Quotas } from '../weaver/quotas.js';
import { LoomError, errorMessage } from '../common/errors.js';

export interface CoreHandle {
  ctx: AppContext;
  close(): void;
}

/** Opens the store and builds the services every command needs (server and admin CLI alike). */
export function openCore(config: Config, log: Logger, components: ServerComponent[] = []): CoreHandle {
  const db = openDatabase(config.dataDir);
  const applied = migrate(db, [coreMigrations, ...components.flatMap((c) => (c.migrations ? [c.migrations] : []))]);
  for (const m of applied) log.info({ component: m.component, version: m.version }, `migration applied: ${m.name}`);
  const events = new AccessEvents();
  const orgs = new OrgService(db, events);
  const authClockFile = testKnobs().authClockFile;
  const tokens = new TokenService(db, config.sessionIdleDays * 86400, events, authClockFile ? offsetClock(authClockFile) : Date.now);
  const ctx: AppContext = {
    config,
    db,
    log,
    metrics: new Metrics(),
    orgs,
    quotas: Quotas.fromConfig(config),
    tokens,
    streams: new StreamRegistry({ tokens, orgs, events, log, recheckMs: config.streams.recheckSecs * 1000 }),
    loginLimiter: new LoginLimiter(config.auth.loginMaxFailures, config.auth.loginWindowSecs * 1000),
    users: new UserService(db, orgs),
    device: new DeviceFlow(db, tokens),
    baseUrl: config.publicUrl || `http://${config.httpHost}:${config.httpPort}`,
    healthChecks: new Map(),
  };
  return {
    ctx,
    close: () => {
      ctx.streams.stop();
      db.close();
    },
  };
}

export interface RunningServer {
  app: FastifyInstance;
  ctx: AppContext;
  url: string;
  stop(): Promise<void>;
}

/** Loads the components the configuration asks for; a disabled part costs nothing. */
export async function loadComponents(config: Config, log: Logger): Promise<ServerComponent[]> {
  const components: ServerComponent[] = [];
  let weavers: import('../weaver/component.js').WeaverComponent | null = null;
  if (config.weaver.enabled) {
    const { weaverComponent } = await import('../weaver/component.js');
    weavers = await weaverComponent(config, log);
    components.push(weavers);
    // audit: stored events stay readable when the sidecar is switched off
    const { auditComponent } = await import('../audit/server/component.js');
    const { WeaverService } = await import('../weaver/service.js');
    const w = weavers;
    components.push(
      auditComponent(config, log, {
        provisioner: w.backend.provisioner,
        // what ran inside (argv, paths, addresses) is as private as the weaver's output: the 'logs' right
        readableWeaver: (u, id) => {
          const found = w.service().authorized(u, id, 'logs');
          return { id: found.id, resource: WeaverService.resource(found) };
        },
      }),
    );
  }
  const { branchingComponent } = await import('../branching/component.js');
  components.push(await branchingComponent(config, log));
  // After weavers: it reads their records and plugs into their backend.
  const { secretsComponent } = await import('../secrets/component.js');
  components.push(secretsComponent(config, log, weavers));
  const { tunnelComponent } = await import('../tunnel/component.js');
  components.push(tunnelComponent(config, log, weavers));
  const { consoleComponent } = await import('./console/component.js');
  components.push(consoleComponent());
  return components;
}

export async function startServer(config: Config = loadConfig(), log: Logger = createLogger(config.logLevel)): Promise<RunningServer> {
  const components = await loadComponents(config, log);
  const core = openCore(config, log, components);
  const { ctx } = core;
  if (ctx.users.count() === 0) {
    log.warn(
      { dataDir: config.dataDir },
      `no users yet: create the first admin with \`LOOM_DATA_DIR=${config.dataDir} loom-server admin token --user admin --admin\` (prints an API token for \`loom login --token\`) and \`loom-server admin passwd --user admin\` (sets a password for the /device page)`,
    );
  }
  ctx.streams.start();
  const started: ServerComponent[] = [];
  try {
    for (const c of components) {
      if (c.start) await c.start(ctx);
      started.push(c);
    }
  } catch (e) {
    for (const c of started.reverse()) await c.stop?.().catch(() => undefined);
    core.close();
    throw e;
  }
  const app = await buildApp(ctx, components);
  try {
    await app.listen({ host: config.httpHost, port: config.httpPort });
  } catch (e) {
    for (const c of components) await c.stop?.().catch(() => undefined);
    await app.close().catch(() => undefined);
    core.close();
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'EADDRINUSE' ? 'address already in use' : code === 'EACCES' ? 'permission denied' : errorMessage(e);
    throw new LoomError(500, 'listen_failed', `cannot listen on ${config.httpHost}:${config.httpPort}: ${why} (set LOOM_HTTP_ADDR)`);
  }
  const addr = app.server.address();
  const port = typeof addr === 'object' && addr ? addr.port : config.httpPort;
  const url = `http://${config.httpHost.includes(':') ? `[${config.httpHost}]` : config.httpHost}:${port}`;
  if (!config.publicUrl) ctx.baseUrl = url;
  log.info({ url, dataDir: config.dataDir, backend: config.weaver.enabled ? config.weaver.backend : 'disabled' }, 'loom-server listening');
  let stopping: Promise<void> | null = null;
  const stop = () =>
    (stopping ??= (async () => {
      log.info('shutting down');
      await app.close();
      for (const c of components.slice().reverse()) await c.stop?.().catch((e) => log.error({ err: e }, `stopping ${c.name}`));
      core.close();
      log.info('stopped');
    })());
  return { app, ctx, url, stop };
}
