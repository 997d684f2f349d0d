import type { Command } from 'commander';
import { ApiClient } from './client.js';

export const DEFAULT_SERVER_URL = 'http://127.0.0.1:18090';

export interface Globals {
  serverUrl: string;
  json: boolean;
}

/** The root program's options, from any subcommand. */
export function globals(cmd: Command): Globals {
  let root = cmd;
  while (root.parent) root = root.parent;
  const o = root.opts<{ serverUrl?: string; json?: boolean }>();
  return { serverUrl: o.serverUrl ?? process.env['LOOM_SERVER_URL'] ?? DEFAULT_SERVER_URL, json: !!o.json || !!cmd.opts<{ json?: boolean }>().json };
}

export function client(cmd: Command): ApiClient {
  return new ApiClient({ serverUrl: globals(cmd).serverUrl });
}
