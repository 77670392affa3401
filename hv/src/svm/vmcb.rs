//! The VMCB (AMD APM vol. 2, appendix B): one 4 KiB page, control area at 0x000,
//! state-save area at 0x400. Fields are accessed by offset over a byte array, so the
//! layout is explicit and needs no `unsafe`.

/// Offsets in the control area (APM vol. 2, table B-1).
pub mod control {
    /// Intercept CR reads (bits 0-15) and writes (bits 16-31).
    pub const INTERCEPT_CR: usize = 0x000;
    /// Intercept exception vectors (bit n = vector n).
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    /// Intercept vector 3 (instructions and events), see [`super::intercept3`].
    pub const INTERCEPT_VEC3: usize = 0x00C;
    /// Intercept vector 4 (SVM instructions and more), see [`super::intercept4`].
    pub const INTERCEPT_VEC4: usize = 0x010;
    /// Intercept vector 5 (INVLPGB, INVPCID, ...), see [`super::intercept5`].
    pub const INTERCEPT_VEC5: usize = 0x014;
    /// Physical address of the I/O permission map (12 KiB).
    pub const IOPM_BASE_PA: usize = 0x040;
    /// Physical address of the MSR permission map (8 KiB).
    pub const MSRPM_BASE_PA: usize = 0x048;
    /// TSC offset added to the TSC the guest reads (APM vol. 2 15.30.5).
    pub const TSC_OFFSET: usize = 0x050;
    /// Guest ASID (u32).
    pub const GUEST_ASID: usize = 0x058;
    /// TLB control (u8), see [`super::tlb_control`].
    pub const TLB_CONTROL: usize = 0x05C;
    /// Virtual interrupt control (u64); bits 3:0 = V_TPR (the guest's CR8), bit 24 =
    /// V_INTR_MASKING (APM 15.21.1): the host's RFLAGS.IF, not the guest's, masks
    /// physical interrupts while the guest runs, and guest CR8 accesses go to V_TPR.
    pub const V_INTR: usize = 0x060;
    /// Exit code (u64).
    pub const EXIT_CODE: usize = 0x070;
    /// EXITINFO1 (u64).
    pub const EXIT_INFO1: usize = 0x078;
    /// EXITINFO2 (u64).
    pub const EXIT_INFO2: usize = 0x080;
    /// EXITINTINFO (u64): an event that was being delivered when the exit happened.
    pub const EXIT_INT_INFO: usize = 0x088;
    /// Bit 0: nested paging enable (APM 15.25.3).
    pub const NP_ENABLE: usize = 0x090;
    /// Event injection (u64, APM vol. 2 15.20): vector bits 7:0, type bits 10:8, EV
    /// (error code valid) bit 11, V bit 31, error code bits 63:32.
    pub const EVENT_INJ: usize = 0x0A8;
    /// Nested page table root (nCR3).
    pub const N_CR3: usize = 0x0B0;
    /// VMCB clean bits (u32); 0 = reload everything.
    pub const CLEAN_BITS: usize = 0x0C0;
    /// Next sequential RIP (with the NRIPS feature).
    pub const NEXT_RIP: usize = 0x0C8;
}

/// Offsets in the state-save area (APM vol. 2, table B-2), from the start of the VMCB.
pub mod save {
    /// ES segment (selector u16, attributes u16, limit u32, base u64).
    pub const ES: usize = 0x400;
    /// CS segment.
    pub const CS: usize = 0x410;
    /// SS segment.
    pub const SS: usize = 0x420;
    /// DS segment.
    pub const DS: usize = 0x430;
    /// FS segment.
    pub const FS: usize = 0x440;
    /// GS segment.
    pub const GS: usize = 0x450;
    /// GDTR (limit and base used).
    pub const GDTR: usize = 0x460;
    /// LDTR segment.
    pub const LDTR: usize = 0x470;
    /// IDTR (limit and base used).
    pub const IDTR: usize = 0x480;
    /// TR segment.
    pub const TR: usize = 0x490;
    /// Current privilege level (u8).
    pub const CPL: usize = 0x4CB;
    /// EFER.
    pub const EFER: usize = 0x4D0;
    /// CR4.
    pub const CR4: usize = 0x548;
    /// CR3.
    pub const CR3: usize = 0x550;
    /// CR0.
    pub const CR0: usize = 0x558;
    /// DR7.
    pub const DR7: usize = 0x560;
    /// DR6.
    pub const DR6: usize = 0x568;
    /// RFLAGS.
    pub const RFLAGS: usize = 0x570;
    /// RIP.
    pub const RIP: usize = 0x578;
    /// RSP.
    pub const RSP: usize = 0x5D8;
    /// RAX.
    pub const RAX: usize = 0x5F8;
    /// STAR (VMLOAD/VMSAVE state, APM vol. 2 15.5.2).
    pub const STAR: usize = 0x600;
    /// LSTAR.
    pub const LSTAR: usize = 0x608;
    /// CSTAR.
    pub const CSTAR: usize = 0x610;
    /// SFMASK.
    pub const SFMASK: usize = 0x618;
    /// KernelGSBase.
    pub const KERNEL_GS_BASE: usize = 0x620;
    /// SYSENTER_CS.
    pub const SYSENTER_CS: usize = 0x628;
    /// SYSENTER_ESP.
    pub const SYSENTER_ESP: usize = 0x630;
    /// SYSENTER_EIP.
    pub const SYSENTER_EIP: usize = 0x638;
    /// CR2.
    pub const CR2: usize = 0x640;
    /// Guest PAT (used with nested paging).
    pub const G_PAT: usize = 0x668;
}

/// Intercept vector 3 bits (APM vol. 2, table B-1, offset 0x00C).
pub mod intercept3 {
    /// Physical maskable interrupts (INTR).
    pub const INTR: u32 = 1 << 0;
    /// Non-maskable interrupts: the host's, never the guest's.
    pub const NMI: u32 = 1 << 1;
    /// INIT: would reset the processor under the host.
    pub const INIT: u32 = 1 << 3;
    /// RDPMC: the host's performance counters.
    pub const RDPMC: u32 = 1 << 15;
    /// CPUID.
    pub const CPUID: u32 = 1 << 18;
    /// RSM.
    pub const RSM: u32 = 1 << 19;
    /// INVD: would discard the host's dirty cache lines.
    pub const INVD: u32 = 1 << 22;
    /// HLT.
    pub const HLT: u32 = 1 << 24;
    /// INVLPGA: would flush another ASID's translations (the host's included).
    pub const INVLPGA: u32 = 1 << 26;
    /// Task switches.
    pub const TASK_SWITCH: u32 = 1 << 29;
    /// IN/OUT through the I/O permission map.
    pub const IOIO_PROT: u32 = 1 << 27;
    /// RDMSR/WRMSR through the MSR permission map.
    pub const MSR_PROT: u32 = 1 << 28;
    /// Shutdown (triple fault).
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Intercept vector 4 bits (APM vol. 2, table B-1, offset 0x010).
pub mod intercept4 {
    /// VMRUN (must be set, or VMRUN fails).
    pub const VMRUN: u32 = 1 << 0;
    /// VMMCALL.
    pub const VMMCALL: u32 = 1 << 1;
    /// VMLOAD.
    pub const VMLOAD: u32 = 1 << 2;
    /// VMSAVE.
    pub const VMSAVE: u32 = 1 << 3;
    /// STGI.
    pub const STGI: u32 = 1 << 4;
    /// CLGI.
    pub const CLGI: u32 = 1 << 5;
    /// SKINIT.
    pub const SKINIT: u32 = 1 << 6;
    /// WBINVD (emulated: the write-back the guest asks for is the hardware's job).
    pub const WBINVD: u32 = 1 << 9;
    /// MONITOR/MONITORX.
    pub const MONITOR: u32 = 1 << 10;
    /// MWAIT/MWAITX, unconditionally.
    pub const MWAIT: u32 = 1 << 11;
    /// XSETBV (XCR0 is host state we do not switch).
    pub const XSETBV: u32 = 1 << 13;
    /// RDPRU (reads MPERF/APERF).
    pub const RDPRU: u32 = 1 << 14;
}

/// Intercept vector 5 bits (APM vol. 2, table B-1, offset 0x014).
pub mod intercept5 {
    /// INVLPGB (broadcast TLB invalidation).
    pub const INVLPGB: u32 = 1 << 0;
    /// INVLPGB with invalid operands.
    pub const INVLPGB_ILLEGAL: u32 = 1 << 1;
    /// TLBSYNC.
    pub const TLBSYNC: u32 = 1 << 4;
}

/// V_INTR_MASKING in [`control::V_INTR`] (APM vol. 2, 15.21.1).
pub const V_INTR_MASKING: u64 = 1 << 24;

/// TLB_CONTROL values (APM vol. 2, 15.16.1).
pub mod tlb_control {
    /// Flush nothing.
    pub const NOTHING: u8 = 0;
    /// Flush every entry of every ASID.
    pub const ALL: u8 = 1;
    /// Flush this guest's ASID.
    pub const THIS_ASID: u8 = 3;
}

/// Segment attributes in the VMCB's compressed form (APM vol. 2, 15.5.1: descriptor
/// bits 40-47 in attribute bits 0-7, bits 52-55 in attribute bits 8-11).
pub mod attr {
    /// 64-bit code: present, DPL 0, code execute/read accessed, L = 1.
    pub const CODE64: u16 = 0x029B;
    /// Flat data: present, DPL 0, read/write accessed, D/B = 1, G = 1.
    pub const DATA: u16 = 0x0C93;
    /// 16-bit real-mode code: present, DPL 0, code execute/read accessed, D = 0, G = 0.
    pub const CODE16: u16 = 0x009B;
    /// 16-bit real-mode data: present, DPL 0, read/write accessed, B = 0, G = 0.
    pub const DATA16: u16 = 0x0093;
    /// Busy 64-bit TSS, present.
    pub const TSS_BUSY: u16 = 0x008B;
    /// LDT, present.
    pub const LDT: u16 = 0x0082;
}

/// One VMCB page.
#[repr(C, align(4096))]
pub struct Vmcb(pub [u8; 4096]);

impl Default for Vmcb {
    fn default() -> Self {
        Self([0; 4096])
    }
}

impl Vmcb {
    /// Reads the u64 at `offset`.
    pub fn read_u64(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[offset..offset + 8]);
        u64::from_le_bytes(b)
    }

    /// Writes the u64 at `offset`.
    pub fn write_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// Reads the u32 at `offset`.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[offset..offset + 4]);
        u32::from_le_bytes(b)
    }

    /// Writes the u32 at `offset`.
    pub fn write_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Reads the byte at `offset`.
    pub fn read_u8(&self, offset: usize) -> u8 {
        self.0[offset]
    }

    /// Writes the byte at `offset`.
    pub fn write_u8(&mut self, offset: usize, value: u8) {
        self.0[offset] = value;
    }

    /// Writes a segment register (selector, attributes, limit, base) at `offset`.
    pub fn set_segment(&mut self, offset: usize, selector: u16, attr: u16, limit: u32, base: u64) {
        self.0[offset..offset + 2].copy_from_slice(&selector.to_le_bytes());
        self.0[offset + 2..offset + 4].copy_from_slice(&attr.to_le_bytes());
        self.write_u32(offset + 4, limit);
        self.write_u64(offset + 8, base);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_at_their_offsets() {
        let mut v = Vmcb::default();
        v.write_u64(save::RAX, 0x1122_3344_5566_7788);
        assert_eq!(v.0[0x5F8], 0x88);
        assert_eq!(v.0[0x5FF], 0x11);
        assert_eq!(v.read_u64(save::RAX), 0x1122_3344_5566_7788);
        v.set_segment(save::CS, 0x8, attr::CODE64, 0xffff_ffff, 0x1000);
        assert_eq!(&v.0[0x410..0x414], &[0x08, 0x00, 0x9B, 0x02]);
        assert_eq!(v.read_u32(0x414), 0xffff_ffff);
        assert_eq!(v.read_u64(0x418), 0x1000);
        v.write_u32(
            control::INTERCEPT_VEC4,
            intercept4::VMRUN | intercept4::VMMCALL,
        );
        assert_eq!(v.0[0x010], 0b11);
        assert_eq!(core::mem::align_of::<Vmcb>(), 4096);
        assert_eq!(core::mem::size_of::<Vmcb>(), 4096);
    }
}
