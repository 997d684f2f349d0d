/**
 * The seam through which features plug into the local runtime without knowing its paths:
 * secrets (a tmpfs mount), audit (cgroup registration before the first process runs), tunnels
 * (an endpoint in the weaver's network namespace), networking. Modelled on OCI runtime hooks,
 * but run by loom-server around the runtime's create/start/delete, so a hook can use Node.
 *
 * Order for one container:  spec()  →  runtime create  →  created()  →  runtime start  →  …  →  removed()
 * - spec() may add mounts, env and annotations to the OCI spec before config.json is written.
 * - created() runs while the container's init process exists but has not exec'd the user's
 *   program: the cgroup and the namespaces are there, nothing of the user's has run yet.
 *   A created() that throws fails the container (it never starts).
 * - removed() runs after the container and its mounts are gone; it must be idempotent (it also
 *   runs for containers removed by reconcile after a crash).
 * Hooks run for weavers and for branching containers alike (`kind` tells which).
 */
import type { OciSpec } from './spec.js';

export interface HookContext {
  /** The container id (a weaver id or a branching container id). */
  id: string;
  kind: 'weaver' | 'container';
  /** Org and owner, when the container belongs to one (weavers always do). */
  orgId?: string;
  ownerUserId?: string;
  /** A private directory for this hook's per-container state (the hook creates it when it needs it); removed with the container. */
  stateDir: string;
}

export interface CreatedContext extends HookContext {
  /** The container's init pid (in the host pid namespace). */
  pid: number;
  /** The container's cgroup path relative to the hierarchy root, e.g. "/loom/<id>". */
  cgroupsPath: string;
}

export interface RuntimeHook {
  /** Short and unique; names the hook's state directory. */
  readonly name: string;
  spec?(ctx: HookContext, spec: OciSpec): Promise<void> | void;
  created?(ctx: CreatedContext): Promise<void> | void;
  removed?(ctx: HookContext): Promise<void> | void;
}

/** Runs the hooks in order; the first failure stops a spec()/created() phase. */
export class RuntimeHooks {
  private readonly hooks: RuntimeHook[] = [];

  add(hook: RuntimeHook): () => void {
    if (this.hooks.some((h) => h.name === hook.name)) throw new Error(`runtime hook ${hook.name} is registered twice`);
    this.hooks.push(hook);
    return () => {
      const i = this.hooks.indexOf(hook);
      if (i >= 0) this.hooks.splice(i, 1);
    };
  }

  get size(): number {
    return this.hooks.length;
  }

  async spec(ctx: Omit<HookContext, 'stateDir'>, spec: OciSpec, stateDirOf: (hook: string) => string): Promise<void> {
    for (const h of this.hooks) if (h.spec) await h.spec({ ...ctx, stateDir: stateDirOf(h.name) }, spec);
  }

  async created(ctx: Omit<CreatedContext, 'stateDir'>, stateDirOf: (hook: string) => string): Promise<void> {
    for (const h of this.hooks) if (h.created) await h.created({ ...ctx, stateDir: stateDirOf(h.name) });
  }

  /** Every hook runs even when one fails; failures are returned for logging. */
  async removed(ctx: Omit<HookContext, 'stateDir'>, stateDirOf: (hook: string) => string): Promise<{ hook: string; error: unknown }[]> {
    const failures: { hook: string; error: unknown }[] = [];
    for (const h of [...this.hooks].reverse()) {
      if (!h.removed) continue;
      try {
        await h.removed({ ...ctx, stateDir: stateDirOf(h.name) });
      } catch (error) {
        failures.push({ hook: h.name, error });
      }
    }
    return failures;
  }
}
