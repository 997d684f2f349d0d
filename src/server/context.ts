import type { Config } from './config/load.js';
import type { Db } from './store/db.js';
import type { Logger } from '../common/log.js';
import type { Metrics } from './metrics.js';
import type { UserService } from './auth/users.js';
import type { TokenService } from './auth/tokens.js';
import type { DeviceFlow } from './auth/device.js';
import type { OrgService } from './orgs/orgs.js';
import type { StreamRegistry } from './streams.js';
import type { LoginLimiter } from './auth/login-limit.js';

/** What every route plugin may use. Built once at start (see server.ts). */
export interface AppContext {
  config: Config;
  db: Db;
  log: Logger;
  metrics: Metrics;
  users: UserService;
  tokens: TokenService;
  device: DeviceFlow;
  orgs: OrgService;
  /** Open attach/log/… streams, closed when the credential or membership that opened them goes. */
  streams: StreamRegistry;
  /** Failed sign-in counting (per account and per address) for /device/login and token routes. */
  loginLimiter: LoginLimiter;
  /** Components report their state into /health (database, weaver backend, …). */
  /** The URL users reach the server at (LOOM_PUBLIC_URL, else the bound address); set once listening. */
  baseUrl: string;
  healthChecks: Map<string, () => Promise<{ ok: boolean; detail: string }>>;
}
