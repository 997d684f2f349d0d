import type { Logger } from '../common/log.js';
import type { BranchingService } from './service.js';

/** Collects expired unpinned snapshots every intervalSecs (config.branching.gcIntervalSecs). */
export class SnapshotGc {
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly svc: BranchingService,
    private readonly intervalSecs: number,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.stop();
    this.timer = setInterval(() => this.runOnce(), this.intervalSecs * 1000);
    this.timer.unref();
  }

  runOnce(): string[] {
    try {
      return this.svc.collectGarbage();
    } catch (e) {
      this.log.error({ err: e }, 'branching: snapshot GC failed');
      return [];
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
