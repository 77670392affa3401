//! Scenario `realmode`: a guest that starts in 16-bit real mode (image header flag
//! [`IMAGE_FLAG_REAL_MODE`](guest_images::abi::IMAGE_FLAG_REAL_MODE), see
//! [`guest_images::real_mode_guest!`]). It checks that CR0.PE is clear (`SMSW`), prints
//! a line to COM1, writes and reads back two words in one page of each 64 KiB segment
//! from 128 KiB to 576 KiB (eight pages backed on first touch), calls subroutines (the
//! stack is at `0000:FFF0`), and ends with the EXIT hypercall (exit code 0, or 1 after
//! printing `FAIL: ...` when a check fails).
//!
//! The whole guest is assembly (`.code16`): Rust code is 64-bit only.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

guest_images::real_mode_guest!(
    "cld",
    // Real mode: CR0.PE (bit 0) must be clear.
    "smsw %ax",
    "testw $1, %ax",
    "jnz rm_fail",
    "movw $(rm_hello - real_mode_image_start), %si",
    "call real_mode_print",
    // Touch one page in each 64 KiB segment 0x2000..0x9000 (GPA 128 KiB..576 KiB).
    "movw $0x2000, %cx",
    "1:",
    "movw %cx, %es",
    "movw %cx, %es:0",
    "movw %cx, %ax",
    "notw %ax",
    "movw %ax, %es:0xffe",
    "addw $0x1000, %cx",
    "cmpw $0xa000, %cx",
    "jb 1b",
    // Read every word back.
    "movw $0x2000, %cx",
    "2:",
    "movw %cx, %es",
    "cmpw %cx, %es:0",
    "jne rm_fail",
    "movw %cx, %ax",
    "notw %ax",
    "cmpw %ax, %es:0xffe",
    "jne rm_fail",
    "addw $0x1000, %cx",
    "cmpw $0xa000, %cx",
    "jb 2b",
    "movw $(rm_touched - real_mode_image_start), %si",
    "call real_mode_print",
    "xorl %edi, %edi",
    "jmp real_mode_exit",
    "rm_fail:",
    "movw $(rm_failed - real_mode_image_start), %si",
    "call real_mode_print",
    "movl $1, %edi",
    "jmp real_mode_exit",
    "rm_hello:",
    ".asciz \"hello from a guest in 16-bit real mode\\n\"",
    "rm_touched:",
    ".asciz \"real mode: 8 pages below 640 KiB touched on demand and verified\\n\"",
    "rm_failed:",
    ".asciz \"FAIL: real-mode check failed\\n\"",
);
