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
            "mov rbx, [rsp + 8]", "xor rbx, 0x3",
            "mov rbp, [rsp + 8]", "xor rbp, 0x5",
            "mov rcx, [rsp + 8]", "xor rcx, 0x1",
            "mov rdx, [rsp + 8]", "xor rdx, 0x2",
            "mov rsi, [rsp + 8]", "xor rsi, 0x6",
            "mov rdi, [rsp + 8]", "xor rdi, 0x7",
            "mov r8, [rsp + 8]", "xor r8, 0x8",
            "mov r9, [rsp + 8]", "xor r9, 0x9",
            "mov r10, [rsp + 8]", "xor r10, 0xa",
            "mov r11, [rsp + 8]", "xor r11, 0xb",
            "mov r12, [rsp + 8]", "xor r12, 0xc",
            "mov r13, [rsp + 8]", "xor r13, 0xd",
            "mov r14, [rsp + 8]", "xor r14, 0xe",
            "mov r15, [rsp + 8]", "xor r15, 0xf",
            "movq xmm0, r8", "punpcklqdq xmm0, xmm0",
            "movq xmm1, r9", "punpcklqdq xmm1, xmm1",
            "movq xmm2, r10", "punpcklqdq xmm2, xmm2",
            "movq xmm3, r11", "punpcklqdq xmm3, xmm3",
            "movq xmm4, r12", "punpcklqdq xmm4, xmm4",
            "movq xmm5, r13", "punpcklqdq xmm5, xmm5",
            "movq xmm6, r14", "punpcklqdq xmm6, xmm6",
            "movq xmm7, r15", "punpcklqdq xmm7, xmm7",
            "movq xmm8, rbx", "punpcklqdq xmm8, xmm8",
            "movq xmm9, rbp", "punpcklqdq xmm9, xmm9",
            "movq xmm10, rcx", "punpcklqdq xmm10, xmm10",
            "movq xmm11, rdx", "punpcklqdq xmm11, xmm11",
            "movq xmm12, rsi", "punpcklqdq xmm12, xmm12",
            "movq xmm13, rdi", "punpcklqdq xmm13, xmm13",
            "movq xmm14, r8", "punpcklqdq xmm14, xmm14",
            "movq xmm15, r9", "punpcklqdq xmm15, xmm15",
            "mov eax, {snapshot_nr}",
            // VMCALL on Intel, VMMCALL on AMD (`on_intel` has set VENDOR).
            "cmp byte ptr [rip + {vendor}], {intel}",
            "je 3f",
            "vmmcall",
            "jmp 4f",
            "3:",
            "vmcall",
            "4:",
            "mov [rsp + 16], rax",
            "mov rax, [rsp + 8]", "xor rax, 0x3", "cmp rbx, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x5", "cmp rbp, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x1", "cmp rcx, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x2", "cmp rdx, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x6", "cmp rsi, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x7", "cmp rdi, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x8", "cmp r8, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0x9", "cmp r9, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xa", "cmp r10, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xb", "cmp r11, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xc", "cmp r12, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xd", "cmp r13, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xe", "cmp r14, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "mov rax, [rsp + 8]", "xor rax, 0xf", "cmp r15, rax", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm0", "cmp rax, r8", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm0, xmm0, 0x4e", "movq rax, xmm0", "cmp rax, r8", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm1", "cmp rax, r9", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm1, xmm1, 0x4e", "movq rax, xmm1", "cmp rax, r9", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm2", "cmp rax, r10", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm2, xmm2, 0x4e", "movq rax, xmm2", "cmp rax, r10", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm3", "cmp rax, r11", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm3, xmm3, 0x4e", "movq rax, xmm3", "cmp rax, r11", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm4", "cmp rax, r12", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm4, xmm4, 0x4e", "movq rax, xmm4", "cmp rax, r12", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm5", "cmp rax, r13", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm5, xmm5, 0x4e", "movq rax, xmm5", "cmp rax, r13", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm6", "cmp rax, r14", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm6, xmm6, 0x4e", "movq rax, xmm6", "cmp rax, r14", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm7", "cmp rax, r15", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm7, xmm7, 0x4e", "movq rax, xmm7", "cmp rax, r15", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm8", "cmp rax, rbx", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm8, xmm8, 0x4e", "movq rax, xmm8", "cmp rax, rbx", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm9", "cmp rax, rbp", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm9, xmm9, 0x4e", "movq rax, xmm9", "cmp rax, rbp", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm10", "cmp rax, rcx", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm10, xmm10, 0x4e", "movq rax, xmm10", "cmp rax, rcx", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm11", "cmp rax, rdx", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm11, xmm11, 0x4e", "movq rax, xmm11", "cmp rax, rdx", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm12", "cmp rax, rsi", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm12, xmm12, 0x4e", "movq rax, xmm12", "cmp rax, rsi", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm13", "cmp rax, rdi", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm13, xmm13, 0x4e", "movq rax, xmm13", "cmp rax, rdi", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm14", "cmp rax, r8", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm14, xmm14, 0x4e", "movq rax, xmm14", "cmp rax, r8", "je 2f", "inc qword ptr [rsp]", "2:",
            "movq rax, xmm15", "cmp rax, r9", "je 2f", "inc qword ptr [rsp]", "2:", "pshufd xmm15, xmm15, 0x4e", "movq rax, xmm15", "cmp rax, r9", "je 2f", "inc qword ptr [rsp]", "2:",
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
            "mov rbx, [rsp + 8]", "xor rbx, 0x3",
            "mov rbp, [rsp + 8]", "xor rbp, 0x5",
            "mov rcx, [rsp + 8]", "xor rcx, 0x1",
            "mov rdx, [rsp + 8]", "xor rdx, 0x2",
            "mov rsi, [rsp + 8]", "xor rsi, 0x6",
            "mov rdi, [rsp + 8]", "xor rdi, 0x7",
            "mov r8, [rsp + 8]", "xor r8, 0x8",
            "mov r9, [rsp + 8]", "xor r9, 0x9",
            "mov r10, [rsp + 8]", "xor r10, 0xa",
            "mov r11, [rsp + 8]", "xor r11, 0xb",
            "mov r12, [rsp + 8]", "xor r12, 0xc",
            "mov r13, [rsp + 8]", "xor r13, 0xd",
            "mov r14, [rsp + 8]", "xor r14, 0xe",
            "mov r15, [rsp + 8]", "xor r15, 0xf",
            "movq xmm0, r8", "punpcklqdq xmm0, xmm0",
            "movq xmm1, r9", "punpcklqdq xmm1, xmm1",
            "movq xmm2, r10", "punpcklqdq xmm2, xmm2",
            "movq xmm3, r11", "punpcklqdq xmm3, xmm3",
            "movq xmm4, r12", "punpcklqdq xmm4, xmm4",
            "movq xmm5, r13", "punpcklqdq xmm5, xmm5",
            "movq xmm6, r14", "punpcklqdq xmm6, xmm6",
            "movq xmm7, r15", "punpcklqdq xmm7, xmm7",
            "movq xmm8, rbx", "punpcklqdq xmm8, xmm8",
            "movq xmm9, rbp", "punpcklqdq xmm9, xmm9",
            "movq xmm10, rcx", "punpcklqdq xmm10, xmm10",
            "movq xmm11, rdx", "punpcklqdq xmm11, xmm11",
            "movq xmm12, rsi", "punpcklqdq xmm12, xmm12",
            "movq xmm13, rdi", "punpcklqdq xmm13, xmm13",
            "movq xmm14, r8", "punpcklqdq xmm14, xmm14",
            "movq xmm15, r9", "punpcklqdq xmm15, xmm15",
            "mov eax, {reset_nr}",
            // VMCALL on Intel, VMMCALL on AMD (`on_intel` has set VENDOR).
            "cmp byte ptr [rip + {vendor}], {intel}",
            "je 3f",
            "vmmcall",
            "jmp 4f",
            "3:",
            "vmcall",
            "4:",
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
