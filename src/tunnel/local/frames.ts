/** Framing between the gateway and its forwarder inside a weaver namespace: u32 client id, u16 length, datagram. */
export function frame(id: number, datagram: Buffer): Buffer {
  const h = Buffer.allocUnsafe(6);
  h.writeUInt32BE(id, 0);
  h.writeUInt16BE(datagram.length, 4);
  return Buffer.concat([h, datagram]);
}

/** Feeds a byte stream, calls back once per whole frame. */
export function deframer(onFrame: (id: number, datagram: Buffer) => void): (chunk: Buffer) => void {
  let buf: Buffer = Buffer.alloc(0);
  return (chunk) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
    while (buf.length >= 6) {
      const len = buf.readUInt16BE(4);
      if (buf.length < 6 + len) break;
      onFrame(buf.readUInt32BE(0), Buffer.from(buf.subarray(6, 6 + len)));
      buf = buf.subarray(6 + len);
    }
  };
}
