import { badRequest } from '../common/errors.js';
import type { WeaverConfig } from '../server/config/load.js';

/** The body of POST /api/weaver after schema validation (types are already checked). */
export interface CreateWeaverRequest {
  image?: string;
  org_id?: string;
  repo?: string;
  branch?: string;
  git_secret?: string;
  env?: Record<string, string>;
  lifetime_hours?: number;
  command?: string[];
  resources?: { cpu?: string; memory?: string };
  tags?: Record<string, string>;
  /** Start from this snapshot (a weaver snapshot) instead of an image. */
  from_snapshot?: string;
}

export const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
// Docker/OCI reference grammar, simplified: [registry[:port]/]path[:tag][@sha256:hex].
const IMAGE_RE = /^(?:[a-zA-Z0-9.-]+(?::\d+)?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$/;
const CPU_RE = /^(\d+(\.\d+)?|\d+m)$/;
const MEM_RE = /^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$/;
const TAG_KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const RESERVED_ENV = new Set(['HOME', 'PATH', 'HOSTNAME', 'TERM']);

export function isValidImageRef(ref: string): boolean {
  return ref.length <= 255 && IMAGE_RE.test(ref);
}

/** A git branch name that git itself would accept (git check-ref-format, the parts that matter). */
export function isValidBranch(b: string): boolean {
  return (
    b.length > 0 &&
    b.length <= 200 &&
    !/[\x00-\x20~^:?*[\\\x7f]/.test(b) &&
    !b.startsWith('-') &&
    !b.startsWith('/') &&
    !b.endsWith('/') &&
    !b.endsWith('.') &&
    !b.endsWith('.lock') &&
    !b.includes('..') &&
    !b.includes('//') &&
    !b.includes('@{') &&
    b !== '@'
  );
}

/** "https://host/org/repo.git" → "repo": the directory under /workspace. */
export function repoDirName(url: string): string {
  const path = new URL(url).pathname.replace(/\/+$/, '');
  const last = path.slice(path.lastIndexOf('/') + 1).replace(/\.git$/, '');
  return last;
}

export function validateRepo(repo: string): void {
  let u: URL;
  try {
    u = new URL(repo);
  } catch {
    throw badRequest(`repo ${JSON.stringify(repo)} is not a URL; give an https URL such as https://github.com/org/repo`, 'invalid_repo');
  }
  if (u.protocol !== 'https:') throw badRequest(`repo must be an https URL (got ${u.protocol.replace(/:$/, '')})`, 'invalid_repo');
  if (u.username || u.password) throw badRequest('repo URL must not contain credentials', 'invalid_repo');
  const name = repoDirName(repo);
  if (!name || name === '.' || name === '..' || !/^[A-Za-z0-9._-]+$/.test(name)) {
    throw badRequest(`cannot tell the repository name from ${JSON.stringify(repo)}`, 'invalid_repo');
  }
}

export interface ValidatedCreate {
  image: string | undefined;
  repo?: string;
  branch?: string;
  gitSecret?: string;
  env: Record<string, string>;
  lifetimeHours: number;
  command?: string[];
  resources: { cpu: string; memory: string };
  tags: Record<string, string>;
}

/** Checks everything the schema can't; throws a 400 naming the field. Changes nothing. */
export function validateCreate(req: CreateWeaverRequest, cfg: WeaverConfig): ValidatedCreate {
  if (req.image !== undefined && !isValidImageRef(req.image)) {
    throw badRequest(`invalid image reference ${JSON.stringify(req.image)}`, 'invalid_image');
  }
  if (req.from_snapshot !== undefined) {
    if (req.image !== undefined) throw badRequest('give either image or from_snapshot, not both (a weaver made from a snapshot runs its image)', 'from_snapshot_with_image');
    if (req.repo !== undefined) throw badRequest('give either repo or from_snapshot, not both (a weaver made from a snapshot has its /workspace)', 'from_snapshot_with_repo');
  }
  if (req.branch !== undefined && req.repo === undefined) throw badRequest('branch needs repo', 'branch_without_repo');
  if (req.repo !== undefined) validateRepo(req.repo);
  if (req.branch !== undefined && !isValidBranch(req.branch)) throw badRequest(`invalid branch name ${JSON.stringify(req.branch)}`, 'invalid_branch');
  if (req.git_secret !== undefined && req.repo === undefined) throw badRequest('git_secret needs repo', 'git_secret_without_repo');
  if (req.git_secret !== undefined && !/^[A-Z][A-Z0-9_]{0,127}$/.test(req.git_secret)) {
    throw badRequest(`invalid git_secret ${JSON.stringify(req.git_secret.slice(0, 140))}: a secret name (upper-case letters, digits and _)`, 'invalid_git_secret');
  }
  const env = req.env ?? {};
  for (const [k, v] of Object.entries(env)) {
    if (!ENV_KEY_RE.test(k)) throw badRequest(`invalid env key ${JSON.stringify(k)}: letters, digits and _, not starting with a digit`, 'invalid_env');
    if (RESERVED_ENV.has(k)) throw badRequest(`env key ${k} is set by Loom and cannot be overridden`, 'invalid_env');
    if (v.includes('\0')) throw badRequest(`env ${k} contains a NUL byte`, 'invalid_env');
  }
  const lifetime = req.lifetime_hours ?? cfg.defaultTtlHours;
  if (!(lifetime > 0)) throw badRequest('lifetime_hours must be greater than 0', 'invalid_lifetime');
  if (lifetime > cfg.maxTtlHours) {
    throw badRequest(`lifetime_hours ${lifetime} is over the maximum of ${cfg.maxTtlHours} hours`, 'lifetime_too_long');
  }
  if (req.command !== undefined) {
    if (req.command.length === 0) throw badRequest('command must be a non-empty argv array', 'invalid_command');
    if (req.command.some((a) => a.includes('\0'))) throw badRequest('command arguments must not contain NUL bytes', 'invalid_command');
  }
  const cpu = req.resources?.cpu ?? cfg.defaultCpu;
  const memory = req.resources?.memory ?? cfg.defaultMemory;
  if (!CPU_RE.test(cpu)) throw badRequest(`invalid cpu ${JSON.stringify(cpu)}: a quantity such as 500m or 2`, 'invalid_resources');
  if (!MEM_RE.test(memory)) throw badRequest(`invalid memory ${JSON.stringify(memory)}: a quantity such as 512Mi or 2Gi`, 'invalid_resources');
  const tags = req.tags ?? {};
  for (const [k, v] of Object.entries(tags)) {
    if (!TAG_KEY_RE.test(k)) throw badRequest(`invalid tag key ${JSON.stringify(k)}`, 'invalid_tags');
    if (v.length > 256) throw badRequest(`tag ${k} is longer than 256 characters`, 'invalid_tags');
  }
  return {
    image: req.image,
    ...(req.repo !== undefined ? { repo: req.repo } : {}),
    ...(req.branch !== undefined ? { branch: req.branch } : {}),
    ...(req.git_secret !== undefined ? { gitSecret: req.git_secret } : {}),
    env,
    lifetimeHours: lifetime,
    ...(req.command !== undefined ? { command: req.command } : {}),
    resources: { cpu, memory },
    tags,
  };
}
