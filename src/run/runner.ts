/**
 * `loom run --local`: prepares the isolated workspace, runs the workflow's stages in order (jobs
 * of a stage in parallel, bounded by CPUs), and writes the log tree and the receipt v1.
 *
 * Exit codes: 0 success (or pipeline skipped by workflow.rules), 1 a job failed, 2 usage error,
 * 3 invalid workflow, 4 workspace preparation failed.
 */
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { cacheKey, expandTemplate, restoreCache, sanitizeKey, saveCache, type KeyContext } from './cache.js';
import { HostProvider, type JobProvider } from './host-provider.js';
import { LineSplitter, Redactor, StreamRedactor } from './redact.js';
import { LogSink, type EventFields, type PhaseFamily, type PhaseRecord } from './logs.js';
import { workflowRuns } from './rules.js';
import { SecretError, resolveSecretRef } from './secrets.js';
import { git, prepareWorkspace } from './workspace.js';
import { WorkflowError, formatProblem, loadWorkflow, type JobSpec, type Workflow } from './workflow.js';

export const EXIT = { success: 0, jobFailed: 1, usage: 2, invalidWorkflow: 3, prepareFailed: 4 } as const;

export type MountMode = 'bind_mount' | 'ephemeral_volume';

export interface RunOptions {
  cwd: string;
  workflow: string;
  jobs: string[];
  stream: boolean;
  quiet: boolean;
  verbose: boolean;
  mount: MountMode;
  argv: string[];
  /** Human output (stdout). */
  out: (line: string) => void;
  /** Warnings and progress (stderr). */
  err: (line: string) => void;
}

export interface ContainerProviderFactory {
  (o: { workspace: string; image: string; mount: MountMode; jobId: string; runId: string; secretDir?: string }): JobProvider;
}

let containerFactory: ContainerProviderFactory | undefined;
/** The container provider registers itself here (kept in its own module so the runtime can change under it). */
export function setContainerProviderFactory(f: ContainerProviderFactory): void {
  containerFactory = f;
}

type JobStatus = 'success' | 'failure' | 'skipped';

interface JobResult {
  job: JobSpec;
  jobId: string;
  status: JobStatus;
  exitCode: number;
  error?: string;
  summaryPath: string;
  manifestPath: string;
}

const now = () => new Date().toISOString();

function nsTimestamp(): string {
  const ms = BigInt(Date.now());
  const sub = process.hrtime.bigint() % 1_000_000n;
  return (ms * 1_000_000n + sub).toString();
}

class Phases {
  records: PhaseRecord[] = [];
  async run<T>(code: string, family: PhaseFamily, scope: string, jobId: string | undefined, fn: () => Promise<T>): Promise<T> {
    const t0 = Date.now();
    const started = now();
    try {
      const r = await fn();
      this.records.push({ phase_code: code, phase_family: family, scope, ...(jobId ? { job_id: jobId } : {}), status: 'success', started_at: started, finished_at: now(), duration_ms: Date.now() - t0 });
      return r;
    } catch (e) {
      this.records.push({ phase_code: code, phase_family: family, scope, ...(jobId ? { job_id: jobId } : {}), status: 'failure', started_at: started, finished_at: now(), duration_ms: Date.now() - t0, error: (e as Error).message });
      throw e;
    }
  }
  mark(code: string, family: PhaseFamily, scope: string, jobId: string | undefined, status: JobStatus, error?: string): void {
    const t = now();
    this.records.push({ phase_code: code, phase_family: family, scope, ...(jobId ? { job_id: jobId } : {}), status, started_at: t, finished_at: t, duration_ms: 0, ...(error ? { error } : {}) });
  }
}

async function pool<T>(items: T[], limit: number, fn: (t: T) => Promise<void>): Promise<void> {
  let i = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (i < items.length) await fn(items[i++]!);
  });
  await Promise.all(workers);
}

class JobFailure extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}

export async function runLocal(o: RunOptions): Promise<number> {
  const started = Date.now();
  const startedAt = now();
  let repoRoot: string;
  try {
    repoRoot = (await git(o.cwd, ['rev-parse', '--show-toplevel'])).trim();
  } catch {
    o.err(`loom: ${o.cwd} is not inside a git repository`);
    return EXIT.usage;
  }
  const runId = nsTimestamp();
  const pipelineId = `${runId}-p`;
  const redactor = new Redactor();
  const warnings: string[] = [];

  // run.bootstrap: the workspace, then the workflow read from it (what CI would read).
  let ws;
  try {
    ws = await prepareWorkspace(repoRoot, runId, (m) => {
      warnings.push(m);
      if (!o.quiet) o.err(`warning: ${m}`);
    });
  } catch (e) {
    o.err(`loom: preparing the isolated workspace failed: ${(e as Error).message.split('\n')[0]}`);
    return EXIT.prepareFailed;
  }
  if (!o.quiet) o.out(`isolated workspace: ${ws.path}`);
  let wf: Workflow;
  try {
    wf = loadWorkflow(ws.path, o.workflow);
  } catch (e) {
    await rm(ws.path, { recursive: true, force: true });
    if (e instanceof WorkflowError) {
      for (const p of e.problems) o.err(formatProblem(p));
      o.err(`loom: invalid workflow (${e.problems.length} problem${e.problems.length === 1 ? '' : 's'}); the isolated workspace was removed`);
      return EXIT.invalidWorkflow;
    }
    throw e;
  }
  const unknown = o.jobs.filter((j) => !wf.jobs.some((x) => x.name === j));
  if (unknown.length) {
    await rm(ws.path, { recursive: true, force: true });
    o.err(`loom: no such job: ${unknown.join(', ')}`);
    return EXIT.usage;
  }

  const runtimeDir = join(ws.path, '.loom', '.runtime');
  const logsDir = join(runtimeDir, 'logs', runId);
  const receiptsDir = join(runtimeDir, 'receipts');
  await mkdir(logsDir, { recursive: true });
  await mkdir(receiptsDir, { recursive: true });
  const sink = new LogSink(runId, redactor);
  const phases = new Phases();
  const runEvents = join(logsDir, 'events.jsonl');
  const pipeDir = join(logsDir, 'pipeline');
  const pipeEvents = join(pipeDir, 'events.jsonl');
  const emitRun = (phase: string, family: PhaseFamily, message: string, extra: Partial<EventFields> = {}) =>
    sink.emit(family === 'pipeline' ? [runEvents, pipeEvents] : [runEvents], { stream: 'system', scope: family === 'run' ? 'run' : 'pipeline', phase_code: phase, phase_family: family, message, ...extra });

  // env:// values are known up front: redact them everywhere, even in jobs that do not declare them
  // (host jobs inherit the environment).
  for (const j of wf.jobs) {
    for (const [name, s] of Object.entries(j.secrets)) {
      const m = /^env:\/\/(.+)$/.exec(s.ref);
      const v = m ? process.env[m[1]!] : undefined;
      if (v) redactor.add(name, v);
    }
  }

  phases.mark('run.bootstrap', 'run', 'run', undefined, 'success');
  emitRun('run.bootstrap', 'run', `isolated workspace ${ws.path} at ${ws.headSha}: ${ws.copied} files copied, ${ws.symlinks} symlinks, ${ws.deleted} deleted`);
  for (const w of warnings) emitRun('run.bootstrap', 'run', w, { level: 'warn' });

  const workflowAbs = join(ws.path, wf.path);
  const predefinedBase = (job: JobSpec, jobId: string, provider: string, projectDir: string): Record<string, string> => {
    const v: Record<string, string> = {
      LOOM_CI: 'true', LOOM_RUN_ID: runId, LOOM_PIPELINE_ID: pipelineId, LOOM_WORKFLOW_PATH: wf.path,
      LOOM_JOB_NAME: job.name, LOOM_JOB_ID: jobId, LOOM_JOB_STAGE: job.stage, LOOM_JOB_TARGET: job.target,
      LOOM_JOB_IMAGE: job.image ?? '', LOOM_PROVIDER: provider, LOOM_PROJECT_DIR: projectDir,
      LOOM_COMMIT_SHA: ws.headSha,
    };
    for (const [k, val] of Object.entries({ ...v })) v[k.replace(/^LOOM_/, 'CI_')] = val;
    v.CI = 'true';
    return v;
  };

  // workflow.rules see the predefined run-level variables, the workflow's variables and the environment.
  const ruleVars: Record<string, string | undefined> = { ...process.env, LOOM_CI: 'true', CI: 'true', LOOM_RUN_ID: runId, LOOM_PIPELINE_ID: pipelineId, LOOM_COMMIT_SHA: ws.headSha, CI_COMMIT_SHA: ws.headSha, ...wf.variables };
  const selected = wf.jobs.filter((j) => o.jobs.length === 0 || o.jobs.includes(j.name));
  const results: JobResult[] = [];
  let runError: string | undefined;
  const skippedByRules = !workflowRuns(wf.rules, ruleVars);

  const runJob = async (job: JobSpec): Promise<JobResult> => {
    const jobId = job.name;
    const jobDir = join(logsDir, 'jobs', jobId);
    const jobEvents = join(jobDir, 'events.jsonl');
    const execEvents = join(jobDir, 'user', 'execution', 'events.jsonl');
    const artifactsDir = join(jobDir, 'artifacts');
    await mkdir(artifactsDir, { recursive: true });
    const sysPath = (section: string) => join(jobDir, 'system', section, 'events.jsonl');
    const sys = (section: string, phase: string, message: string, level: 'info' | 'warn' | 'error' = 'info') => {
      sink.emit([sysPath(section), jobEvents, runEvents], { stream: 'system', scope: 'job', phase_code: phase, phase_family: 'job', job_id: jobId, section, level, message });
      if (o.verbose && !o.quiet) o.err(redactor.redact(`[${jobId}] ${message}`));
    };
    const summaryPath = join(jobDir, 'summary.json');
    const manifestPath = join(jobDir, 'manifest.json');
    const t0 = Date.now();
    const jobStarted = now();
    const steps: { step: string; command: string; status: JobStatus; exit_code: number | null; summary_path: string; events_path: string }[] = [];
    const useContainer = job.image !== undefined;
    const projectDir = useContainer ? '/workspace' : ws.path;
    const providerName = useContainer ? 'docker' : 'host';
    const keyCtx: KeyContext = { job_name: job.name, job_id: jobId, run_id: runId, pipeline_id: pipelineId, head_sha: ws.headSha };
    let provider: JobProvider | undefined;
    let secretDir: string | undefined;
    let status: JobStatus = 'success';
    let exitCode = 0;
    let error: string | undefined;
    let failingStep: string | undefined;
    if (!o.quiet) o.err(`job ${jobId} (${job.stage}) started`);
    try {
      const env: Record<string, string> = {};
      await phases.run('job.provider_prepare', 'job', 'job', jobId, async () => {
        // Precedence: predefined < workflow (and default) < job < secrets.
        Object.assign(env, predefinedBase(job, jobId, providerName, projectDir), wf.variables, job.variables);
        const names = Object.keys(job.secrets);
        if (names.length && [env.LOOM_DEBUG_TRACE, env.CI_DEBUG_TRACE].includes('true')) {
          throw new SecretError('SECRETS_UNSAFE_DEBUG_TRACE', `job ${job.name} declares secrets and enables a debug trace (LOOM_DEBUG_TRACE/CI_DEBUG_TRACE); refusing to run`);
        }
        for (const name of names) {
          const s = job.secrets[name]!;
          let v: string | undefined;
          v = await resolveSecretRef(s.ref);
          if (v === undefined) {
            if (s.required) throw new SecretError('SECRETS_REF_NOT_FOUND', `secret ${name}: ${s.ref} was not found`);
            sys('provider', 'job.provider_prepare', `secret ${name}: ${s.ref} not found; not required, left unset`, 'warn');
            continue;
          }
          if (v === '' && s.required) throw new SecretError('SECRETS_REQUIRED_MISSING', `secret ${name}: ${s.ref} is empty`);
          redactor.add(name, v);
          if (s.file) {
            secretDir ??= await mkdtemp(join(tmpdir(), `loom-run-secrets-${runId}-`));
            const f = join(secretDir, name);
            await writeFile(f, v, { mode: 0o600 });
            // In a container the file is bound at the same path (see the container provider).
            env[name] = f;
          } else env[name] = v;
          sys('provider', 'job.provider_prepare', `secret ${name} resolved from ${s.ref}${s.file ? ' into a 0600 file' : ''}`);
        }
        if (useContainer) {
          if (!containerFactory) throw new JobFailure('the container provider is not available in this build');
          provider = containerFactory({ workspace: ws.path, image: job.image!, mount: o.mount, jobId, runId, ...(secretDir ? { secretDir } : {}) });
        } else {
          const base: Record<string, string> = {};
          for (const [k, v] of Object.entries(process.env)) if (v !== undefined) base[k] = v;
          provider = new HostProvider(ws.path, base);
        }
        await provider.prepare((m) => sys('provider', 'job.provider_prepare', m));
      });

      // cache_restore
      await phases.run('job.cache_restore', 'job', 'job', jobId, async () => {
        for (const c of job.cache) {
          if (c.disabled || c.policy === 'push') continue;
          const key = await cacheKey(c, ws.path, keyCtx);
          const keys = [key, ...c.fallback_keys.map((k) => sanitizeKey(expandTemplate(k, keyCtx)))];
          const hit = await restoreCache(ws.path, keys);
          sys('cache_restore', 'job.cache_restore', hit ? `cache ${c.name ?? key}: restored from key ${hit}${hit === key ? '' : ' (fallback)'}` : `cache ${c.name ?? key}: miss for key ${key}`);
        }
      });
      phases.mark('job.artifact_restore', 'job', 'job', jobId, 'skipped');

      // execution
      await phases.run('job.execution', 'job', 'job', jobId, async () => {
        for (let i = 0; i < job.script.length; i++) {
          const nn = String(i + 1).padStart(2, '0');
          const stepDir = join(jobDir, 'user', 'execution', 'script', nn);
          const stepEvents = join(stepDir, 'events.jsonl');
          const line = job.script[i]!;
          const stepStarted = now();
          const st0 = Date.now();
          const paths = [stepEvents, execEvents, jobEvents];
          sink.emit(paths, { stream: 'system', scope: 'step', phase_code: 'job.execution', phase_family: 'job', job_id: jobId, step: nn, message: `$ ${line}` });
          const filters = { stdout: new StreamRedactor(redactor), stderr: new StreamRedactor(redactor) };
          const splitters = { stdout: new LineSplitter(), stderr: new LineSplitter() };
          const emitLines = (stream: 'stdout' | 'stderr', text: string, final: boolean) => {
            const lines = [...splitters[stream].push(text), ...(final ? splitters[stream].end() : [])];
            for (const l of lines) {
              sink.emit(paths, { stream, scope: 'step', phase_code: 'job.execution', phase_family: 'job', job_id: jobId, step: nn, message: l });
              if (o.stream && !o.quiet) o.out(redactor.redact(`[${jobId}] ${l}`));
            }
          };
          const code = await provider!.runStep(line, env, (stream, chunk) => emitLines(stream, filters[stream].write(chunk), false));
          emitLines('stdout', filters.stdout.end(), true);
          emitLines('stderr', filters.stderr.end(), true);
          const ok = code === 0;
          sink.emit(paths, { stream: 'system', scope: 'step', phase_code: 'job.execution', phase_family: 'job', job_id: jobId, step: nn, message: `step ${nn} exited with ${code}`, exit_code: code });
          sink.json(join(stepDir, 'summary.json'), {
            schema_version: 'v1', run_id: runId, job_id: jobId, step: nn, command: line, status: ok ? 'success' : 'failure',
            exit_code: code, started_at: stepStarted, finished_at: now(), duration_ms: Date.now() - st0, events_path: stepEvents,
          });
          steps.push({ step: nn, command: line, status: ok ? 'success' : 'failure', exit_code: code, summary_path: join(stepDir, 'summary.json'), events_path: stepEvents });
          if (!ok) {
            failingStep = nn;
            throw new JobFailure(`step ${nn} (${line}) exited with ${code}`, code);
          }
        }
      });
    } catch (e) {
      status = 'failure';
      exitCode = e instanceof JobFailure ? e.exitCode : 1;
      error = e instanceof SecretError ? e.message : (e as Error).message;
      if (e instanceof SecretError || !failingStep) sys('provider', 'job.provider_prepare', `job failed: ${error}`, 'error');
      else sink.emit([jobEvents, runEvents], { stream: 'system', scope: 'job', phase_code: 'job.execution', phase_family: 'job', job_id: jobId, level: 'error', message: `job failed: ${error}` });
    }
    for (let i = steps.length; i < job.script.length; i++) {
      steps.push({ step: String(i + 1).padStart(2, '0'), command: job.script[i]!, status: 'skipped', exit_code: null, summary_path: '', events_path: '' });
    }

    // cache_save (on_success unless when: always), artifacts, cleanup — each best effort.
    try {
      await phases.run('job.cache_save', 'job', 'job', jobId, async () => {
        for (const c of job.cache) {
          if (c.disabled || c.policy === 'pull') continue;
          if (status !== 'success' && c.when !== 'always') { sys('cache_save', 'job.cache_save', `cache ${c.name ?? ''}: not saved (job failed, when: on_success)`); continue; }
          const key = await cacheKey(c, ws.path, keyCtx);
          const saved = await saveCache(ws.path, key, c.paths);
          sys('cache_save', 'job.cache_save', saved ? `cache ${c.name ?? key}: saved under key ${key}` : `cache ${c.name ?? key}: none of ${c.paths.join(', ')} exist; nothing saved`);
        }
      });
    } catch (e) {
      sys('cache_save', 'job.cache_save', `cache save failed: ${(e as Error).message}`, 'warn');
    }
    try {
      await phases.run('job.artifact_extract', 'job', 'job', jobId, async () => {
        for (const p of job.artifacts.paths) {
          const src = join(ws.path, p);
          if (!existsSync(src)) { sys('artifact_extract', 'job.artifact_extract', `artifact ${p}: not found`, 'warn'); continue; }
          await cp(src, join(artifactsDir, p), { recursive: true, verbatimSymlinks: true });
          sys('artifact_extract', 'job.artifact_extract', `artifact ${p}: copied to ${join(artifactsDir, p)}`);
        }
      });
    } catch (e) {
      sys('artifact_extract', 'job.artifact_extract', `artifact extraction failed: ${(e as Error).message}`, 'warn');
    }
    await phases.run('job.cleanup', 'job', 'job', jobId, async () => {
      try {
        await provider?.cleanup((m) => sys('cleanup', 'job.cleanup', m));
      } catch (e) {
        sys('cleanup', 'job.cleanup', `provider cleanup failed: ${(e as Error).message}`, 'warn');
      }
      if (secretDir) await rm(secretDir, { recursive: true, force: true });
      sys('cleanup', 'job.cleanup', 'cleanup done');
    }).catch(() => undefined);

    const failing = failingStep ? steps.find((s) => s.step === failingStep) : undefined;
    sink.json(summaryPath, {
      schema_version: 'v1', run_id: runId, pipeline_id: pipelineId, job_id: jobId, job_name: job.name, stage: job.stage,
      provider: providerName, image: job.image ?? null, status, exit_code: exitCode, ...(error ? { error } : {}),
      started_at: jobStarted, finished_at: now(), duration_ms: Date.now() - t0,
    });
    const sections = ['provider', 'services', 'image_build', 'cache_restore', 'cache_save', 'artifact_extract', 'cleanup'];
    sink.json(manifestPath, {
      schema_version: 'v1', run_id: runId, job_id: jobId, job_name: job.name, stage: job.stage, status, exit_code: exitCode,
      ...(error ? { error } : {}),
      summary_path: summaryPath, events_path: jobEvents, execution_events_path: execEvents, artifacts_dir: artifactsDir,
      steps,
      system: Object.fromEntries(sections.filter((s) => existsSync(sysPath(s))).map((s) => [s, sysPath(s)])),
      failing_step: failing?.step ?? null,
      failing_step_summary_path: failing?.summary_path ?? null,
      failing_step_events_path: failing?.events_path ?? null,
    });
    if (!o.quiet) o.err(`job ${jobId} ${status === 'success' ? 'passed' : `failed${error ? `: ${redactor.redact(error)}` : ''}`}`);
    return { job, jobId, status, exitCode, ...(error ? { error } : {}), summaryPath, manifestPath };
  };

  if (skippedByRules) {
    emitRun('pipeline.execute', 'pipeline', 'workflow.rules excluded this pipeline; no job runs');
    phases.mark('pipeline.execute', 'pipeline', 'pipeline', undefined, 'skipped');
    if (!o.quiet) o.err('pipeline skipped by workflow.rules');
  } else {
    await phases.run('pipeline.execute', 'pipeline', 'pipeline', undefined, async () => {
      let failed = false;
      const limit = Math.max(1, availableParallelism());
      for (const stage of wf.stages) {
        const jobs = selected.filter((j) => j.stage === stage);
        if (jobs.length === 0) continue;
        if (failed) {
          for (const j of jobs) {
            results.push({ job: j, jobId: j.name, status: 'skipped', exitCode: 0, summaryPath: '', manifestPath: '' });
            phases.mark('job.execution', 'job', 'job', j.name, 'skipped');
          }
          emitRun('pipeline.execute', 'pipeline', `stage ${stage} skipped: an earlier stage failed`);
          continue;
        }
        emitRun('pipeline.execute', 'pipeline', `stage ${stage}: ${jobs.map((j) => j.name).join(', ')}`);
        const stageResults: JobResult[] = [];
        await pool(jobs, limit, async (j) => void stageResults.push(await runJob(j)));
        stageResults.sort((a, b) => jobs.indexOf(a.job) - jobs.indexOf(b.job));
        results.push(...stageResults);
        if (stageResults.some((r) => r.status === 'failure')) {
          failed = true;
          emitRun('pipeline.execute', 'pipeline', `stage ${stage} failed`);
        } else emitRun('pipeline.execute', 'pipeline', `stage ${stage} passed`);
      }
      if (failed) throw new Error('a job failed');
    }).catch((e: Error) => {
      runError = e.message;
    });
  }

  const firstFail = results.find((r) => r.status === 'failure');
  const status = firstFail ? 'failure' : 'success';
  const exitCode = firstFail ? EXIT.jobFailed : EXIT.success;
  if (firstFail) runError = `job ${firstFail.jobId} failed${firstFail.error ? `: ${firstFail.error}` : ''}`;

  const pipeSummary = join(pipeDir, 'summary.json');
  const pipeManifest = join(pipeDir, 'manifest.json');
  sink.json(pipeSummary, {
    schema_version: 'v1', run_id: runId, pipeline_id: pipelineId, status: skippedByRules ? 'skipped' : status, exit_code: exitCode,
    jobs: Object.fromEntries(results.map((r) => [r.jobId, r.status])),
  });
  sink.json(pipeManifest, {
    schema_version: 'v1', run_id: runId, pipeline_id: pipelineId, stages: wf.stages,
    jobs: results.map((r) => ({ job_id: r.jobId, job_name: r.job.name, stage: r.job.stage, status: r.status, exit_code: r.exitCode, summary_path: r.summaryPath || null, manifest_path: r.manifestPath || null })),
    failing_job_id: firstFail?.jobId ?? null,
    failing_job_manifest_path: firstFail?.manifestPath ?? null,
  });
  const phaseReport = join(logsDir, 'phase-report.json');
  sink.json(phaseReport, { schema_version: 'v1', run_id: runId, phases: phases.records });
  emitRun('run.finish', 'run', `run ${status}`);
  sink.json(join(logsDir, 'summary.json'), {
    schema_version: 'v1', kind: 'loom-run-local-logs', run_id: runId, pipeline_id: pipelineId, status, exit_code: exitCode,
    events_jsonl_path: runEvents, phase_report_path: phaseReport, pipeline_summary_path: pipeSummary, pipeline_manifest_path: pipeManifest,
    failing_job_id: firstFail?.jobId ?? null, failing_job_manifest_path: firstFail?.manifestPath ?? null,
  });
  const receiptPath = join(receiptsDir, `loom-run-local-${runId}.json`);
  sink.json(receiptPath, {
    schema_version: 'v1', kind: 'loom-run-local', command: o.argv, repo_root: repoRoot, workflow_path: workflowAbs,
    started_at: startedAt, finished_at: now(), duration_ms: Date.now() - started, status, exit_code: exitCode,
    ...(runError ? { error: runError } : {}),
    logs_dir: logsDir, events_jsonl_path: runEvents, phase_report_path: phaseReport,
    snapshot_path: ws.path, snapshot_head_sha: ws.headSha,
  });
  sink.close();
  if (firstFail && !o.quiet) {
    o.err(`failing job: ${firstFail.jobId} — manifest: ${firstFail.manifestPath}`);
  }
  if (o.quiet) o.out(`status: ${status}`);
  o.out(`receipt: ${resolve(receiptPath)}`);
  return exitCode;
}
