/** The bytes a StreamWriter produces for `write` (hand-built stream bodies in the wire and RAM tests). */
import { MemorySink, StreamWriter } from '../../src/wire/index.js';

export async function written(write: (out: StreamWriter) => void): Promise<Uint8Array> {
  const sink = new MemorySink();
  const out = new StreamWriter(sink);
  write(out);
  await out.flush();
  return sink.bytes();
}
