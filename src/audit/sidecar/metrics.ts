/** The sidecar's Prometheus metrics, named as the product's (design/audit.md). */
import { Counter, Gauge, Registry } from 'prom-client';

export class SidecarMetrics {
  readonly registry = new Registry();
  readonly captured = new Counter({ name: 'loom_weaver_audit_events_captured_total', help: 'events read from the kernel ring buffer (and gap events made from kernel losses)', labelNames: ['type'], registers: [this.registry] });
  readonly sent = new Counter({ name: 'loom_weaver_audit_events_sent_total', help: 'events the server accepted', registers: [this.registry] });
  readonly buffered = new Counter({ name: 'loom_weaver_audit_events_buffered_total', help: 'events written to the on-disk buffer while the server was unreachable', registers: [this.registry] });
  readonly dropped = new Counter({ name: 'loom_weaver_audit_events_dropped_total', help: 'events lost, by stage and reason', labelNames: ['stage', 'reason'], registers: [this.registry] });
  readonly batches = new Counter({ name: 'loom_weaver_audit_batches_sent_total', help: 'batches sent to the server, by outcome', labelNames: ['outcome'], registers: [this.registry] });
  readonly bufferBytes = new Gauge({ name: 'loom_weaver_audit_buffer_bytes', help: 'bytes in the on-disk buffer', registers: [this.registry] });
  readonly bufferEvents = new Gauge({ name: 'loom_weaver_audit_buffer_events', help: 'events in the on-disk buffer', registers: [this.registry] });
  readonly bufferOldestAge = new Gauge({ name: 'loom_weaver_audit_buffer_oldest_event_age_seconds', help: 'age of the oldest buffered event', registers: [this.registry] });
  readonly programsAttached = new Gauge({ name: 'loom_weaver_audit_ebpf_programs_attached', help: '1 for each attached BPF program', labelNames: ['program'], registers: [this.registry] });
  readonly hookFamily = new Gauge({ name: 'loom_weaver_audit_ebpf_hook_family', help: '1 for the hook family the load probe chose (fentry where the kernel allows it, else tracepoint)', labelNames: ['family'], registers: [this.registry] });
  readonly ringDropped = new Counter({ name: 'loom_weaver_audit_ebpf_ring_buffer_dropped_events_total', help: 'events the kernel could not write to the ring buffer (per-CPU loss counters)', registers: [this.registry] });
  readonly ringUtilization = new Gauge({ name: 'loom_weaver_audit_ebpf_ring_buffer_utilization_ratio', help: 'unconsumed share of the ring buffer', registers: [this.registry] });
}
