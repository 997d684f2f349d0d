/**
 * Addresses come from one IPv6 ULA /48 per installation (RFC 4193: fd00::/8 + 40 random bits),
 * generated once and stored. Each weaver gets a /64 (a 16-bit subnet id); the weaver is ::1 in it
 * and each session's client ::<host>.
 */
import { randomBytes } from 'node:crypto';

export function newUlaPrefix(): string {
  const r = randomBytes(5);
  const g = (i: number) => ((r[i]! << 8) | r[i + 1]!).toString(16);
  return `fd${r[0]!.toString(16).padStart(2, '0')}:${g(1)}:${g(3)}::/48`;
}

/** The /48's first three groups, e.g. "fd12:3456:789a". */
function groups(prefix: string): string {
  const m = /^(fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4})::\/48$/.exec(prefix);
  if (!m) throw new Error(`stored ULA prefix ${prefix} is malformed`);
  return m[1]!;
}

export function subnetOf(prefix: string, subnet: number): string {
  return `${groups(prefix)}:${subnet.toString(16)}::/64`;
}

export function addressOf(prefix: string, subnet: number, host: number): string {
  return `${groups(prefix)}:${subnet.toString(16)}::${host.toString(16)}`;
}
