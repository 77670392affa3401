//! The scheduling timer: the legacy PIC remapped to vectors 0x20-0x2F and the PIT at
//! 100 Hz on IRQ 0. The host keeps interrupts disabled except in one window of the
//! world switch (after #VMEXIT, between STGI and CLI), so a tick either ends a guest's
//! time slice (an INTR exit) or is taken right after one; this handler only counts it.

use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

/// First vector of the remapped PICs (master: 0x20-0x27, slave: 0x28-0x2F).
pub const IRQ_BASE: u8 = 0x20;
/// Timer frequency.
pub const HZ: u32 = 100;
/// PIT input clock (Intel 8254 datasheet; IBM PC: 1.193182 MHz).
const PIT_CLOCK: u32 = 1_193_182;

static TICKS: AtomicU64 = AtomicU64::new(0);

/// Timer ticks since [`init`].
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

macro_rules! irq_stub {
    ($n:literal) => {
        concat!("irq_stub_", $n, ":\n push ", $n, "\n jmp irq_common\n")
    };
}

// Entry stubs for vectors 0x20-0x2F: save the caller-saved registers (and RBP, which
// keeps the stack 16-byte aligned for the call), call `irq_handler(vector)`, return.
core::arch::global_asm!(
    ".section .text.irq, \"ax\"",
    irq_stub!(32), irq_stub!(33), irq_stub!(34), irq_stub!(35),
    irq_stub!(36), irq_stub!(37), irq_stub!(38), irq_stub!(39),
    irq_stub!(40), irq_stub!(41), irq_stub!(42), irq_stub!(43),
    irq_stub!(44), irq_stub!(45), irq_stub!(46), irq_stub!(47),
    "irq_common:",
    " push rax", " push rcx", " push rdx", " push rsi", " push rdi",
    " push r8", " push r9", " push r10", " push r11", " push rbp",
    " mov rdi, [rsp + 80]",
    " call {handler}",
    " pop rbp", " pop r11", " pop r10", " pop r9", " pop r8",
    " pop rdi", " pop rsi", " pop rdx", " pop rcx", " pop rax",
    " add rsp, 8",
    " iretq",
    ".section .rodata.irq, \"a\"",
    ".balign 8",
    ".global irq_stub_table",
    "irq_stub_table:",
    " .quad irq_stub_32, irq_stub_33, irq_stub_34, irq_stub_35",
    " .quad irq_stub_36, irq_stub_37, irq_stub_38, irq_stub_39",
    " .quad irq_stub_40, irq_stub_41, irq_stub_42, irq_stub_43",
    " .quad irq_stub_44, irq_stub_45, irq_stub_46, irq_stub_47",
    handler = sym irq_handler,
);

unsafe extern "C" {
    static irq_stub_table: [u64; 16];
}

/// Addresses of the entry stubs for vectors `IRQ_BASE..IRQ_BASE + 16`.
pub fn stubs() -> [u64; 16] {
    // SAFETY: a 16-entry table of addresses in read-only data, defined above.
    unsafe { irq_stub_table }
}

fn outb(port: u16, value: u8) {
    let mut p = Port::<u8>::new(port);
    // SAFETY: PIC and PIT registers only; no memory effects.
    unsafe { p.write(value) };
}

fn inb(port: u16) -> u8 {
    let mut p = Port::<u8>::new(port);
    // SAFETY: as above.
    unsafe { p.read() }
}

/// PIC command/data ports and commands (Intel 8259A datasheet): ICW1 = 0x11 (edge,
/// cascade, ICW4 needed), ICW4 = 0x01 (8086 mode), OCW2 EOI = 0x20, OCW3 read ISR =
/// 0x0B.
const PIC1_CMD: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_CMD: u16 = 0xA0;
const PIC2_DATA: u16 = 0xA1;
const PIC_EOI: u8 = 0x20;
const PIC_READ_ISR: u8 = 0x0B;

/// Remaps the PICs to [`IRQ_BASE`], unmasks only IRQ 0 and starts the PIT at [`HZ`].
pub fn init() {
    outb(PIC1_CMD, 0x11);
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, IRQ_BASE);
    outb(PIC2_DATA, IRQ_BASE + 8);
    outb(PIC1_DATA, 4); // slave on IRQ 2
    outb(PIC2_DATA, 2); // cascade identity
    outb(PIC1_DATA, 0x01);
    outb(PIC2_DATA, 0x01);
    outb(PIC1_DATA, 0xFE); // only IRQ 0
    outb(PIC2_DATA, 0xFF);
    // PIT channel 0, lobyte/hibyte, mode 2 (rate generator): command 0x34 (8254).
    let divisor = (PIT_CLOCK / HZ) as u16;
    outb(0x43, 0x34);
    outb(0x40, divisor as u8);
    outb(0x40, (divisor >> 8) as u8);
}

/// Measures the TSC frequency against PIT channel 2 (gated by port 0x61 bit 0, its
/// output in bit 5): 10 ms in mode 0, the method of the IBM PC/AT technical reference
/// that Linux also uses. Returns cycles per second.
pub fn calibrate_tsc() -> u64 {
    const MS: u32 = 10;
    let count = (PIT_CLOCK / (1000 / MS)) as u16;
    let b = inb(0x61);
    outb(0x61, (b & !0x02) | 0x01); // gate high, speaker off
    outb(0x43, 0xB0); // channel 2, lobyte/hibyte, mode 0
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    let start = hv::clock::tsc();
    let mut spins = 0u64;
    while inb(0x61) & 0x20 == 0 && spins < 100_000_000 {
        spins += 1;
    }
    let cycles = hv::clock::tsc() - start;
    outb(0x61, b);
    cycles * u64::from(1000 / MS)
}

/// Counts timer ticks and acknowledges the PIC; spurious IRQ 7/15 (ISR bit clear) get
/// no end-of-interrupt.
extern "C" fn irq_handler(vector: u64) {
    let irq = vector.wrapping_sub(u64::from(IRQ_BASE)) as u8;
    if irq == 7 || irq == 15 {
        let (cmd, bit) = if irq == 7 {
            (PIC1_CMD, 7)
        } else {
            (PIC2_CMD, 7)
        };
        outb(cmd, PIC_READ_ISR);
        if inb(cmd) & (1 << bit) == 0 {
            if irq == 15 {
                outb(PIC1_CMD, PIC_EOI);
            }
            return;
        }
    }
    if irq == 0 {
        TICKS.fetch_add(1, Ordering::Relaxed);
    }
    if irq >= 8 {
        outb(PIC2_CMD, PIC_EOI);
    }
    outb(PIC1_CMD, PIC_EOI);
}
