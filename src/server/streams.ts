/**
 * Every long-lived stream (attach WebSocket, following logs, and the streams later parts add) is
 * registered here with the credential and the access it was opened with. It is closed the moment
 * that credential is revoked, the session logged out, the membership removed or lowered below what
 * the stream needs, or the org deleted: the token and org services emit events (events.ts), and a
 * periodic re-check is the backstop for changes made by another process (e.g. `loom-server admin`)
 * or tokens that simply expired.
 */
import type { Logger } from '../common/log.js';
import type { AccessEvents } from './events.js';
import type { OrgService } from './orgs/orgs.js';
import type { TokenService } from './auth/tokens.js';
import { authorize, type Action, type Resource } from './orgs/access.js';
import { isLoomError } from '../common/errors.js';

/** What the registry needs of a stream: a way to end it with a reason the client can show. */
export interface LiveStream {
  close(reason: StreamCloseReason): void;
}

export interface StreamCloseReason {
  /** `credential_revoked` (token gone or expired) or `access_revoked` (membership or role). */
  code: 'credential_revoked' | 'access_revoked';
  message: string;
}

export interface StreamGrant {
  /** The token that opened the stream (for ticket-opened streams, the token that issued the ticket). */
  tokenId: string;
  userId: string;
  /** The access the stream needs for as long as it is open (re-checked with authorize). */
  need: { action: Action; resource: Resource };
}

interface Entry extends StreamGrant {
  stream: LiveStream;
  closed: boolean;
}

/** WebSocket close codes for the reasons above (4000–4999 are free for applications). */
export const WS_CLOSE_CODES: Record<StreamCloseReason['code'], number> = { credential_revoked: 4401, access_revoked: 4403 };

export class StreamRegistry {
  private readonly entries = new Set<Entry>();
  private timer: NodeJS.Timeout | null = null;
  private readonly unsubscribe: (() => void)[] = [];

  constructor(private readonly d: { tokens: TokenService; orgs: OrgService; events: AccessEvents; log: Logger; recheckMs: number }) {
    const onToken = ({ tokenId }: { tokenId: string }) => {
      for (const e of this.entries) if (e.tokenId === tokenId) this.end(e, { code: 'credential_revoked', message: 'the token that opened this stream was revoked' });
    };
    const onMember = ({ orgId, userId }: { orgId: string; userId: string }) => {
      for (const e of this.entries) if (e.userId === userId && e.need.resource.orgId === orgId) this.recheck(e);
    };
    const onOrg = ({ orgId }: { orgId: string }) => {
      for (const e of this.entries) if (e.need.resource.orgId === orgId) this.end(e, { code: 'access_revoked', message: 'the org was deleted' });
    };
    d.events.on('token_revoked', onToken);
    d.events.on('membership_changed', onMember);
    d.events.on('org_deleted', onOrg);
    this.unsubscribe.push(
      () => d.events.off('token_revoked', onToken),
      () => d.events.off('membership_changed', onMember),
      () => d.events.off('org_deleted', onOrg),
    );
  }

  /** Starts the periodic backstop re-check. */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.recheckAll(), this.d.recheckMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const u of this.unsubscribe.splice(0)) u();
  }

  /** How many streams are open (for metrics and tests). */
  get size(): number {
    return this.entries.size;
  }

  /**
   * Registers an open stream; returns the function to call when it ends on its own. The grant is
   * checked once now, so a credential revoked between the request and the upgrade never streams.
   */
  register(stream: LiveStream, grant: StreamGrant): () => void {
    const e: Entry = { ...grant, stream, closed: false };
    this.entries.add(e);
    this.recheck(e);
    return () => {
      e.closed = true;
      this.entries.delete(e);
    };
  }

  /** Re-checks every open stream now (the periodic backstop; also callable by tests and admin paths). */
  recheckAll(): void {
    for (const e of this.entries) this.recheck(e);
  }

  private recheck(e: Entry): void {
    if (e.closed) return;
    if (!this.d.tokens.isLive(e.tokenId)) return this.end(e, { code: 'credential_revoked', message: 'the token that opened this stream was revoked or expired' });
    try {
      authorize(this.d.orgs, { id: e.userId }, e.need.action, e.need.resource);
    } catch (err) {
      if (!isLoomError(err)) throw err;
      this.end(e, { code: 'access_revoked', message: `access to this ${e.need.resource.kind} was withdrawn` });
    }
  }

  private end(e: Entry, reason: StreamCloseReason): void {
    if (e.closed) return;
    e.closed = true;
    this.entries.delete(e);
    this.d.log.info({ user: e.userId, resource: e.need.resource.id, kind: e.need.resource.kind, reason: reason.code }, 'stream closed: access withdrawn');
    try {
      e.stream.close(reason);
    } catch (err) {
      this.d.log.warn({ err }, 'closing a stream failed');
    }
  }
}
