/** The client end of the relay: DERP frames over a WebSocket with subprotocol `derp` (see ../derp.ts). */
import { EventEmitter } from 'node:events';
import WebSocket from 'ws';
import { DerpError, FrameType, SUBPROTOCOL, clientInfoFrame, decode, encode, keyed, parseServerKey } from '../derp.js';
import { publicKeyFor } from '../keys.js';

export interface DerpClientOptions {
  url: string;
  token: string;
  privateKey: Buffer;
}

/** Events: 'ready' (), 'packet' (src: Buffer, packet: Buffer), 'pong' (data: Buffer), 'close' (code: number, reason: string). */
export class DerpClient extends EventEmitter {
  private ws: WebSocket;
  private ready = false;
  private readonly publicKey: Buffer;

  constructor(private readonly o: DerpClientOptions) {
    super();
    this.publicKey = publicKeyFor(o.privateKey);
    this.ws = new WebSocket(o.url, [SUBPROTOCOL], { headers: { authorization: `Bearer ${o.token}` } });
    this.ws.binaryType = 'nodebuffer';
    this.ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) return;
      let frames;
      try {
        frames = decode(data);
      } catch (e) {
        this.ws.close(4400, (e as DerpError).message);
        return;
      }
      for (const f of frames) this.onFrame(f.type, f.payload);
    });
    this.ws.on('close', (code, reason) => {
      this.ready = false;
      this.emit('close', code, reason.toString());
    });
    this.ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => {
        let msg = `relay refused: HTTP ${res.statusCode}`;
        try {
          msg = (JSON.parse(body) as { error: { message: string } }).error.message;
        } catch {
          /* not JSON */
        }
        this.emit('close', res.statusCode ?? 0, msg);
      });
    });
    this.ws.on('error', (e) => this.emit('close', 1006, e.message));
  }

  get isReady(): boolean {
    return this.ready;
  }

  private onFrame(type: number, payload: Buffer): void {
    switch (type) {
      case FrameType.ServerKey: {
        const serverKey = parseServerKey(payload);
        this.ws.send(clientInfoFrame(this.o.privateKey, this.publicKey, serverKey, { version: 2 }));
        break;
      }
      case FrameType.ServerInfo:
        this.ready = true;
        this.emit('ready');
        break;
      case FrameType.RecvPacket:
        if (payload.length >= 32) this.emit('packet', Buffer.from(payload.subarray(0, 32)), Buffer.from(payload.subarray(32)));
        break;
      case FrameType.Pong:
        this.emit('pong', Buffer.from(payload));
        break;
      default:
        break;
    }
  }

  send(dst: Buffer, packet: Buffer): void {
    if (this.ready && this.ws.readyState === WebSocket.OPEN) this.ws.send(keyed(FrameType.SendPacket, dst, packet));
  }

  ping(data: Buffer): void {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(encode(FrameType.Ping, data));
  }

  close(): void {
    this.ws.close(1000);
  }
}
