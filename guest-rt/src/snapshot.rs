//! Whole-guest snapshot and reset from the guest's side (hypercalls SNAPSHOT and
//! RESET): the register state around them is set and checked in assembly, since the
//! point of a reset is that no register of the iteration before survives it.

use crate::{VENDOR, VENDOR_INTEL, hypercall_nr, on_intel};

/// IA32_KERNEL_GS_BASE (MSR C000_0102h, AMD APM vol. 2 §6.1.1; Intel SDM vol. 4 table
/// 2-2): an MSR the guest can write that the CPU does not use in kernel mode, so a
/// test may set it freely.
const KERNEL_GS_BASE: u32 = 0xC000_0102;

/// Fills every general-purpose register but RAX/RSP, every XMM register and
/// IA32_KERNEL_GS_BASE with values derived from `seed` (the MSR: a canonical address), then asks for a
/// snapshot.
/// Returns `(rax, errors)`: RAX as the hypervisor left it (0 right after the
/// snapshot, the number of resets so far after each reset, negative on failure) and
/// how many of those registers differ from the values derived from `seed` (0 when the
/// snapshot, or the reset, gave back exactly the state of the snapshot).
pub fn snapshot_point(seed: u64) -> (i64, u64) {
    let errors: u64;
    let rax: u64;
    on_intel();
    // SAFETY: the block saves and restores RBX and RBP itself, declares every other
    // register it changes as clobbered, and leaves RSP as it found it; writing
    // IA32_KERNEL_GS_BASE changes nothing this guest uses (it has no user mode), and
    // the hypercall only snapshots (or, later, resets) this guest.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "sub rsp, 8",
            "push rax",
            "push 0",
            "mov ecx, {msr}",
            "mov rax, [rsp + 8]", "xor rax, 0x4b",
            // A canonical address (bits 63:47 clear), as the MSR requires.
            "shl rax, 17", "shr rax, 17",
            "mov rdx, rax", "shr rdx, 32",
            "wrmsr",
            fill_registers_from_seed!(),
            "mov eax, {snapshot_nr}",
            // VMCALL on Intel, VMMCALL on AMD (`on_intel` has set VENDOR).
            hypercall_instruction!(),
            "mov [rsp + 16], rax",
            count_register_differences!(),
            "mov ecx, {msr}",
            "rdmsr",
            "shl rdx, 32", "or rax, rdx",
            "mov rcx, [rsp + 8]", "xor rcx, 0x4b", "shl rcx, 17", "shr rcx, 17",
            "cmp rax, rcx", "je 2f", "inc qword ptr [rsp]", "2:",
            "pop rax",
            "add rsp, 8",
            "pop rdx",
            "pop rbp",
            "pop rbx",
            msr = const KERNEL_GS_BASE,
            snapshot_nr = const hypercall_nr::SNAPSHOT,
            vendor = sym VENDOR,
            intel = const VENDOR_INTEL,
            inout("rax") seed => errors,
            out("rdx") rax,
            out("rcx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
        )
    };
    (rax as i64, errors)
}

/// Fills the same registers (and IA32_KERNEL_GS_BASE) with values derived from
/// `junk`, then asks for a reset to the snapshot. Returns only when the reset is
/// refused, with the (negative) status.
pub fn reset_scribbled(junk: u64) -> i64 {
    let status: u64;
    on_intel();
    // SAFETY: as in `snapshot_point`; on success the hypercall does not return here
    // (the guest resumes in `snapshot_point` with its memory and registers restored).
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "push rax",
            "push 0",
            "mov ecx, {msr}",
            "mov rax, [rsp + 8]",
            "shl rax, 17", "shr rax, 17",
            "mov rdx, rax", "shr rdx, 32",
            "wrmsr",
            fill_registers_from_seed!(),
            "mov eax, {reset_nr}",
            // VMCALL on Intel, VMMCALL on AMD (`on_intel` has set VENDOR).
            hypercall_instruction!(),
            "add rsp, 16",
            "pop rbp",
            "pop rbx",
            msr = const KERNEL_GS_BASE,
            reset_nr = const hypercall_nr::RESET,
            vendor = sym VENDOR,
            intel = const VENDOR_INTEL,
            inout("rax") junk => status,
            out("rdx") _,
            out("rcx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
        )
    };
    status as i64
}
