/** Address classes that a request made on a user's behalf must not reach unless the operator allows them. */
import { BlockList, isIP } from 'node:net';

const INTERNAL_V4: [string, number, string][] = [
  ['0.0.0.0', 8, 'unspecified'], ['10.0.0.0', 8, 'private'], ['100.64.0.0', 10, 'CGNAT'], ['127.0.0.0', 8, 'loopback'],
  ['169.254.0.0', 16, 'link-local or metadata'], ['172.16.0.0', 12, 'private'], ['192.0.0.0', 24, 'reserved'], ['192.0.2.0', 24, 'documentation'],
  ['192.168.0.0', 16, 'private'], ['198.18.0.0', 15, 'benchmarking'], ['198.51.100.0', 24, 'documentation'], ['203.0.113.0', 24, 'documentation'],
  ['224.0.0.0', 4, 'multicast'], ['240.0.0.0', 4, 'reserved'],
];
const INTERNAL_V6: [string, number, string][] = [
  ['::', 128, 'unspecified'], ['::1', 128, 'loopback'], ['::ffff:0:0', 96, 'IPv4-mapped'], ['64:ff9b::', 96, 'NAT64'], ['100::', 64, 'discard'],
  ['2001:db8::', 32, 'documentation'], ['fc00::', 7, 'ULA (includes fd00:ec2::254 metadata)'], ['fe80::', 10, 'link-local'], ['ff00::', 8, 'multicast'],
];

/** The class of an internal address ("loopback", "private", …), or null for a public one. */
export function internalClass(ip: string): string | null {
  const fam = isIP(ip);
  if (fam === 0) return 'not an IP address';
  for (const [net, prefix, what] of fam === 4 ? INTERNAL_V4 : INTERNAL_V6) {
    const b = new BlockList();
    b.addSubnet(net, prefix, fam === 4 ? 'ipv4' : 'ipv6');
    if (b.check(ip, fam === 4 ? 'ipv4' : 'ipv6')) return what;
  }
  return null;
}

/** "10.0.0.0/8" | "fd00::/8" | "127.0.0.1" → a BlockList of them; throws naming a bad entry. */
export function parseCidrs(list: readonly string[]): BlockList {
  const b = new BlockList();
  for (const raw of list) {
    const [addr, len, extra] = raw.trim().split('/');
    const fam = isIP(addr ?? '');
    const max = fam === 4 ? 32 : 128;
    const prefix = len === undefined ? max : Number(len);
    if (fam === 0 || extra !== undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > max || (len !== undefined && !/^\d+$/.test(len))) {
      throw new Error(`${JSON.stringify(raw)} is not an address or CIDR such as 10.0.0.0/8`);
    }
    b.addSubnet(addr!, prefix, fam === 4 ? 'ipv4' : 'ipv6');
  }
  return b;
}

export function inList(list: BlockList, ip: string): boolean {
  const fam = isIP(ip);
  return fam !== 0 && list.check(ip, fam === 4 ? 'ipv4' : 'ipv6');
}
