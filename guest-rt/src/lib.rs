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
            "mov eax, {yield_nr}",
            // VMCALL on Intel, VMMCALL on AMD (`on_intel` has set VENDOR).
            "cmp byte ptr [rip + {vendor}], {intel}",
            "je 3f",
            "vmmcall",
            "jmp 4f",
            "3:",
            "vmcall",
            "4:",
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
