//! The host IDT: one entry stub per exception vector (0-31), each on an IST stack,
//! plus the device-interrupt stubs of [`super::timer`] (vectors 0x20-0x2F).
//! Any host exception is a bug: the
//! handler prints the vector, error code and every register, then ends the run with
//! [`RunStatus::HostFault`].

use hv::abi::RunStatus;
use spin::Once;

use super::{console, fatal, gdt};

/// Registers saved by the entry stubs, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    rbp: u64,
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

macro_rules! stub_noerr {
    ($n:literal) => {
        concat!(
            "exc_stub_",
            $n,
            ":\n push 0\n push ",
            $n,
            "\n jmp exception_common\n"
        )
    };
}
macro_rules! stub_err {
    ($n:literal) => {
        concat!(
            "exc_stub_",
            $n,
            ":\n push ",
            $n,
            "\n jmp exception_common\n"
        )
    };
}

// Vectors that push an error code: Intel SDM vol. 3 table 6-1 (8 #DF, 10 #TS, 11 #NP,
// 12 #SS, 13 #GP, 14 #PF, 17 #AC, 21 #CP, 29 #VC, 30 #SX).
core::arch::global_asm!(
    ".section .text.exceptions, \"ax\"",
    stub_noerr!(0), stub_noerr!(1), stub_noerr!(2), stub_noerr!(3),
    stub_noerr!(4), stub_noerr!(5), stub_noerr!(6), stub_noerr!(7),
    stub_err!(8), stub_noerr!(9), stub_err!(10), stub_err!(11),
    stub_err!(12), stub_err!(13), stub_err!(14), stub_noerr!(15),
    stub_noerr!(16), stub_err!(17), stub_noerr!(18), stub_noerr!(19),
    stub_noerr!(20), stub_err!(21), stub_noerr!(22), stub_noerr!(23),
    stub_noerr!(24), stub_noerr!(25), stub_noerr!(26), stub_noerr!(27),
    stub_noerr!(28), stub_err!(29), stub_err!(30), stub_noerr!(31),
    "exception_common:",
    " push r15", " push r14", " push r13", " push r12", " push r11", " push r10",
    " push r9", " push r8", " push rbp", " push rdi", " push rsi", " push rdx",
    " push rcx", " push rbx", " push rax",
    " mov rdi, rsp",
    " and rsp, -16",
    " call {handler}",
    " ud2",
    ".section .rodata.exceptions, \"a\"",
    ".balign 8",
    ".global exception_stub_table",
    "exception_stub_table:",
    " .quad exc_stub_0, exc_stub_1, exc_stub_2, exc_stub_3",
    " .quad exc_stub_4, exc_stub_5, exc_stub_6, exc_stub_7",
    " .quad exc_stub_8, exc_stub_9, exc_stub_10, exc_stub_11",
    " .quad exc_stub_12, exc_stub_13, exc_stub_14, exc_stub_15",
    " .quad exc_stub_16, exc_stub_17, exc_stub_18, exc_stub_19",
    " .quad exc_stub_20, exc_stub_21, exc_stub_22, exc_stub_23",
    " .quad exc_stub_24, exc_stub_25, exc_stub_26, exc_stub_27",
    " .quad exc_stub_28, exc_stub_29, exc_stub_30, exc_stub_31",
    handler = sym exception_handler,
);

unsafe extern "C" {
    static exception_stub_table: [u64; 32];
}

/// A 64-bit IDT gate descriptor (Intel SDM vol. 3 6.14.1, figure 6-8).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    /// Bits 0-2: IST index.
    ist: u8,
    /// P (bit 7), DPL (bits 5-6), type (bits 0-3; 0xE = 64-bit interrupt gate).
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

/// Present, DPL 0, 64-bit interrupt gate (SDM vol. 3 table 3-2, type 0xE).
const GATE_INTERRUPT_PRESENT: u8 = 0x8E;

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: Once<Idt> = Once::new();

/// Builds and loads the IDT.
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = Idt([Gate::default(); 256]);
        let selector = gdt::code_selector().0;
        // SAFETY: `exception_stub_table` is a 32-entry table of addresses in read-only
        // data defined by the assembly above.
        let stubs = unsafe { exception_stub_table };
        let irqs = super::timer::stubs()
            .into_iter()
            .enumerate()
            .map(|(i, addr)| (usize::from(super::timer::IRQ_BASE) + i, addr));
        for (vector, addr) in stubs.into_iter().enumerate().chain(irqs) {
            let ist = match vector {
                2 | 18 => gdt::IST_NMI,
                8 => gdt::IST_DOUBLE_FAULT,
                32.. => gdt::IST_IRQ,
                _ => gdt::IST_EXCEPTION,
            };
            idt.0[vector] = Gate {
                offset_low: addr as u16,
                selector,
                ist: ist as u8,
                type_attr: GATE_INTERRUPT_PRESENT,
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        idt
    });
    let pointer = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT is 'static and every present gate points at an entry stub.
    unsafe { x86_64::instructions::tables::lidt(&pointer) };
}

const NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 FP error",
    "alignment check",
    "machine check",
    "SIMD FP error",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

/// Called by `exception_common` with the saved registers; never returns.
extern "C" fn exception_handler(frame: &TrapFrame) -> ! {
    let name = NAMES.get(frame.vector as usize).copied().unwrap_or("?");
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    console::print_forced(format_args!(
        "\n[hv] HOST EXCEPTION {} ({name}), error code {:#x}\n\
         [hv]   rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x} cr2 {cr2:#x}\n\
         [hv]   rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n\
         [hv]   rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}\n\
         [hv]   r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}\n\
         [hv]   r13 {:#018x} r14 {:#018x} r15 {:#018x}\n",
        frame.vector,
        frame.error_code,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss,
        frame.rax,
        frame.rbx,
        frame.rcx,
        frame.rdx,
        frame.rsi,
        frame.rdi,
        frame.rbp,
        frame.r8,
        frame.r9,
        frame.r10,
        frame.r11,
        frame.r12,
        frame.r13,
        frame.r14,
        frame.r15,
    ));
    console::print_forced(format_args!(
        "HV: HOST FAULT (exception {}), status {}\n",
        frame.vector,
        RunStatus::HostFault.qemu_exit_status()
    ));
    fatal::exit(RunStatus::HostFault)
}
