/*
 * diskcheck: the livemig Linux guest's disk workload. It keeps writing files
 * with known pseudo-random content and a checksum to a directory on the
 * guest's disk, and verifies them itself, so a live migration that loses or
 * tears a disk block is caught *inside* the guest.
 *
 *   diskcheck DIR [FILES] [MAX_KIB] [SLEEP_MS] [VERIFY_EVERY]
 *   diskcheck verify        ask the running diskcheck to verify now
 *
 * DIR           where the files go (created if missing)
 * FILES         a ring of this many files, rewritten in turn, so the disk
 *               never fills (default 32)
 * MAX_KIB       file sizes are 1 byte .. MAX_KIB KiB, pseudo-random and mostly
 *               not block-aligned (default 128)
 * SLEEP_MS      pause after each file (default 50)
 * VERIFY_EVERY  verify every file after this many writes (default 16; 0: only
 *               on request)
 *
 * Write n (n = 1, 2, ...) goes to file f<slot> with slot = (n - 1) % FILES:
 * a 24-byte header (magic, slot, n, payload length, CRC-32 of the payload)
 * and a payload generated from (slot, n). It is written, fsync()ed and closed
 * before the next one starts. The program remembers n for every slot; a
 * verification first syncs and drops the page cache (so the files are read
 * back from the disk, not from memory), then checks every file: header,
 * generation (a stale file, i.e. a lost write, is caught), every payload byte
 * and the CRC. It prints one line per check, each with a single write(2):
 *
 *   diskcheck: verify ok F files K KiB, W written[, on request]
 *   diskcheck: CORRUPT fNNN ...                       (at most 8 per check)
 *   diskcheck: verify CORRUPT C of F files, W written[, on request]
 *
 * "on request": SIGUSR1 (`diskcheck verify` sends it, to the pid in
 * /tmp/diskcheck.pid) asks for a verification between two writes.
 * Files already in DIR at start (an earlier boot) are checked against their
 * own headers and adopted.
 *
 * Built as a static i386 binary against libc: `gcc -m32 -static -O2`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef unsigned int u32;

#define MAGIC 0x43444d4cu /* "LMDC" little-endian */
#define HEADER_BYTES 24u
#define MAX_FILES 1024u
#define MAX_REPORTS 8
/* DISKCHECK_PID_FILE overrides it (tests run this program on the host). */
#define PID_FILE "/tmp/diskcheck.pid"

static const char *dir;
static u32 files = 32, max_kib = 128, sleep_ms = 50, verify_every = 16;
/* The write number each slot holds (0: none yet). */
static u32 expected[MAX_FILES];
static u32 written;
static volatile sig_atomic_t requested;

static void say(const char *fmt, ...) {
  char buf[200];
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof buf - 2) n = (int)sizeof buf - 2;
  buf[n++] = '\n';
  (void)!write(1, buf, (size_t)n);
}

/* ---- content ----------------------------------------------------------- */
static u32 mix(u32 x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
static u32 payload_bytes(u32 slot, u32 n) { return 1u + mix(slot * 0x9e3779b1u ^ n) % (max_kib * 1024u); }

/* The payload of write n to `slot`: xorshift32, seeded from both. */
struct stream {
  u32 state;
};
static void stream_init(struct stream *s, u32 slot, u32 n) { s->state = mix(n * 0x85ebca77u ^ slot) | 1u; }
static void stream_fill(struct stream *s, unsigned char *p, u32 len) {
  u32 i;
  for (i = 0; i < len; i++) {
    u32 x = s->state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s->state = x;
    p[i] = (unsigned char)(x >> 11);
  }
}

static u32 crc_table[256];
static void crc_init(void) {
  u32 i, k, c;
  for (i = 0; i < 256; i++) {
    for (c = i, k = 0; k < 8; k++) c = c & 1u ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}
static u32 crc_update(u32 crc, const unsigned char *p, u32 len) {
  crc = ~crc;
  while (len--) crc = crc_table[(crc ^ *p++) & 255u] ^ (crc >> 8);
  return ~crc;
}

static void put32(unsigned char *p, u32 v) {
  p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8), p[2] = (unsigned char)(v >> 16), p[3] = (unsigned char)(v >> 24);
}
static u32 get32(const unsigned char *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }

static void slot_path(char *out, size_t size, u32 slot) { snprintf(out, size, "%s/f%03u", dir, slot); }

/* ---- writing ------------------------------------------------------------ */
static unsigned char chunk[65536], back[65536];

static int write_all(int fd, const unsigned char *p, u32 len) {
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    len -= (u32)w;
  }
  return 0;
}

static int write_file(u32 slot, u32 n) {
  char path[256];
  unsigned char header[HEADER_BYTES];
  struct stream s;
  u32 len = payload_bytes(slot, n), left, crc = 0;
  int fd;

  stream_init(&s, slot, n);
  for (left = len; left > 0;) {
    u32 k = left < sizeof chunk ? left : (u32)sizeof chunk;
    stream_fill(&s, chunk, k);
    crc = crc_update(crc, chunk, k);
    left -= k;
  }
  put32(header, MAGIC), put32(header + 4, slot), put32(header + 8, n), put32(header + 12, len), put32(header + 16, crc), put32(header + 20, 0);
  slot_path(path, sizeof path, slot);
  /* The slot no longer holds its old write, and not yet this one. */
  expected[slot] = 0;
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || write_all(fd, header, HEADER_BYTES) < 0) goto fail;
  stream_init(&s, slot, n);
  for (left = len; left > 0;) {
    u32 k = left < sizeof chunk ? left : (u32)sizeof chunk;
    stream_fill(&s, chunk, k);
    if (write_all(fd, chunk, k) < 0) goto fail;
    left -= k;
  }
  if (fsync(fd) < 0) goto fail;
  if (close(fd) < 0) {
    fd = -1;
    goto fail;
  }
  expected[slot] = n;
  return 0;
fail:
  say("diskcheck: cannot write %s: %s", path, strerror(errno));
  if (fd >= 0) close(fd);
  return -1;
}

/* ---- checking ----------------------------------------------------------- */
static int read_full(int fd, unsigned char *p, u32 len) {
  u32 got = 0;
  while (got < len) {
    ssize_t r = read(fd, p + got, len - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += (u32)r;
  }
  return (int)got;
}

/*
 * Checks file `slot`. want_n: the write it must hold, or 0 to accept the one
 * its header names (adopting files of an earlier run). Returns the write
 * number found, 0 if the file is corrupt (reported if *reports is below the
 * limit), or -1 if it is absent and want_n is 0.
 */
static long check_file(u32 slot, u32 want_n, int *reports) {
  char path[256];
  unsigned char header[HEADER_BYTES];
  struct stream s;
  u32 n, len, crc = 0, off = 0;
  int fd;
  const char *why = 0;
  char detail[96] = "";

  slot_path(path, sizeof path, slot);
  fd = open(path, O_RDONLY);
  if (fd < 0) {
    if (want_n == 0 && errno == ENOENT) return -1;
    snprintf(detail, sizeof detail, "cannot open: %s", strerror(errno));
    why = detail;
    goto bad;
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  if (read_full(fd, header, HEADER_BYTES) != (int)HEADER_BYTES) {
    why = "short header";
    goto bad;
  }
  n = get32(header + 8);
  len = get32(header + 12);
  if (get32(header) != MAGIC || get32(header + 4) != slot) {
    why = "bad header";
    goto bad;
  }
  if (want_n != 0 && n != want_n) {
    snprintf(detail, sizeof detail, "holds write %u, expected %u (a lost write)", n, want_n);
    why = detail;
    goto bad;
  }
  if (n == 0 || len != payload_bytes(slot, n)) {
    snprintf(detail, sizeof detail, "length %u, expected %u", len, payload_bytes(slot, n));
    why = detail;
    goto bad;
  }
  stream_init(&s, slot, n);
  while (off < len) {
    u32 k = len - off < sizeof chunk ? len - off : (u32)sizeof chunk, i;
    if (read_full(fd, back, k) != (int)k) {
      snprintf(detail, sizeof detail, "short: %u of %u payload bytes", off, len);
      why = detail;
      goto bad;
    }
    stream_fill(&s, chunk, k);
    for (i = 0; i < k; i++) {
      if (back[i] != chunk[i]) {
        snprintf(detail, sizeof detail, "write %u: byte %u is 0x%02x, expected 0x%02x", n, HEADER_BYTES + off + i, back[i], chunk[i]);
        why = detail;
        goto bad;
      }
    }
    crc = crc_update(crc, back, k);
    off += k;
  }
  if (read_full(fd, back, 1) != 0) {
    why = "longer than its header says";
    goto bad;
  }
  if (crc != get32(header + 16)) {
    snprintf(detail, sizeof detail, "write %u: CRC 0x%08x, header says 0x%08x", n, crc, get32(header + 16));
    why = detail;
    goto bad;
  }
  close(fd);
  return (long)n;
bad:
  if (fd >= 0) close(fd);
  if (*reports < MAX_REPORTS) say("diskcheck: CORRUPT %s: %s", path, why);
  ++*reports;
  return 0;
}

/*
 * Writes back dirty data, then empties the page cache: the check reads the
 * disk. DISKCHECK_KEEP_CACHES=1 (a test on a host) keeps the system's caches;
 * each file's own cached pages are still dropped (check_file).
 */
static void drop_caches(void) {
  int fd;
  const char *keep = getenv("DISKCHECK_KEEP_CACHES");
  sync();
  if (keep && *keep == '1') return;
  fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
  if (fd < 0 || write(fd, "3", 1) != 1) say("diskcheck: cannot drop the page cache (%s); checking cached data", strerror(errno));
  if (fd >= 0) close(fd);
}

static void verify(int on_request) {
  u32 slot, count = 0, bad = 0;
  unsigned long long bytes = 0;
  int reports = 0;
  drop_caches();
  for (slot = 0; slot < files; slot++) {
    if (expected[slot] == 0) continue;
    count++;
    if (check_file(slot, expected[slot], &reports) > 0) bytes += HEADER_BYTES + payload_bytes(slot, expected[slot]);
    else bad++;
  }
  if (bad == 0) say("diskcheck: verify ok %u files %llu KiB, %u written%s", count, (bytes + 1023) / 1024, written, on_request ? ", on request" : "");
  else say("diskcheck: verify CORRUPT %u of %u files, %u written%s", bad, count, written, on_request ? ", on request" : "");
}

/* Files left by an earlier run: check each against its own header, then continue after the newest. */
static void adopt(void) {
  u32 slot, count = 0, bad = 0, newest = 0;
  int reports = 0;
  drop_caches();
  for (slot = 0; slot < files; slot++) {
    long n = check_file(slot, 0, &reports);
    if (n < 0) continue;
    count++;
    if (n == 0) {
      bad++;
      continue;
    }
    expected[slot] = (u32)n;
    if ((u32)n > newest) newest = (u32)n;
  }
  if (count == 0) return;
  if (bad == 0) say("diskcheck: %u files from an earlier run, ok", count);
  else say("diskcheck: %u files from an earlier run, CORRUPT %u", count, bad);
  /* Continue after the newest write: write numbers stay unique. */
  written = newest;
}

/* ---- main --------------------------------------------------------------- */
static void on_usr1(int sig) {
  (void)sig;
  requested = 1;
}

static int parse_u32(const char *s, u32 *v, u32 max) {
  char *end;
  unsigned long r;
  if (!s || !*s) return 0;
  errno = 0;
  r = strtoul(s, &end, 10);
  if (errno || *end || r > max) return 0;
  *v = (u32)r;
  return 1;
}

static const char *pid_file(void) {
  const char *p = getenv("DISKCHECK_PID_FILE");
  return p && *p ? p : PID_FILE;
}

static int send_verify(void) {
  FILE *f = fopen(pid_file(), "r");
  int pid = 0;
  if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 0) {
    say("diskcheck verify: no running diskcheck (%s)", pid_file());
    if (f) fclose(f);
    return 1;
  }
  fclose(f);
  if (kill(pid, SIGUSR1) < 0) {
    say("diskcheck verify: pid %d: %s", pid, strerror(errno));
    return 1;
  }
  return 0;
}

static void pause_ms(u32 ms) {
  struct timespec ts = {(time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L};
  /* A request (SIGUSR1) ends the pause early. */
  while (!requested && nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

int main(int argc, char **argv) {
  struct sigaction sa;
  FILE *pidf;
  u32 since_verify = 0;

  if (argc == 2 && strcmp(argv[1], "verify") == 0) return send_verify();
  if (argc < 2 || argc > 6 || (argc > 2 && !parse_u32(argv[2], &files, MAX_FILES)) || (argc > 3 && !parse_u32(argv[3], &max_kib, 65536)) ||
      (argc > 4 && !parse_u32(argv[4], &sleep_ms, 3600000)) || (argc > 5 && !parse_u32(argv[5], &verify_every, 1u << 30)) || files == 0 ||
      max_kib == 0) {
    say("usage: diskcheck DIR [FILES (1-%u)] [MAX_KIB (1-65536)] [SLEEP_MS] [VERIFY_EVERY (0: on request only)] | diskcheck verify", MAX_FILES);
    return 2;
  }
  dir = argv[1];
  crc_init();
  if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
    say("diskcheck: cannot create %s: %s", dir, strerror(errno));
    return 1;
  }
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, 0);
  pidf = fopen(pid_file(), "w");
  if (pidf) {
    fprintf(pidf, "%d\n", (int)getpid());
    fclose(pidf);
  }
  say("diskcheck: %s, %u files of up to %u KiB, sleep %u ms, verify every %u writes (0: on request only)", dir, files, max_kib, sleep_ms, verify_every);
  adopt();
  for (;;) {
    if (requested) {
      requested = 0;
      verify(1);
    }
    written++;
    if (write_file((written - 1) % files, written) < 0) {
      /* A full or broken disk: say so once in a while, keep serving requests. */
      written--;
      pause_ms(1000);
      continue;
    }
    if (verify_every && ++since_verify >= verify_every) {
      since_verify = 0;
      verify(0);
    }
    if (sleep_ms) pause_ms(sleep_ms);
  }
}
