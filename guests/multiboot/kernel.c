/*
 * livemig multiboot test kernel: QEMU's migration-test workload
 * (tests/migration/i386/a-b-bootblock.S) as a multiboot kernel.
 *
 * Prints 'A' on COM1 at boot, then forever: increment the first byte of every
 * 4 KiB page in [1 MiB, end) and print 'B' after each full pass. `end` is the
 * end of the RAM region holding 1 MiB (from the multiboot memory map), capped
 * at 100 MiB as in QEMU's test. The kernel itself lives below 1 MiB (link.ld),
 * so the range holds nothing but the counters, and QEMU's memory check
 * applies: every page's first byte equals the previous one, except at most
 * one place where it drops by one.
 */
#include <stdint.h>

#define MB_BOOT_MAGIC 0x2BADB002u
#define MB_INFO_MMAP (1u << 6)
#define RANGE_START 0x100000u
#define RANGE_CAP (100u * 1024u * 1024u)
#define PAGE 4096u
#define COM1 0x3f8

struct mb_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
	uint32_t syms[4];
	uint32_t mmap_length, mmap_addr;
} __attribute__((packed));

struct mb_mmap_entry {
	uint32_t size; /* of the rest of the entry */
	uint64_t base, length;
	uint32_t type;
} __attribute__((packed));

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void serial_init(void) {
	outb(COM1 + 1, 0x00); /* no interrupts */
	outb(COM1 + 3, 0x80); /* DLAB */
	outb(COM1 + 0, 0x01); /* 115200 baud */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03); /* 8N1 */
	outb(COM1 + 2, 0x07); /* FIFO on, cleared */
	outb(COM1 + 4, 0x03); /* DTR, RTS */
}

static void serial_putc(char c) {
	for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++) {}
	outb(COM1, (uint8_t)c);
}

static uint32_t range_end(uint32_t magic, const struct mb_info *mbi) {
	uint64_t end = RANGE_CAP;
	if (magic == MB_BOOT_MAGIC && (mbi->flags & MB_INFO_MMAP)) {
		uint64_t found = 0;
		uint32_t at = mbi->mmap_addr, stop = mbi->mmap_addr + mbi->mmap_length;
		while (at < stop) {
			const struct mb_mmap_entry *e = (const struct mb_mmap_entry *)at;
			if (e->type == 1 && e->base <= RANGE_START && e->base + e->length > RANGE_START) found = e->base + e->length;
			at += e->size + 4;
		}
		if (found && found < end) end = found;
	}
	return (uint32_t)end & ~(PAGE - 1);
}

void kmain(uint32_t magic, const struct mb_info *mbi) {
	serial_init();
	serial_putc('A');
	const uint32_t end = range_end(magic, mbi);
	for (;;) {
		for (uint32_t p = RANGE_START; p < end; p += PAGE) (*(volatile uint8_t *)p)++;
		serial_putc('B');
	}
}
