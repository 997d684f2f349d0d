/**
 * A path probe: one byte that is no WireGuard message type, then 16 random bytes. The gateway
 * echoes it unchanged (same size: nothing to amplify), so a client on the relay learns that UDP
 * gets through again without involving WireGuard.
 */
export const PROBE_TYPE = 0x4c;
export const PROBE_LEN = 17;
