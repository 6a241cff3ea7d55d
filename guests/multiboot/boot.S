/*
 * livemig multiboot test kernel: entry point and multiboot v1 header.
 * The loader (v86, QEMU -kernel, GRUB) enters in 32-bit protected mode with
 * EAX = 0x2BADB002 and EBX = the multiboot information structure.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000002 /* bit 1: give us the memory map */

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.section .text
	.global _start
_start:
	cli
	mov $stack_top, %esp
	push %ebx /* multiboot info */
	push %eax /* magic */
	call kmain
1:	hlt
	jmp 1b

	.section .note.GNU-stack, "", @progbits

	.section .bss
	.align 16
	.space 16384
stack_top:
