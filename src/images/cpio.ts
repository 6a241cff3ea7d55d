/**
 * An initramfs writer: the cpio "newc" (SVR4, no CRC) format that the Linux
 * kernel unpacks at boot, optionally gzip-compressed with node:zlib.
 *
 * Each entry is a 110-byte ASCII header ("070701" and thirteen 8-digit hex
 * fields: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
 * rdevmajor, rdevminor, namesize, check), the NUL-terminated name padded to
 * a multiple of 4 bytes (header included), then the data padded the same
 * way. A symlink's data is its target. The archive ends with an entry named
 * "TRAILER!!!".
 *
 * The kernel does not create missing parent directories, so the writer adds
 * them (mode 0755) before the first entry that needs them. Output is
 * deterministic: fixed inode numbers, mtime 0 unless given, and gzip without
 * a timestamp, so the same inputs give the same bytes.
 */
import { gzipSync } from 'node:zlib';

export const CPIO_NEWC_MAGIC = '070701';
export const CPIO_TRAILER = 'TRAILER!!!';
const HEADER_SIZE = 110;

/** File-type bits of st_mode. */
export const S_IFMT = 0o170000;
export const S_IFREG = 0o100000;
export const S_IFDIR = 0o040000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;

interface EntryCommon {
  /** Path inside the archive: "bin/busybox" (a leading "/" is dropped). */
  path: string;
  /** Permission bits (0o7777); each type has a default. */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch; default 0. */
  mtime?: number;
}
export interface CpioFile extends EntryCommon {
  type: 'file';
  data: Uint8Array;
}
export interface CpioDirectory extends EntryCommon {
  type: 'directory';
}
export interface CpioSymlink extends EntryCommon {
  type: 'symlink';
  target: string;
}
export interface CpioDevice extends EntryCommon {
  type: 'char' | 'block';
  major: number;
  minor: number;
}
export type CpioEntry = CpioFile | CpioDirectory | CpioSymlink | CpioDevice;

const DEFAULT_MODE: Record<CpioEntry['type'], number> = { file: 0o644, directory: 0o755, symlink: 0o777, char: 0o600, block: 0o600 };
const TYPE_BITS: Record<CpioEntry['type'], number> = { file: S_IFREG, directory: S_IFDIR, symlink: S_IFLNK, char: S_IFCHR, block: S_IFBLK };

/** "/bin//busybox/" -> "bin/busybox"; rejects empty paths, "." and ".." components and NULs. */
export function normalizeCpioPath(path: string): string {
  if (path.includes('\0')) throw new Error(`cpio: path contains NUL: ${JSON.stringify(path)}`);
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.length === 0) throw new Error(`cpio: empty path: ${JSON.stringify(path)}`);
  if (parts.includes('..')) throw new Error(`cpio: path escapes the archive: ${JSON.stringify(path)}`);
  return parts.join('/');
}

function hex8(value: number, what: string, path: string): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new Error(`cpio: ${what} of ${JSON.stringify(path)} does not fit the newc header: ${value}`);
  }
  return value.toString(16).padStart(8, '0');
}

const pad4 = (n: number): number => (4 - (n % 4)) % 4;

/** Builds a newc archive incrementally; `finish()` returns the bytes. */
export class CpioWriter {
  readonly #chunks: Uint8Array[] = [];
  readonly #types = new Map<string, CpioEntry['type']>();
  #size = 0;
  #nextIno = 1;
  #finished = false;

  /** Adds an entry, after any missing parent directories. Paths must be unique. */
  add(entry: CpioEntry): this {
    if (this.#finished) throw new Error('cpio: archive already finished');
    const path = normalizeCpioPath(entry.path);
    if (this.#types.has(path)) throw new Error(`cpio: duplicate path ${JSON.stringify(path)}`);
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join('/');
      const type = this.#types.get(parent);
      if (type === undefined) this.#write({ type: 'directory', path: parent }, parent);
      else if (type !== 'directory') throw new Error(`cpio: ${JSON.stringify(parent)} is a ${type}, not a directory (needed by ${JSON.stringify(path)})`);
    }
    this.#write(entry, path);
    return this;
  }

  addAll(entries: Iterable<CpioEntry>): this {
    for (const entry of entries) this.add(entry);
    return this;
  }

  /** Appends the trailer and returns the archive (uncompressed). */
  finish(): Buffer {
    if (this.#finished) throw new Error('cpio: archive already finished');
    this.#header(CPIO_TRAILER, { ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, size: 0, rmajor: 0, rminor: 0 });
    this.#finished = true;
    return Buffer.concat(this.#chunks, this.#size);
  }

  #write(entry: CpioEntry, path: string): void {
    const perm = entry.mode ?? DEFAULT_MODE[entry.type];
    if (!Number.isInteger(perm) || perm < 0 || perm > 0o7777) throw new Error(`cpio: bad mode ${perm} for ${JSON.stringify(path)}`);
    let data: Uint8Array = new Uint8Array(0);
    if (entry.type === 'file') data = entry.data;
    else if (entry.type === 'symlink') {
      if (entry.target === '' || entry.target.includes('\0')) throw new Error(`cpio: bad symlink target for ${JSON.stringify(path)}`);
      data = Buffer.from(entry.target, 'utf8');
    }
    const isDevice = entry.type === 'char' || entry.type === 'block';
    this.#header(path, {
      ino: this.#nextIno++,
      mode: TYPE_BITS[entry.type] | perm,
      uid: entry.uid ?? 0,
      gid: entry.gid ?? 0,
      nlink: entry.type === 'directory' ? 2 : 1,
      mtime: entry.mtime ?? 0,
      size: data.length,
      rmajor: isDevice ? entry.major : 0,
      rminor: isDevice ? entry.minor : 0,
    });
    this.#push(data);
    this.#push(new Uint8Array(pad4(data.length)));
    this.#types.set(path, entry.type);
  }

  #header(name: string, h: { ino: number; mode: number; uid: number; gid: number; nlink: number; mtime: number; size: number; rmajor: number; rminor: number }): void {
    const nameBytes = Buffer.from(name + '\0', 'utf8');
    const fields = [h.ino, h.mode, h.uid, h.gid, h.nlink, h.mtime, h.size, 0, 0, h.rmajor, h.rminor, nameBytes.length, 0];
    const labels = ['inode', 'mode', 'uid', 'gid', 'nlink', 'mtime', 'size', 'devmajor', 'devminor', 'rdevmajor', 'rdevminor', 'name size', 'check'];
    const text = CPIO_NEWC_MAGIC + fields.map((v, i) => hex8(v, labels[i]!, name)).join('');
    this.#push(Buffer.from(text, 'ascii'));
    this.#push(nameBytes);
    this.#push(new Uint8Array(pad4(HEADER_SIZE + nameBytes.length)));
  }

  #push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.#chunks.push(bytes);
    this.#size += bytes.length;
  }
}

/** A newc archive of `entries` (uncompressed). */
export function writeCpio(entries: Iterable<CpioEntry>): Buffer {
  return new CpioWriter().addAll(entries).finish();
}

/** A gzip-compressed newc archive: what the kernel takes as an initramfs. */
export function writeInitramfs(entries: Iterable<CpioEntry>, level = 9): Buffer {
  return gzipSync(writeCpio(entries), { level });
}

/** One entry as read back by `readCpio` (for tests and inspection). */
export interface CpioRecord {
  path: string;
  /** Full st_mode: type bits and permissions. */
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  rdevMajor: number;
  rdevMinor: number;
  data: Buffer;
}

/** Parses an uncompressed newc archive up to its trailer. Strict: bad magic, hex or bounds are errors. */
export function readCpio(archive: Uint8Array): CpioRecord[] {
  const buf = Buffer.from(archive.buffer, archive.byteOffset, archive.byteLength);
  const records: CpioRecord[] = [];
  let off = 0;
  for (;;) {
    if (off + HEADER_SIZE > buf.length) throw new Error(`cpio: truncated header at offset ${off}`);
    const text = buf.toString('ascii', off, off + HEADER_SIZE);
    if (!text.startsWith(CPIO_NEWC_MAGIC)) throw new Error(`cpio: bad magic at offset ${off}`);
    const field = (i: number): number => {
      const s = text.slice(6 + i * 8, 14 + i * 8);
      if (!/^[0-9a-fA-F]{8}$/.test(s)) throw new Error(`cpio: bad header field ${i} at offset ${off}`);
      return parseInt(s, 16);
    };
    const nameSize = field(11);
    const size = field(6);
    const nameStart = off + HEADER_SIZE;
    const dataStart = nameStart + nameSize + pad4(HEADER_SIZE + nameSize);
    if (nameSize === 0 || dataStart + size > buf.length) throw new Error(`cpio: entry at offset ${off} runs past the end`);
    if (buf[nameStart + nameSize - 1] !== 0) throw new Error(`cpio: name at offset ${off} is not NUL-terminated`);
    const path = buf.toString('utf8', nameStart, nameStart + nameSize - 1);
    if (path === CPIO_TRAILER) return records;
    records.push({
      path,
      mode: field(1),
      uid: field(2),
      gid: field(3),
      nlink: field(4),
      mtime: field(5),
      rdevMajor: field(9),
      rdevMinor: field(10),
      data: buf.subarray(dataStart, dataStart + size),
    });
    off = dataStart + size + pad4(size);
  }
}
