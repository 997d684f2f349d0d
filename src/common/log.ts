import { pino, type Logger as PinoLogger } from 'pino';

/** One JSON object a line (level, time, msg, and reqId inside requests), fit for journald. */
export type Logger = PinoLogger;

export function createLogger(level: string, destination: NodeJS.WritableStream = process.stdout): Logger {
  return pino(
    {
      level,
      base: { svc: 'loom-server' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    pino.destination({ dest: (destination as { fd?: number }).fd ?? 1, sync: true }),
  );
}
