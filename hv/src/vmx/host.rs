//! The host state a VM exit returns to, read from the running CPU: control registers,
//! segment selectors, descriptor tables and the TSS base (SDM vol. 3C 25.5).

use core::arch::asm;

pub(super) fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub(super) fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub(super) fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// The host state a VM exit returns to: segment selectors, descriptor tables, TR.
#[derive(Debug, Clone, Copy)]
pub(super) struct HostSegments {
    pub(super) cs: u16,
    pub(super) ss: u16,
    pub(super) ds: u16,
    pub(super) es: u16,
    pub(super) fs: u16,
    pub(super) gs: u16,
    pub(super) tr: u16,
    pub(super) gdt_base: u64,
    pub(super) idt_base: u64,
    pub(super) tr_base: u64,
}

/// The base address in a 16-byte system-segment descriptor (SDM vol. 3A 7.2.3,
/// figure 7-4): bits 15:0 in bytes 2-3, 23:16 in byte 4, 31:24 in byte 7, 63:32 in
/// bytes 8-11.
fn system_descriptor_base(low: u64, high: u64) -> u64 {
    ((low >> 16) & 0xFF_FFFF) | (((low >> 56) & 0xFF) << 24) | ((high & 0xFFFF_FFFF) << 32)
}

pub(super) fn host_segments() -> HostSegments {
    let (cs, ss, ds, es, fs, gs, tr): (u16, u16, u16, u16, u16, u16, u16);
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    // SAFETY: reading segment registers and descriptor-table registers has no side
    // effects; SGDT/SIDT store 10 bytes into the buffers.
    unsafe {
        asm!(
            "mov {0:x}, cs", "mov {1:x}, ss", "mov {2:x}, ds", "mov {3:x}, es",
            "mov {4:x}, fs", "mov {5:x}, gs", "str {6:x}",
            "sgdt [{7}]", "sidt [{8}]",
            out(reg) cs, out(reg) ss, out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs,
            out(reg) tr, in(reg) gdtr.as_mut_ptr(), in(reg) idtr.as_mut_ptr(),
            options(nostack, preserves_flags)
        )
    };
    let base = |t: &[u8; 10]| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&t[2..10]);
        u64::from_le_bytes(b)
    };
    let gdt_base = base(&gdtr);
    let index = u64::from(tr & !7);
    let descriptor = (gdt_base + index) as *const [u64; 2];
    // SAFETY: the GDT is identity-mapped kernel memory and TR indexes its 16-byte TSS
    // descriptor (loaded by the kernel's GDT set-up).
    let [low, high] = unsafe { descriptor.read_unaligned() };
    HostSegments {
        cs,
        ss,
        ds,
        es,
        fs,
        gs,
        tr,
        gdt_base,
        idt_base: base(&idtr),
        tr_base: system_descriptor_base(low, high),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss_descriptor_base() {
        // A 64-bit TSS descriptor for base 0xFFFF_8000_1234_5678, limit 0x67.
        let base: u64 = 0xFFFF_8000_1234_5678;
        let low = 0x67 | ((base & 0xFF_FFFF) << 16) | (0x89 << 40) | ((base >> 24 & 0xFF) << 56);
        let high = base >> 32;
        assert_eq!(system_descriptor_base(low, high), base);
    }
}
