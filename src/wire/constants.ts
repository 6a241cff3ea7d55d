/** Constants of QEMU's migration stream, format version 3 (QEMU 7.2: migration/savevm.c). */

export const QEMU_VM_FILE_MAGIC = 0x5145564d; // "QEVM"
export const QEMU_VM_FILE_VERSION_COMPAT = 0x00000002; // obsolete, rejected
export const QEMU_VM_FILE_VERSION = 0x00000003;

/** Top-level type bytes. */
export const enum SectionType {
  Eof = 0x00,
  Start = 0x01,
  Part = 0x02,
  End = 0x03,
  Full = 0x04,
  Subsection = 0x05,
  VmDescription = 0x06,
  Configuration = 0x07,
  Command = 0x08,
  Footer = 0x7e,
}

export const SECTION_TYPE_NAMES: Readonly<Record<number, string>> = {
  0x00: 'EOF',
  0x01: 'START',
  0x02: 'PART',
  0x03: 'END',
  0x04: 'FULL',
  0x05: 'SUBSECTION',
  0x06: 'VMDESCRIPTION',
  0x07: 'CONFIGURATION',
  0x08: 'COMMAND',
  0x7e: 'FOOTER',
};

/** MIG_CMD_* numbers carried by COMMAND (0x08) records. */
export const enum MigCommand {
  Invalid = 0,
  OpenReturnPath = 1,
  Ping = 2,
  PostcopyAdvise = 3,
  PostcopyListen = 4,
  PostcopyRun = 5,
  PostcopyRamDiscard = 6,
  Packaged = 7,
  EnableColo = 8,
  PostcopyResume = 9,
  RecvBitmap = 10,
}

export const MIG_COMMAND_NAMES: Readonly<Record<number, string>> = {
  1: 'OPEN_RETURN_PATH',
  2: 'PING',
  3: 'POSTCOPY_ADVISE',
  4: 'POSTCOPY_LISTEN',
  5: 'POSTCOPY_RUN',
  6: 'POSTCOPY_RAM_DISCARD',
  7: 'PACKAGED',
  8: 'ENABLE_COLO',
  9: 'POSTCOPY_RESUME',
  10: 'RECV_BITMAP',
};

/** Fixed payload lengths (-1 = variable), as QEMU's mig_cmd_args table. */
export const MIG_COMMAND_LENGTHS: Readonly<Record<number, number>> = {
  1: 0,
  2: 4,
  3: -1, // 0 or 16
  4: 0,
  5: 0,
  6: -1,
  7: 4,
  8: 0,
  9: 0,
  10: -1,
};

/** Target page size on x86. */
export const TARGET_PAGE_BITS = 12;
export const TARGET_PAGE_SIZE = 1 << TARGET_PAGE_BITS;

/** The sender's buffer size in QEMU (IO_BUF_SIZE). */
export const IO_BUF_SIZE = 32768;

/** Largest vmdesc JSON we accept; QEMU's -M pc trailer is ~100 KB. */
export const MAX_VMDESC_BYTES = 16 * 1024 * 1024;
