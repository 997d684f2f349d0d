/**
 * Local backend injection through the provisioner's RuntimeHooks seam:
 * spec()    mints the weaver's identity, fetches its secrets with it, mounts a size-capped tmpfs
 *           (nosuid, nodev, noexec) under the hook's state dir, writes one 0400 file per secret
 *           owned by the weaver's user (its host-side uid when a user namespace maps it), and
 *           bind-mounts that directory read-only at /run/secrets/loom. The OCI config gets only
 *           the mount and pointers: LOOM_SECRETS_DIR and <NAME>_FILE — never a value.
 * removed() revokes the identity, wipes and unmounts.
 * A change to a secret re-syncs every running weaver it concerns: new file + rename, so the
 * directory bind shows it at once inside.
 */
import { constants, promises as fsp } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Logger } from '../common/log.js';
import { errorMessage } from '../common/errors.js';
import type { RuntimeHook, HookContext } from '../provisioners/local/hooks.js';
import type { OciSpec } from '../provisioners/local/spec.js';
import { run } from '../provisioners/local/util.js';
import type { WeaverDirectory, WeaverRef } from './policy.js';
import type { SecretChange, SecretsService } from './service.js';

export const SECRETS_MOUNT = '/run/secrets/loom';
const HOOK_NAME = 'secrets';

interface LiveWeaver {
  ref: WeaverRef;
  dir: string;
  uid: number;
  gid: number;
  identity: string;
  /** Serializes syncs of one weaver. */
  sync: Promise<void>;
}

/** Persisted beside the mount so a restarted server can adopt it again (no secret in it). */
interface StateFile {
  weaverId: string;
  uid: number;
  gid: number;
}

/** The container user's ids on the host: through the spec's user-namespace mappings when it has them. */
export function hostIds(spec: OciSpec): { uid: number; gid: number } {
  type Mapping = { containerID: number; hostID: number; size: number };
  const linux = spec.linux as OciSpec['linux'] & { uidMappings?: Mapping[]; gidMappings?: Mapping[] };
  const map = (id: number, m?: Mapping[]) => {
    if (!m || m.length === 0) return id;
    const hit = m.find((x) => id >= x.containerID && id < x.containerID + x.size);
    if (!hit) throw new Error(`container id ${id} is not mapped by the user namespace`);
    return hit.hostID + (id - hit.containerID);
  };
  return { uid: map(spec.process.user.uid, linux.uidMappings), gid: map(spec.process.user.gid, linux.gidMappings) };
}

export class LocalSecretsInjector implements RuntimeHook {
  readonly name = HOOK_NAME;
  private readonly live = new Map<string, LiveWeaver>();
  private unsubscribe: (() => void) | null = null;

  constructor(
    private readonly svc: SecretsService,
    private readonly weavers: WeaverDirectory,
    private readonly tmpfsSize: string,
    private readonly log: Logger,
    /** Where each weaver's state dir is recorded for adoption after a restart. */
    private readonly registryDir: string,
  ) {}

  /** Subscribes to changes and adopts the mounts of weavers that kept running while we were down. */
  async start(): Promise<void> {
    this.unsubscribe = this.svc.onChange((c) => this.onChange(c));
    await fsp.mkdir(this.registryDir, { recursive: true, mode: 0o700 });
    for (const f of await fsp.readdir(this.registryDir)) {
      const link = join(this.registryDir, f);
      const dir = await fsp.readlink(link).catch(() => null);
      const state = dir ? await readState(dir) : null;
      const ref = state ? this.weavers.get(state.weaverId) : null;
      if (!dir || !state || !ref || !(await isMountPoint(join(dir, 'fs')))) {
        await fsp.rm(link, { force: true });
        continue;
      }
      const w: LiveWeaver = { ref, dir, uid: state.uid, gid: state.gid, identity: this.svc.mintIdentity(ref), sync: Promise.resolve() };
      this.live.set(ref.id, w);
      await this.resync(w);
      this.log.info({ weaver: ref.id }, 'secrets: adopted a running weaver\'s secrets mount');
    }
  }

  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
  }

  async spec(ctx: HookContext, spec: OciSpec): Promise<void> {
    if (ctx.kind !== 'weaver') return;
    const ref = this.weavers.get(ctx.id);
    if (!ref) return; // not a weaver of this server (e.g. a bare provisioner in a test)
    const { uid, gid } = hostIds(spec);
    const dir = ctx.stateDir;
    const fs = join(dir, 'fs');
    await fsp.mkdir(fs, { recursive: true, mode: 0o700 });
    if (!(await isMountPoint(fs))) {
      const r = await run('mount', ['-t', 'tmpfs', '-o', `size=${tmpfsBytes(this.tmpfsSize)},mode=0500,uid=${uid},gid=${gid},nosuid,nodev,noexec`, 'loom-secrets', fs]);
      if (r.code !== 0) throw new Error(`mounting the secrets tmpfs failed: ${r.stderr.trim()}`);
    }
    const state: StateFile = { weaverId: ref.id, uid, gid };
    await fsp.writeFile(join(dir, 'state.json'), JSON.stringify(state), { mode: 0o600 });
    await fsp.symlink(dir, join(this.registryDir, ref.id)).catch(async (e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
    const w: LiveWeaver = { ref, dir, uid, gid, identity: this.svc.mintIdentity(ref), sync: Promise.resolve() };
    this.live.set(ref.id, w);
    const names = await this.resync(w);
    spec.mounts.push({ destination: SECRETS_MOUNT, type: 'bind', source: fs, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] });
    setEnv(spec, 'LOOM_SECRETS_DIR', SECRETS_MOUNT);
    for (const n of names) setEnv(spec, `${n}_FILE`, `${SECRETS_MOUNT}/${n}`);
  }

  async removed(ctx: HookContext): Promise<void> {
    if (ctx.kind !== 'weaver') return;
    const w = this.live.get(ctx.id);
    this.live.delete(ctx.id);
    await w?.sync.catch(() => undefined);
    this.svc.forgetWeaver(ctx.id);
    const fs = join(ctx.stateDir, 'fs');
    if (await isMountPoint(fs)) {
      // Wipe before unmount: nothing of a value outlives the weaver, even in a lazily freed page.
      for (const f of await fsp.readdir(fs).catch(() => [] as string[])) await fsp.rm(join(fs, f), { force: true });
      const r = await run('umount', [fs]);
      if (r.code !== 0) await run('umount', ['-l', fs]);
    }
    await fsp.rm(join(this.registryDir, ctx.id), { force: true });
  }

  private onChange(c: SecretChange): void {
    for (const w of this.live.values()) {
      const ref = this.weavers.get(w.ref.id);
      if (!ref || !this.svc.concerns(c, ref)) continue;
      void this.resync(w).catch((e) => this.log.warn({ weaver: w.ref.id, err: errorMessage(e) }, 'secrets: re-sync after a change failed'));
    }
  }

  /** Writes the weaver's current secrets into its tmpfs (new file, then rename); returns their names. */
  private resync(w: LiveWeaver): Promise<string[]> {
    const p = w.sync.then(async () => {
      const { secrets } = this.svc.fetch(w.identity, undefined, 'inject');
      const fs = join(w.dir, 'fs');
      const keep = new Set<string>();
      for (const s of secrets) {
        keep.add(s.name);
        const tmp = join(fs, `.${s.name}.${randomBytes(6).toString('hex')}`);
        const fh = await fsp.open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o400);
        try {
          await fh.chown(w.uid, w.gid);
          await fh.writeFile(s.value);
        } finally {
          await fh.close();
          s.value.fill(0);
        }
        await fsp.rename(tmp, join(fs, s.name));
      }
      for (const f of await fsp.readdir(fs)) if (!keep.has(f)) await fsp.rm(join(fs, f), { force: true });
      return [...keep].sort();
    });
    w.sync = p.then(() => undefined, () => undefined);
    return p;
  }
}

function setEnv(spec: OciSpec, key: string, value: string): void {
  spec.process.env = spec.process.env.filter((e) => !e.startsWith(`${key}=`));
  spec.process.env.push(`${key}=${value}`);
}

/** "1Mi" → "1048576" (tmpfs takes bytes or k/m/g suffixes; pass plain bytes). */
function tmpfsBytes(q: string): string {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$/.exec(q)!;
  const unit: Record<string, number> = { '': 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 };
  return String(Math.max(4096, Math.floor(Number(m[1]) * unit[m[2] ?? '']!)));
}

async function readState(dir: string): Promise<StateFile | null> {
  try {
    return JSON.parse(await fsp.readFile(join(dir, 'state.json'), 'utf8')) as StateFile;
  } catch {
    return null;
  }
}

async function isMountPoint(path: string): Promise<boolean> {
  const text = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  return text.split('\n').some((l) => (l.split(' ')[4] ?? '').replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))) === path);
}
