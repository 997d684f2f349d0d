import type { FastifyInstance } from 'fastify';
import type { AppContext } from './context.js';
import type { MigrationSet } from './store/db.js';

/**
 * A part of the server that plugs in beside the core (weavers, branching, …): it owns its tables,
 * its routes under /api (already behind authentication), and its background work.
 */
export interface ServerComponent {
  readonly name: string;
  readonly migrations?: MigrationSet;
  /** Called after migrations, before listening: reconcile state, start timers. */
  start?(ctx: AppContext): Promise<void>;
  /** Registers routes inside the authenticated /api scope. */
  registerApi?(api: FastifyInstance, ctx: AppContext): Promise<void>;
  /** Registers routes outside the authenticated scope (they authenticate themselves). */
  registerPublic?(app: FastifyInstance, ctx: AppContext): Promise<void>;
  /** Graceful shutdown: stop timers and watchers; leave weavers and containers running. */
  stop?(): Promise<void>;
}
