/**
 * The relay: DERP frames over a WebSocket (subprotocol `derp`) at GET /api/wg/relay?session=ID,
 * for clients whose UDP cannot reach the gateway. A connection belongs to one session: the
 * caller's token, the 'exec' right on the session's weaver (checked now and for as long as it is
 * open, like any stream), and the session's device key, proven by ClientInfo's box. SendPacket to
 * the weaver's key goes through the same gateway routing as UDP (same forwarder, same endpoint);
 * RecvPacket carries the answers. The connection dies with the session (device revoked, weaver
 * deleted, session closed), the token, or the membership.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { randomUUID } from 'node:crypto';
import nacl from 'tweetnacl';
import { Type } from '@sinclair/typebox';
import { Strict } from '../server/http/schema.js';
import type { AppContext } from '../server/context.js';
import { authenticate, bearerToken, principal } from '../server/http/auth.js';
import { WS_CLOSE_CODES } from '../server/streams.js';
import type { Resource } from '../server/orgs/access.js';
import type { Gateway } from './local/gateway.js';
import type { TunnelService } from './service.js';
import { DerpError, FrameType, SUBPROTOCOL, decode, encode, keyed, openClientInfo, serverKeyFrame } from './derp.js';

const KEEPALIVE_MS = 60_000;

export interface RelayTarget {
  sessionId: string;
  weaverId: string;
  resource: Resource;
  deviceKey: Buffer;
  weaverKey: Buffer;
}

export async function registerRelay(app: FastifyInstance, ctx: AppContext, svc: () => TunnelService, gateway: Gateway): Promise<void> {
  const keys = nacl.box.keyPair();
  const serverKey = Buffer.from(keys.publicKey);
  const targets = new WeakMap<FastifyRequest, RelayTarget>();
  app.get(
    '/api/wg/relay',
    {
      websocket: true,
      schema: { querystring: Type.Object({ session: Type.String({ minLength: 1, maxLength: 64 }) }, Strict) },
      preValidation: async (req) => {
        req.principal = authenticate(ctx, bearerToken(req));
        const p = req.principal;
        targets.set(req, svc().relayTarget({ user: p.user, tokenId: p.token.id }, (req.query as { session: string }).session));
      },
    },
    async (socket: WebSocket, req: FastifyRequest) => {
      const target = targets.get(req)!;
      const pr = principal(req);
      if (socket.protocol !== SUBPROTOCOL) {
        socket.close(4400, `subprotocol must be ${SUBPROTOCOL}`);
        return;
      }
      const conn = `relay:${randomUUID()}`;
      let ready = false;
      let closed = false;
      const close = (code: number, why: string) => {
        if (closed) return;
        closed = true;
        if (socket.readyState === socket.OPEN || socket.readyState === socket.CONNECTING) socket.close(code, why.slice(0, 120));
      };
      const send = (frame: Buffer) => {
        if (socket.readyState === socket.OPEN) socket.send(frame);
      };
      const unregister = ctx.streams.register({ close: (why) => close(WS_CLOSE_CODES[why.code], why.code) }, { tokenId: pr.token.id, userId: pr.user.id, need: { action: 'exec', resource: target.resource } });
      const unwatch = svc().onSessionEnded(target.sessionId, () => close(4410, 'session_ended'));
      const keepalive = setInterval(() => send(encode(FrameType.KeepAlive)), KEEPALIVE_MS);
      keepalive.unref();
      socket.on('close', () => {
        closed = true;
        clearInterval(keepalive);
        unregister();
        unwatch();
        gateway.forget(conn);
      });
      socket.on('message', (data: Buffer, isBinary: boolean) => {
        if (closed) return;
        if (!isBinary) return close(4400, 'DERP frames are binary messages');
        let frames;
        try {
          frames = decode(data);
        } catch (e) {
          return close(4400, (e as DerpError).message);
        }
        for (const f of frames) {
          if (!ready) {
            if (f.type !== FrameType.ClientInfo) return close(4400, 'the first frame must be ClientInfo');
            const opened = openClientInfo(f.payload, Buffer.from(keys.secretKey));
            if (!opened || !opened.clientKey.equals(target.deviceKey)) return close(4403, "ClientInfo does not prove the session device's key");
            ready = true;
            const nonce = nacl.randomBytes(24);
            send(encode(FrameType.ServerInfo, Buffer.concat([nonce, nacl.box(Buffer.from('{"version":2}'), nonce, opened.clientKey, keys.secretKey)])));
            continue;
          }
          switch (f.type) {
            case FrameType.SendPacket: {
              if (f.payload.length < 32) return close(4400, 'SendPacket without a destination key');
              const dst = f.payload.subarray(0, 32);
              if (!dst.equals(target.weaverKey)) {
                send(encode(FrameType.PeerGone, Buffer.from(dst)));
                break;
              }
              gateway.route(conn, Buffer.from(f.payload.subarray(32)), (d) => send(keyed(FrameType.RecvPacket, target.weaverKey, d)), target.weaverId);
              break;
            }
            case FrameType.Ping:
              send(encode(FrameType.Pong, Buffer.from(f.payload.subarray(0, 8))));
              break;
            default:
              break; // frames this relay has no use for (NotePreferred, WatchConns, …) are ignored, as DERP servers do
          }
        }
      });
      send(serverKeyFrame(serverKey));
    },
  );
}
