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
    this.timer = setInterval(() => void this.runOnce(), this.intervalSecs * 1000);
    this.timer.unref();
  }

  private running = false;

  /** One pass; a pass still running when the next is due is not overlapped. */
  async runOnce(): Promise<string[]> {
    if (this.running) return [];
    this.running = true;
    try {
      return await this.svc.collectGarbage();
    } catch (e) {
      this.log.error({ err: e }, 'branching: snapshot GC failed');
      return [];
    } finally {
      this.running = false;
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
