import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export class WeaverMetrics {
  readonly active: Gauge;
  readonly created: Counter;
  readonly deleted: Counter;
  readonly failed: Counter;
  readonly expired: Counter;
  readonly createToRunning: Histogram;

  constructor(registry: Registry, countActive: () => number) {
    this.active = new Gauge({
      name: 'loom_weavers_active',
      help: 'Weavers pending or running',
      registers: [registry],
      collect() {
        this.set(countActive());
      },
    });
    this.created = new Counter({ name: 'loom_weavers_created_total', help: 'Weavers created', registers: [registry] });
    this.deleted = new Counter({ name: 'loom_weavers_deleted_total', help: 'Weavers deleted (by a user or on expiry)', registers: [registry] });
    this.failed = new Counter({ name: 'loom_weavers_failed_total', help: 'Weavers that ended failed', registers: [registry] });
    this.expired = new Counter({ name: 'loom_weavers_expired_total', help: 'Weavers deleted because their lifetime ended', registers: [registry] });
    this.createToRunning = new Histogram({
      name: 'loom_weaver_create_to_running_seconds',
      help: 'Time from POST /api/weaver to the weaver running',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers: [registry],
    });
  }
}
