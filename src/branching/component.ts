import type { Config } from '../server/config/load.js';
import type { Logger } from '../common/log.js';
import type { ServerComponent } from '../server/component.js';
import { branchingMigrations } from './migrations.js';
import { BranchingStore } from './store.js';
import { OperationRunner } from './operations.js';
import { SeedContainers } from '../provisioners/local/seed-containers.js';
import type { ContainerStack } from './stack.js';
import { BranchingService, type ImageSource } from './service.js';
import { isValidRef, sharedImageStore } from '../provisioners/local/images.js';
import { SnapshotGc } from './gc.js';
import { registerBranchingApi } from './routes.js';

/** How many operations run at once; the rest wait queued. */
const CONCURRENCY = 4;
/** An operation running longer than this ends timed_out (its work is aborted and cleans up). */
const OPERATION_TIMEOUT_MS = 30 * 60 * 1000;

/** The branching API (containers, snapshots, fork/clone/resume, lineage, pins, operations) as a server component. */
export async function branchingComponent(config: Config, log: Logger): Promise<ServerComponent> {
  const blog = log.child({ component: 'branching' });
  let svc: BranchingService | null = null;
  let runner: OperationRunner | null = null;
  let gc: SnapshotGc | null = null;
  let host: ContainerStack | null = null;
  return {
    name: 'branching',
    migrations: branchingMigrations,
    async start(ctx) {
      const store = new BranchingStore(ctx.db);
      // Seed containers run on the local runtime stack the weavers use (one runc root, exit
      // watcher, layer store, spec builder); branching sees it only through ContainerStack.
      const seeds = new SeedContainers({
        dataDir: config.dataDir, log: blog, runtime: config.weaver.runtime, usernsBase: config.weaver.usernsBase, testDelayMs: config.branching.testDelayMs,
        limits: { cpu: config.weaver.defaultCpu, memory: config.weaver.defaultMemory, pidsLimit: config.weaver.pidsLimit },
      });
      host = seeds;
      const ask = ctx.quotas.resources(undefined);
      ctx.quotas.addSource({
        name: 'branching',
        usage: (owner) => {
          const h = store.held(owner);
          return { count: h.count, cpuMillis: h.running * ask.cpuMillis, memoryBytes: h.running * ask.memoryBytes };
        },
      });
      const imageStore = sharedImageStore(config.dataDir, blog);
      const images: ImageSource = {
        async rootfs(ref) {
          if (!isValidRef(ref)) return null;
          const img = await imageStore.get(ref);
          return img ? imageStore.unpack(img) : null;
        },
      };
      let stackUp = true;
      try {
        await seeds.start();
      } catch (e) {
        stackUp = false;
        blog.warn({ err: e }, 'branching: the local runtime stack did not start; containers and snapshots are unavailable');
      }
      if (stackUp) {
        // A data dir written by an earlier release: its containers and snapshot trees become layers.
        const upgraded = await seeds.upgradeLegacy();
        for (const id of upgraded.stopped) {
          if (store.container(id)) store.updateContainer(id, { status: 'stopped', stopped_at: new Date().toISOString(), reason: 'stopped by the upgrade to layered containers; resume it' });
        }
      }
      runner = new OperationRunner(store, blog, { concurrency: CONCURRENCY, timeoutMs: OPERATION_TIMEOUT_MS });
      svc = new BranchingService({
        store, orgs: ctx.orgs, stack: seeds, runner, log: blog, dataDir: config.dataDir, testDelayMs: config.branching.testDelayMs,
        importRoots: config.branching.importRoots, archiveMaxBytes: config.branching.archiveMaxBytes, images, quotas: ctx.quotas,
        weavers: () => ctx.weaverBranching,
      });
      const s = svc;
      ctx.snapshotLookup = { snapshotForWeaver: (user, id) => s.snapshotForWeaver(user, id) };
      if (stackUp) await svc.reconcile();
      gc = new SnapshotGc(svc, config.branching.gcIntervalSecs, blog);
      gc.start();
      ctx.healthChecks.set('branching', async () => ({
        ok: true,
        detail: `runtime ${seeds.runtimeDescription ?? 'unavailable'} (the local stack's), ${runner?.activeCount ?? 0} operations active`,
      }));
    },
    async registerApi(api) {
      if (!svc) throw new Error('branching component not started');
      await registerBranchingApi(api, svc);
    },
    async stop() {
      gc?.stop();
      await runner?.stop();
      host?.close();
    },
  };
}
