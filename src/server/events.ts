import { EventEmitter } from 'node:events';

/**
 * Changes to credentials and memberships, emitted by the token and org services the moment they
 * are written. Long-lived streams (src/server/streams.ts) listen here to close at once.
 */
export interface AccessEventMap {
  /** A token was revoked, logged out or found expired. */
  token_revoked: [{ tokenId: string; userId: string | null }];
  /** A user's membership of an org changed: removed, or role changed. */
  membership_changed: [{ orgId: string; userId: string }];
  /** An org and every membership of it are gone. */
  org_deleted: [{ orgId: string }];
}

export class AccessEvents extends EventEmitter<AccessEventMap> {
  constructor() {
    super();
    // One listener per stream registry; many servers in one test process are fine.
    this.setMaxListeners(0);
  }
}
