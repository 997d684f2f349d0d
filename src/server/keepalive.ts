import type { WebSocket } from 'ws';

/**
 * WebSocket keepalive: a ping every `intervalMs`; a peer that has not answered the previous ping
 * by the time the next one is due is dead (a closed laptop, a NAT that forgot the flow) and its
 * socket is terminated, which fires 'close' and frees whatever the stream held. Returns the stop
 * function. Any frame from the peer counts as an answer, not only a pong.
 */
export function keepWebSocketAlive(ws: WebSocket, intervalMs: number): () => void {
  let answered = true;
  const alive = () => {
    answered = true;
  };
  ws.on('pong', alive);
  ws.on('message', alive);
  const timer = setInterval(() => {
    if (ws.readyState !== ws.OPEN) return;
    if (!answered) {
      ws.terminate();
      return;
    }
    answered = false;
    ws.ping();
  }, intervalMs);
  timer.unref();
  const stop = () => {
    clearInterval(timer);
    ws.off('pong', alive);
    ws.off('message', alive);
  };
  ws.once('close', stop);
  return stop;
}
