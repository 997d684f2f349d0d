/**
 * The run's log tree (`.loom/.runtime/logs/<run_id>/…`): append-only JSONL event files and JSON
 * documents. Everything written passes through the run's Redactor.
 */
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync, renameSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Redactor } from './redact.js';

export type Stream = 'stdout' | 'stderr' | 'system';
export type PhaseFamily = 'run' | 'pipeline' | 'job';

export interface EventFields {
  stream: Stream;
  scope: string;
  phase_code: string;
  phase_family: PhaseFamily;
  job_id?: string;
  step?: string;
  section?: string;
  level?: 'info' | 'warn' | 'error';
  message: string;
  [k: string]: unknown;
}

export class EventFile {
  private fd: number;
  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.fd = openSync(path, 'a', 0o600);
  }
  write(line: string): void {
    writeSync(this.fd, line);
  }
  close(): void {
    closeSync(this.fd);
  }
}

export class LogSink {
  private files = new Map<string, EventFile>();
  constructor(readonly runId: string, readonly redactor: Redactor) {}
  file(path: string): EventFile {
    let f = this.files.get(path);
    if (!f) {
      f = new EventFile(path);
      this.files.set(path, f);
    }
    return f;
  }
  /** Writes one event (timestamped, redacted) to each of `paths`. */
  emit(paths: string[], ev: EventFields): void {
    const line = JSON.stringify(this.redactor.deep({ ts: new Date().toISOString(), run_id: this.runId, ...ev })) + '\n';
    for (const p of paths) this.file(p).write(line);
  }
  json(path: string, value: unknown): void {
    mkdirSync(dirname(path), { recursive: true });
    const tmp = `${path}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.redactor.deep(value), null, 2) + '\n', { mode: 0o644 });
    renameSync(tmp, path);
  }
  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
  }
}

export interface PhaseRecord {
  phase_code: string;
  phase_family: PhaseFamily;
  scope: string;
  job_id?: string;
  status: 'success' | 'failure' | 'skipped';
  started_at: string;
  finished_at: string;
  duration_ms: number;
  error?: string;
}
