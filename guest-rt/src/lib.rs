//! The guest-side runtime: the hardware primitives the test guests use, as safe
//! functions. **The guest-side runtime lives here so that guest images are free of
//! `unsafe`**: the project keeps `unsafe` in `ept`, `hv` and this small runtime, and the
//! `guest-images` crate (`#![forbid(unsafe_code)]`) builds its serial printing, result
//! reporting and scenarios on these functions.
//!
//! # The guest's world, which makes these functions sound
//!
//! Only guest images call them. A guest starts in 64-bit long mode at CPL 0 with
//! interrupts disabled, on identity page tables the hypervisor built over the first
//! 4 GiB of guest-physical memory (see `hv::layout`): a guest pointer is its
//! guest-physical address (GPA). Every port access, hypercall, `hlt` and triple fault
//! exits to the hypervisor, and a guest-physical access either succeeds or causes a
//! stage-2 fault that the hypervisor resolves or turns into the end of the guest. So a
//! wrong argument can at worst damage or end the calling guest, never the hypervisor or
//! another guest — which is exactly what the test scenarios probe. The hypervisor
//! kernel itself never calls this module.
//!
//! The entry point (`_start`) and the image header are `global_asm!` in the guest's
//! `guest_main!` macro (assembly outside functions needs no `unsafe`); the C runtime
//! symbols come from the `baremetal` crate, shared with the kernel and linked here.
//! This crate links only the ABI ([`hv_abi`]) and `baremetal`, never the hypervisor.
#![cfg_attr(not(test), no_std)]

// The C runtime symbols (`memcpy` and family) every guest binary needs.
use baremetal as _;

use hv_abi::hypercall as hypercall_nr;

/// Assembly (for `asm!` templates) that fills RBX, RBP, RCX, RDX, RSI, RDI and R8-R15
/// with `[rsp + 8]` XOR a constant per register, and XMM0-XMM15 with copies of them
/// (both halves).
macro_rules! fill_registers_from_seed {
    () => {
        concat!(
            "mov rbx, [rsp + 8]\n",
            "xor rbx, 0x3\n",
            "mov rbp, [rsp + 8]\n",
            "xor rbp, 0x5\n",
            "mov rcx, [rsp + 8]\n",
            "xor rcx, 0x1\n",
            "mov rdx, [rsp + 8]\n",
            "xor rdx, 0x2\n",
            "mov rsi, [rsp + 8]\n",
            "xor rsi, 0x6\n",
            "mov rdi, [rsp + 8]\n",
            "xor rdi, 0x7\n",
            "mov r8, [rsp + 8]\n",
            "xor r8, 0x8\n",
            "mov r9, [rsp + 8]\n",
            "xor r9, 0x9\n",
            "mov r10, [rsp + 8]\n",
            "xor r10, 0xa\n",
            "mov r11, [rsp + 8]\n",
            "xor r11, 0xb\n",
            "mov r12, [rsp + 8]\n",
            "xor r12, 0xc\n",
            "mov r13, [rsp + 8]\n",
            "xor r13, 0xd\n",
            "mov r14, [rsp + 8]\n",
            "xor r14, 0xe\n",
            "mov r15, [rsp + 8]\n",
            "xor r15, 0xf\n",
            "movq xmm0, r8\n",
            "punpcklqdq xmm0, xmm0\n",
            "movq xmm1, r9\n",
            "punpcklqdq xmm1, xmm1\n",
            "movq xmm2, r10\n",
            "punpcklqdq xmm2, xmm2\n",
            "movq xmm3, r11\n",
            "punpcklqdq xmm3, xmm3\n",
            "movq xmm4, r12\n",
            "punpcklqdq xmm4, xmm4\n",
            "movq xmm5, r13\n",
            "punpcklqdq xmm5, xmm5\n",
            "movq xmm6, r14\n",
            "punpcklqdq xmm6, xmm6\n",
            "movq xmm7, r15\n",
            "punpcklqdq xmm7, xmm7\n",
            "movq xmm8, rbx\n",
            "punpcklqdq xmm8, xmm8\n",
            "movq xmm9, rbp\n",
            "punpcklqdq xmm9, xmm9\n",
            "movq xmm10, rcx\n",
            "punpcklqdq xmm10, xmm10\n",
            "movq xmm11, rdx\n",
            "punpcklqdq xmm11, xmm11\n",
            "movq xmm12, rsi\n",
            "punpcklqdq xmm12, xmm12\n",
            "movq xmm13, rdi\n",
            "punpcklqdq xmm13, xmm13\n",
            "movq xmm14, r8\n",
            "punpcklqdq xmm14, xmm14\n",
            "movq xmm15, r9\n",
            "punpcklqdq xmm15, xmm15\n",
        )
    };
}

/// Assembly that compares every register `fill_registers_from_seed!` sets (both
/// halves of each XMM register) with the values derived from `[rsp + 8]`, adding one
/// to the counter at `[rsp]` per difference. Uses RAX.
macro_rules! count_register_differences {
    () => {
        concat!(
            "mov rax, [rsp + 8]\n",
            "xor rax, 0x3\n",
            "cmp rbx, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0x5\n",
            "cmp rbp, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0x1\n",
            "cmp rcx, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0x2\n",
            "cmp rdx, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0x6\n",
            "cmp rsi, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0x7\n",
            "cmp rdi, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0x8\n",
            "cmp r8, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0x9\n",
            "cmp r9, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0xa\n",
            "cmp r10, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0xb\n",
            "cmp r11, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0xc\n",
            "cmp r12, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0xd\n",
            "cmp r13, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0xe\n",
            "cmp r14, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "mov rax, [rsp + 8]\n",
            "xor rax, 0xf\n",
            "cmp r15, rax\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm0\n",
            "cmp rax, r8\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm0, xmm0, 0x4e\n",
            "movq rax, xmm0\n",
            "cmp rax, r8\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm1\n",
            "cmp rax, r9\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm1, xmm1, 0x4e\n",
            "movq rax, xmm1\n",
            "cmp rax, r9\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm2\n",
            "cmp rax, r10\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm2, xmm2, 0x4e\n",
            "movq rax, xmm2\n",
            "cmp rax, r10\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm3\n",
            "cmp rax, r11\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm3, xmm3, 0x4e\n",
            "movq rax, xmm3\n",
            "cmp rax, r11\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm4\n",
            "cmp rax, r12\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm4, xmm4, 0x4e\n",
            "movq rax, xmm4\n",
            "cmp rax, r12\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm5\n",
            "cmp rax, r13\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm5, xmm5, 0x4e\n",
            "movq rax, xmm5\n",
            "cmp rax, r13\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm6\n",
            "cmp rax, r14\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm6, xmm6, 0x4e\n",
            "movq rax, xmm6\n",
            "cmp rax, r14\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm7\n",
            "cmp rax, r15\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm7, xmm7, 0x4e\n",
            "movq rax, xmm7\n",
            "cmp rax, r15\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm8\n",
            "cmp rax, rbx\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm8, xmm8, 0x4e\n",
            "movq rax, xmm8\n",
            "cmp rax, rbx\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm9\n",
            "cmp rax, rbp\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm9, xmm9, 0x4e\n",
            "movq rax, xmm9\n",
            "cmp rax, rbp\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm10\n",
            "cmp rax, rcx\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm10, xmm10, 0x4e\n",
            "movq rax, xmm10\n",
            "cmp rax, rcx\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm11\n",
            "cmp rax, rdx\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm11, xmm11, 0x4e\n",
            "movq rax, xmm11\n",
            "cmp rax, rdx\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm12\n",
            "cmp rax, rsi\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm12, xmm12, 0x4e\n",
            "movq rax, xmm12\n",
            "cmp rax, rsi\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm13\n",
            "cmp rax, rdi\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm13, xmm13, 0x4e\n",
            "movq rax, xmm13\n",
            "cmp rax, rdi\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm14\n",
            "cmp rax, r8\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm14, xmm14, 0x4e\n",
            "movq rax, xmm14\n",
            "cmp rax, r8\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "movq rax, xmm15\n",
            "cmp rax, r9\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
            "pshufd xmm15, xmm15, 0x4e\n",
            "movq rax, xmm15\n",
            "cmp rax, r9\n",
            "je 2f\n",
            "inc qword ptr [rsp]\n",
            "2:\n",
        )
    };
}

/// Assembly of the hypercall instruction: VMCALL on Intel, VMMCALL on AMD, chosen by
/// `VENDOR` (set by `on_intel`); needs the `vendor` and `intel` operands.
macro_rules! hypercall_instruction {
    () => {
        concat!(
            "cmp byte ptr [rip + {vendor}], {intel}\n",
            "je 3f\n",
            "vmmcall\n",
            "jmp 4f\n",
            "3:\n",
            "vmcall\n",
            "4:\n",
        )
    };
}

pub mod cpu;
mod snapshot;
pub use snapshot::{reset_scribbled, snapshot_point};

/// Writes `value` to I/O port `port` (`OUT DX, AL`; AMD APM vol. 3, "OUT"). The
/// hypervisor intercepts every port (AMD APM vol. 2, §15.10 "I/O Interception").
pub fn port_write(port: u16, value: u8) {
    // SAFETY: an `out` has no effect on guest memory; in a guest the hypervisor
    // intercepts every port access.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value,
            options(nomem, nostack, preserves_flags))
    };
}

/// CPUID leaf 0 EBX of an Intel CPU: "Genu" of "GenuineIntel" (Intel SDM vol. 2A,
/// CPUID, leaf 0).
const CPUID_VENDOR_INTEL_EBX: u32 = 0x756E_6547;

/// The CPU vendor, once asked: 0 unknown, 1 AMD, [`VENDOR_INTEL`] Intel.
static VENDOR: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
/// [`VENDOR`] on Intel (also compared against in assembly).
const VENDOR_INTEL: u8 = 2;

/// Whether the hypervisor runs on Intel VMX, whose hypercall instruction is `VMCALL`
/// (AMD SVM: `VMMCALL`; each raises #UD under the other vendor's virtualization).
/// Asked once (CPUID exits to the hypervisor, which passes the vendor through).
fn on_intel() -> bool {
    use core::sync::atomic::Ordering;
    match VENDOR.load(Ordering::Relaxed) {
        0 => {
            let intel = core::arch::x86_64::__cpuid(0).ebx == CPUID_VENDOR_INTEL_EBX;
            VENDOR.store(if intel { VENDOR_INTEL } else { 1 }, Ordering::Relaxed);
            intel
        }
        v => v == VENDOR_INTEL,
    }
}

/// Issues hypercall `number` with up to three arguments (RDI, RSI, RDX); returns RAX.
///
/// The instruction is `VMMCALL` on AMD (AMD APM vol. 3, "VMMCALL"; intercepted per
/// vol. 2, §15.9) and `VMCALL` on Intel (SDM vol. 2B, "VMCALL"; an unconditional VM
/// exit, vol. 3C 26.1.2), the hypercall convention of [`hv_abi`].
pub fn hypercall(number: u64, a0: u64, a1: u64, a2: u64) -> i64 {
    let ret: u64;
    if on_intel() {
        // SAFETY: `vmcall` exits to the hypervisor, which only changes RAX (the
        // result) and may read or write guest memory (hence no `nomem`).
        unsafe {
            core::arch::asm!("vmcall", inlateout("rax") number => ret,
                in("rdi") a0, in("rsi") a1, in("rdx") a2, options(nostack))
        };
    } else {
        // SAFETY: `vmmcall` traps to the hypervisor, which only changes RAX (the
        // result) and may read or write guest memory through its own mappings.
        unsafe {
            core::arch::asm!("vmmcall", inlateout("rax") number => ret,
                in("rdi") a0, in("rsi") a1, in("rdx") a2, options(nostack))
        };
    }
    ret as i64
}

/// Executes `hlt` (AMD APM vol. 3, "HLT"): with interrupts off this stops the vCPU; the
/// hypervisor intercepts it and ends the guest.
pub fn halt() {
    // SAFETY: `hlt` touches neither memory nor the stack; it only stops this vCPU.
    unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
}

/// Executes `ud2` (AMD APM vol. 3, "UD2"): without an IDT the #UD escalates to a triple
/// fault, which the hypervisor intercepts (shutdown).
pub fn invalid_opcode() {
    // SAFETY: only raises #UD in this guest.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
}

/// Reads the u64 at guest-physical address `gpa` (volatile: the access really happens,
/// so it can fault at stage 2).
pub fn read_u64(gpa: u64) -> u64 {
    // SAFETY: in a guest, pointers are identity-mapped GPAs; the access either succeeds
    // or traps to the hypervisor (which maps the page or ends this guest), so it cannot
    // corrupt anything but this guest's own memory, which the test owns.
    unsafe { core::ptr::read_volatile(gpa as *const u64) }
}

/// Writes the u64 `value` at guest-physical address `gpa` (volatile).
pub fn write_u64(gpa: u64, value: u64) {
    // SAFETY: as in `read_u64`: the scenario owns the GPAs it writes, which lie outside
    // its image and stack.
    unsafe { core::ptr::write_volatile(gpa as *mut u64, value) };
}

/// Calls the code at guest-physical address `gpa` (used to test execute rights).
pub fn call_at(gpa: u64) {
    // SAFETY: the scenario wrote a `ret` at `gpa` first (or expects a stage-2 fault that
    // ends the guest before anything runs there); every caller-saved register is
    // declared clobbered.
    unsafe { core::arch::asm!("call {0}", in(reg) gpa, clobber_abi("C")) };
}

/// Fills every general-purpose register but RAX/RSP and every XMM register with
/// values derived from `seed`, yields to the other guests (whose own values pass
/// through the same CPU), and returns how many registers (or XMM halves) differ
/// afterwards: 0 when the hypervisor saves and restores the whole register state.
pub fn yield_keeps_registers(seed: u64) -> u64 {
    let errors: u64;
    on_intel();
    // SAFETY: the block saves and restores RBX and RBP itself, declares every other
    // register it changes as clobbered, and leaves RSP as it found it; the hypercall
    // with RAX = YIELD only lets other guests run.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "push rax",
            "push 0",
            fill_registers_from_seed!(),
            "mov eax, {yield_nr}",
            // VMCALL on Intel, VMMCALL on AMD (`on_intel` has set VENDOR).
            hypercall_instruction!(),
            count_register_differences!(),
            "pop rax",
            "add rsp, 8",
            "pop rbp",
            "pop rbx",
            yield_nr = const hypercall_nr::YIELD,
            vendor = sym VENDOR,
            intel = const VENDOR_INTEL,
            inout("rax") seed => errors,
            out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
        )
    };
    errors
}

/// The guests' global allocator: guests have no heap, so every allocation fails.
///
/// A guest binary that pulls in `alloc` needs a `#[global_allocator]`; a guest
/// declares this one (declaring it needs no `unsafe`). A
/// failed allocation ends in the guest's panic handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHeap;

// SAFETY: `alloc` always reports failure (null), which `GlobalAlloc` allows, and
// `dealloc` is never called, as no allocation ever succeeded.
unsafe impl core::alloc::GlobalAlloc for NoHeap {
    unsafe fn alloc(&self, _layout: core::alloc::Layout) -> *mut u8 {
        core::ptr::null_mut()
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: core::alloc::Layout) {}
}
