#!/bin/sh
# Rebuild the livemig multiboot test kernel (needs gcc with -m32 support and binutils).
set -eu
cd "$(dirname "$0")"
CFLAGS="-m32 -ffreestanding -fno-pic -fno-stack-protector -fno-asynchronous-unwind-tables -nostdlib -O2 -Wall -Wextra"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc $CFLAGS -c boot.S -o "$tmp/boot.o"
gcc $CFLAGS -c kernel.c -o "$tmp/kernel.o"
ld -m elf_i386 -T link.ld -n --build-id=none -s -z noexecstack --no-warn-rwx-segments -o livemig-test-kernel.bin "$tmp/boot.o" "$tmp/kernel.o"
echo "built $(pwd)/livemig-test-kernel.bin ($(wc -c < livemig-test-kernel.bin) bytes)"
