//! Multiboot header (with the a.out kludge, so a flat binary boots in QEMU and GRUB) and
//! the trampoline from 32-bit protected mode into 64-bit long mode.
//!
//! The trampoline zeroes `.bss`, identity-maps the first 4 GiB with 2 MiB pages,
//! enables PAE, long mode, NX, paging and SSE (the prebuilt `core` uses SSE), loads a
//! minimal GDT, and calls `hv_main(magic, info)` on the boot stack.

// Multiboot specification 0.6.96, section 3.1 (header: magic 0x1BADB002; flags bit 0
// page-align modules, bit 1 memory information, bit 16 the address fields are valid).
// Control bits: CR4.PAE bit 5, CR4.OSFXSR bit 9, CR4.OSXMMEXCPT bit 10 (Intel SDM vol. 3
// 2.5); EFER.LME bit 8, EFER.NXE bit 11 (SDM 2.2.1); CR0.MP bit 1, CR0.EM bit 2,
// CR0.NE bit 5, CR0.WP bit 16, CR0.PG bit 31 (SDM 2.5). Page-directory entry bits
// P 0, R/W 1, PS 7 (SDM 4.5, table 4-17).
core::arch::global_asm!(
    r#"
    .section .multiboot, "a"
    .balign 4
multiboot_header:
    .long 0x1BADB002
    .long 0x00010003
    .long -(0x1BADB002 + 0x00010003)
    .long multiboot_header
    .long __kernel_start
    .long __load_end
    .long __bss_end
    .long multiboot_entry

    .section .text.boot, "ax"
    .code32
    .global multiboot_entry
multiboot_entry:
    cli
    cld
    mov %eax, %esi
    mov %ebx, %ebp

    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4

    mov $boot_pd, %eax
    or $3, %eax
    mov %eax, boot_pdpt
    add $4096, %eax
    mov %eax, boot_pdpt + 8
    add $4096, %eax
    mov %eax, boot_pdpt + 16
    add $4096, %eax
    mov %eax, boot_pdpt + 24

    mov $boot_pd, %edi
    mov $0x83, %eax
    mov $2048, %ecx
1:
    mov %eax, (%edi)
    movl $0, 4(%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 1b

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4
    mov $0xC0000080, %ecx
    rdmsr
    or $0x900, %eax
    wrmsr
    mov %cr0, %eax
    and $0xFFFFFFFB, %eax
    or $0x80010022, %eax
    mov %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $long_mode_entry

    .code64
long_mode_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %esi, %edi
    mov %ebp, %esi
    xor %ebp, %ebp
    call hv_main
2:
    hlt
    jmp 2b

    .section .rodata.boot, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_ptr:
    .word boot_gdt_ptr - boot_gdt - 1
    .long boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 256 * 1024
boot_stack_top:
    "#,
    options(att_syntax)
);
