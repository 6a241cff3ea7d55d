/*
 * dirtier: the livemig Linux guest's workload. It dirties a configurable
 * amount of memory as fast as it can and checks it itself, so a live
 * migration that loses or tears a page is caught *inside* the guest.
 *
 *   dirtier [MIB] [VERIFY_EVERY] [SLEEP_MS] [INJECT_PASS]
 *
 * MIB           memory to dirty (default 16)
 * VERIFY_EVERY  verify all pages after every this many passes (default 4)
 * SLEEP_MS      pause after each pass, to lower the dirty rate (default 0)
 * INJECT_PASS   test the checker: after writing this pass, flip one word of
 *               one page, as a broken migration would (default 0: never;
 *               make it a multiple of VERIFY_EVERY, or the next pass heals it)
 *
 * Pass n writes every word of every page: word i of page p holds
 * pattern(p, n, i), which includes the page number and the pass counter
 * (word 0 is p, word 1 is n). Every VERIFY_EVERY passes it re-reads all
 * pages and prints one line, written with a single write(2):
 *
 *   dirtier: pass N ok
 *   dirtier: CORRUPT page P expected X got Y      (at most 8 per check)
 *   dirtier: pass N CORRUPT K pages
 *
 * Built as a static i386 binary: `gcc -m32 -static -O2 dirtier.c` against
 * libc, or, where no i386 libc is installed, `gcc -m32 -static -O2
 * -nostdlib -ffreestanding -fno-pic -DDIRTIER_FREESTANDING dirtier.c`,
 * which uses raw Linux system calls (int $0x80) and needs no library.
 * Both builds run the same code below; only the five primitives differ.
 */

typedef unsigned int u32;
typedef unsigned long ulong;

#define PAGE_SIZE 4096u
#define WORDS_PER_PAGE (PAGE_SIZE / 4u)
#define MAX_REPORTS 8

#ifdef DIRTIER_FREESTANDING
/* ---- i386 Linux, no libc ---------------------------------------------- */
#define SYS_exit 1
#define SYS_write 4
#define SYS_nanosleep 162
#define SYS_mmap2 192

static long sys3(long n, long a, long b, long c) {
  long r;
  __asm__ volatile("int $0x80" : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c) : "memory");
  return r;
}
static long sys6(long n, long a, long b, long c, long d, long e, long f) {
  /* ebp cannot be named as an operand: pass six arguments through memory. */
  long args[6] = {a, b, c, d, e, f};
  long r;
  __asm__ volatile(
      "push %%ebp\n\t"
      "mov 20(%%ebx), %%ebp\n\t"
      "mov 16(%%ebx), %%edi\n\t"
      "mov 12(%%ebx), %%esi\n\t"
      "mov 8(%%ebx), %%edx\n\t"
      "mov 4(%%ebx), %%ecx\n\t"
      "mov 0(%%ebx), %%ebx\n\t"
      "int $0x80\n\t"
      "pop %%ebp"
      : "=a"(r)
      : "a"(n), "b"(args)
      : "ecx", "edx", "esi", "edi", "memory");
  return r;
}
static void out(const char *s, ulong n) { sys3(SYS_write, 1, (long)s, (long)n); }
static void quit(int code) {
  for (;;) sys3(SYS_exit, code, 0, 0);
}
static void *map_pages(ulong bytes) {
  /* PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS */
  long r = sys6(SYS_mmap2, 0, (long)bytes, 3, 0x22, -1, 0);
  return (r < 0 && r > -4096) ? 0 : (void *)r;
}
static void sleep_ms(u32 ms) {
  long ts[2] = {(long)(ms / 1000u), (long)(ms % 1000u) * 1000000L};
  sys3(SYS_nanosleep, (long)ts, 0, 0);
}
static int dirtier_main(int argc, char **argv);
__attribute__((used)) static void start_c(long *sp) {
  int argc = (int)sp[0];
  quit(dirtier_main(argc, (char **)(sp + 1)));
}
__asm__(
    ".text\n"
    ".globl _start\n"
    "_start:\n"
    "  xor %ebp, %ebp\n"
    "  mov %esp, %eax\n"
    "  and $-16, %esp\n"
    "  sub $12, %esp\n"
    "  push %eax\n"
    "  call start_c\n"
    "  hlt\n");
#else
/* ---- libc ------------------------------------------------------------- */
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static void out(const char *s, ulong n) {
  while (n > 0) {
    ssize_t w = write(1, s, n);
    if (w <= 0) return;
    s += w;
    n -= (ulong)w;
  }
}
static void *map_pages(ulong bytes) {
  void *p = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? 0 : p;
}
static void sleep_ms(u32 ms) {
  struct timespec ts = {(time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L};
  nanosleep(&ts, 0);
}
static int dirtier_main(int argc, char **argv);
int main(int argc, char **argv) { return dirtier_main(argc, argv); }
#endif

/* ---- output: one line, one write --------------------------------------- */
struct line {
  char buf[160];
  ulong len;
};
static void put_str(struct line *l, const char *s) {
  while (*s && l->len < sizeof l->buf - 1) l->buf[l->len++] = *s++;
}
static void put_dec(struct line *l, u32 v) {
  char tmp[10];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10u);
    v /= 10u;
  } while (v);
  while (n > 0 && l->len < sizeof l->buf - 1) l->buf[l->len++] = tmp[--n];
}
static void put_hex(struct line *l, u32 v) {
  int i;
  put_str(l, "0x");
  for (i = 28; i >= 0; i -= 4) {
    if (l->len < sizeof l->buf - 1) l->buf[l->len++] = "0123456789abcdef"[(v >> i) & 15u];
  }
}
static void emit(struct line *l) {
  l->buf[l->len++] = '\n';
  out(l->buf, l->len);
  l->len = 0;
}

static int parse_u32(const char *s, u32 *v) {
  u32 r = 0;
  if (!s || !*s) return 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9' || r > 400000000u) return 0;
    r = r * 10u + (u32)(*s - '0');
  }
  *v = r;
  return 1;
}

/* ---- the workload ------------------------------------------------------ */
/* Word 0: the page number; word 1: the pass; the rest: a mix of page, pass
 * and word index that differs between neighbouring pages, passes and words. */
static inline u32 pattern(u32 page, u32 pass, u32 word) {
  if (word == 0) return page;
  if (word == 1) return pass;
  return (page * 0x9e3779b1u) ^ (pass * 0x85ebca77u) ^ (word * 0xc2b2ae3du);
}

static void write_pass(volatile u32 *mem, u32 pages, u32 pass) {
  u32 p, w;
  for (p = 0; p < pages; p++) {
    volatile u32 *page = mem + (ulong)p * WORDS_PER_PAGE;
    u32 base = (p * 0x9e3779b1u) ^ (pass * 0x85ebca77u);
    page[0] = p;
    page[1] = pass;
    for (w = 2; w < WORDS_PER_PAGE; w++) page[w] = base ^ (w * 0xc2b2ae3du);
  }
}

/* Returns the number of corrupt pages; reports the first MAX_REPORTS. */
static u32 verify(volatile u32 *mem, u32 pages, u32 pass) {
  u32 p, w, bad = 0;
  struct line l = {{0}, 0};
  for (p = 0; p < pages; p++) {
    volatile u32 *page = mem + (ulong)p * WORDS_PER_PAGE;
    for (w = 0; w < WORDS_PER_PAGE; w++) {
      u32 want = pattern(p, pass, w);
      u32 got = page[w];
      if (got != want) {
        if (bad < MAX_REPORTS) {
          put_str(&l, "dirtier: CORRUPT page ");
          put_dec(&l, p);
          put_str(&l, " word ");
          put_dec(&l, w);
          put_str(&l, " expected ");
          put_hex(&l, want);
          put_str(&l, " got ");
          put_hex(&l, got);
          emit(&l);
        }
        bad++;
        break;
      }
    }
  }
  return bad;
}

static int dirtier_main(int argc, char **argv) {
  u32 mib = 16, every = 4, pause = 0, inject = 0, pages, pass, bad;
  volatile u32 *mem;
  struct line l = {{0}, 0};

  if ((argc > 1 && !parse_u32(argv[1], &mib)) || (argc > 2 && !parse_u32(argv[2], &every)) ||
      (argc > 3 && !parse_u32(argv[3], &pause)) || (argc > 4 && !parse_u32(argv[4], &inject)) || mib == 0 || mib > 3072 || every == 0) {
    static const char usage[] = "usage: dirtier [MIB (1-3072)] [VERIFY_EVERY (>=1)] [SLEEP_MS] [INJECT_PASS]\n";
    out(usage, sizeof usage - 1);
    return 2;
  }
  pages = mib * (1048576u / PAGE_SIZE);
  mem = (volatile u32 *)map_pages((ulong)pages * PAGE_SIZE);
  if (!mem) {
    put_str(&l, "dirtier: cannot allocate ");
    put_dec(&l, mib);
    put_str(&l, " MiB");
    emit(&l);
    return 1;
  }
  put_str(&l, "dirtier: ");
  put_dec(&l, mib);
  put_str(&l, " MiB, ");
  put_dec(&l, pages);
  put_str(&l, " pages, verify every ");
  put_dec(&l, every);
  put_str(&l, " passes, sleep ");
  put_dec(&l, pause);
  put_str(&l, " ms");
  emit(&l);

  for (pass = 1;; pass++) {
    write_pass(mem, pages, pass);
    if (pass == inject) mem[(ulong)(pass % pages) * WORDS_PER_PAGE + 7] ^= 0x10u;
    if (pass % every == 0) {
      bad = verify(mem, pages, pass);
      put_str(&l, "dirtier: pass ");
      put_dec(&l, pass);
      if (bad == 0) {
        put_str(&l, " ok");
      } else {
        put_str(&l, " CORRUPT ");
        put_dec(&l, bad);
        put_str(&l, " pages");
      }
      emit(&l);
    }
    if (pause) sleep_ms(pause);
  }
  return 0;
}
