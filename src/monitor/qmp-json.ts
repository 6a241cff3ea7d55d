/**
 * JSON for QMP replies and events: JSON.stringify, except that integers
 * beyond 2^53 print in full. QMP's sizes are uint64; a parameter set near
 * the top of that range (libvirt sets max-bandwidth 9223372036853727232, its
 * "unlimited") must read back as the same digits, as QEMU prints it, while
 * JSON.stringify prints the shortest decimal of the double (…727000), which a
 * C client parses as another integer. The doubles we store are exact (QAPI
 * visiting keeps them on multiples of 2048 up there), so BigInt(n) spells
 * them exactly; bigint values print as integers too.
 *
 * Everything else is JSON.stringify's: key order, undefined members left
 * out, toJSON() honoured, non-finite numbers as null.
 */
export function qmpJson(value: unknown): string {
  return write(value, '') ?? 'null';
}

function write(value: unknown, key: string): string | undefined {
  if (value !== null && typeof value === 'object' && typeof (value as { toJSON?: unknown }).toJSON === 'function') {
    value = (value as { toJSON(key: string): unknown }).toJSON(key);
  }
  switch (typeof value) {
    case 'number':
      return Number.isInteger(value) && Math.abs(value) > Number.MAX_SAFE_INTEGER ? BigInt(value).toString() : JSON.stringify(value);
    case 'bigint':
      return value.toString();
    case 'object': {
      if (value === null) return 'null';
      if (Array.isArray(value)) return `[${value.map((item, i) => write(item, String(i)) ?? 'null').join(',')}]`;
      const members: string[] = [];
      for (const [k, v] of Object.entries(value)) {
        const text = write(v, k);
        if (text !== undefined) members.push(`${JSON.stringify(k)}:${text}`);
      }
      return `{${members.join(',')}}`;
    }
    default:
      // strings, booleans; undefined, functions and symbols give undefined (left out, as JSON.stringify does)
      return JSON.stringify(value);
  }
}
