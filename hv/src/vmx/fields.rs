//! VMCS field encodings (Intel SDM vol. 3D, appendix B) and the control, exit and
//! segment-attribute bits this hypervisor uses (SDM vol. 3C, chapter 25).
//!
//! The encoding names the field's width and kind (bits 14:13 width, 11:10 type), so
//! the groups below follow the appendix's tables.

/// 16-bit fields (SDM vol. 3D, B.1).
pub mod field16 {
    /// Virtual-processor identifier (B.1.1).
    pub const VPID: u32 = 0x0000;
    /// Guest ES selector (B.1.2).
    pub const GUEST_ES_SELECTOR: u32 = 0x0800;
    /// Guest CS selector.
    pub const GUEST_CS_SELECTOR: u32 = 0x0802;
    /// Guest SS selector.
    pub const GUEST_SS_SELECTOR: u32 = 0x0804;
    /// Guest DS selector.
    pub const GUEST_DS_SELECTOR: u32 = 0x0806;
    /// Guest FS selector.
    pub const GUEST_FS_SELECTOR: u32 = 0x0808;
    /// Guest GS selector.
    pub const GUEST_GS_SELECTOR: u32 = 0x080A;
    /// Guest LDTR selector.
    pub const GUEST_LDTR_SELECTOR: u32 = 0x080C;
    /// Guest TR selector.
    pub const GUEST_TR_SELECTOR: u32 = 0x080E;
    /// Host ES selector (B.1.3).
    pub const HOST_ES_SELECTOR: u32 = 0x0C00;
    /// Host CS selector.
    pub const HOST_CS_SELECTOR: u32 = 0x0C02;
    /// Host SS selector.
    pub const HOST_SS_SELECTOR: u32 = 0x0C04;
    /// Host DS selector.
    pub const HOST_DS_SELECTOR: u32 = 0x0C06;
    /// Host FS selector.
    pub const HOST_FS_SELECTOR: u32 = 0x0C08;
    /// Host GS selector.
    pub const HOST_GS_SELECTOR: u32 = 0x0C0A;
    /// Host TR selector.
    pub const HOST_TR_SELECTOR: u32 = 0x0C0C;
}

/// 64-bit fields (SDM vol. 3D, B.2).
pub mod field64 {
    /// EPT pointer (B.2.1).
    pub const EPT_POINTER: u32 = 0x201A;
    /// TSC offset (SDM vol. 3C 25.6.5).
    pub const TSC_OFFSET: u32 = 0x2010;
    /// Guest-physical address of the last EPT violation or misconfiguration (B.2.2).
    pub const GUEST_PHYSICAL_ADDRESS: u32 = 0x2400;
    /// VMCS link pointer; all ones when unused (B.2.3).
    pub const VMCS_LINK_POINTER: u32 = 0x2800;
    /// Guest IA32_DEBUGCTL.
    pub const GUEST_DEBUGCTL: u32 = 0x2802;
    /// Guest IA32_PAT.
    pub const GUEST_PAT: u32 = 0x2804;
    /// Guest IA32_EFER.
    pub const GUEST_EFER: u32 = 0x2806;
    /// Host IA32_PAT (B.2.4).
    pub const HOST_PAT: u32 = 0x2C00;
    /// Host IA32_EFER.
    pub const HOST_EFER: u32 = 0x2C02;
}

/// 32-bit fields (SDM vol. 3D, B.3).
pub mod field32 {
    /// Pin-based VM-execution controls (B.3.1).
    pub const PIN_CONTROLS: u32 = 0x4000;
    /// Primary processor-based VM-execution controls.
    pub const PROC_CONTROLS: u32 = 0x4002;
    /// Exception bitmap.
    pub const EXCEPTION_BITMAP: u32 = 0x4004;
    /// CR3-target count.
    pub const CR3_TARGET_COUNT: u32 = 0x400A;
    /// VM-exit controls.
    pub const EXIT_CONTROLS: u32 = 0x400C;
    /// VM-exit MSR-store count.
    pub const EXIT_MSR_STORE_COUNT: u32 = 0x400E;
    /// VM-exit MSR-load count.
    pub const EXIT_MSR_LOAD_COUNT: u32 = 0x4010;
    /// VM-entry controls.
    pub const ENTRY_CONTROLS: u32 = 0x4012;
    /// VM-entry MSR-load count.
    pub const ENTRY_MSR_LOAD_COUNT: u32 = 0x4014;
    /// VM-entry interruption-information field.
    pub const ENTRY_INTERRUPTION_INFO: u32 = 0x4016;
    /// VM-entry exception error code (SDM vol. 3C 25.8.3).
    pub const ENTRY_EXCEPTION_ERROR_CODE: u32 = 0x4018;
    /// Secondary processor-based VM-execution controls.
    pub const PROC_CONTROLS2: u32 = 0x401E;
    /// VM-instruction error (B.3.2, read-only).
    pub const VM_INSTRUCTION_ERROR: u32 = 0x4400;
    /// Exit reason.
    pub const EXIT_REASON: u32 = 0x4402;
    /// VM-exit interruption information.
    pub const EXIT_INTERRUPTION_INFO: u32 = 0x4404;
    /// VM-exit instruction length.
    pub const EXIT_INSTRUCTION_LEN: u32 = 0x440C;
    /// Guest ES limit (B.3.3).
    pub const GUEST_ES_LIMIT: u32 = 0x4800;
    /// Guest CS limit.
    pub const GUEST_CS_LIMIT: u32 = 0x4802;
    /// Guest SS limit.
    pub const GUEST_SS_LIMIT: u32 = 0x4804;
    /// Guest DS limit.
    pub const GUEST_DS_LIMIT: u32 = 0x4806;
    /// Guest FS limit.
    pub const GUEST_FS_LIMIT: u32 = 0x4808;
    /// Guest GS limit.
    pub const GUEST_GS_LIMIT: u32 = 0x480A;
    /// Guest LDTR limit.
    pub const GUEST_LDTR_LIMIT: u32 = 0x480C;
    /// Guest TR limit.
    pub const GUEST_TR_LIMIT: u32 = 0x480E;
    /// Guest GDTR limit.
    pub const GUEST_GDTR_LIMIT: u32 = 0x4810;
    /// Guest IDTR limit.
    pub const GUEST_IDTR_LIMIT: u32 = 0x4812;
    /// Guest ES access rights.
    pub const GUEST_ES_AR: u32 = 0x4814;
    /// Guest CS access rights.
    pub const GUEST_CS_AR: u32 = 0x4816;
    /// Guest SS access rights.
    pub const GUEST_SS_AR: u32 = 0x4818;
    /// Guest DS access rights.
    pub const GUEST_DS_AR: u32 = 0x481A;
    /// Guest FS access rights.
    pub const GUEST_FS_AR: u32 = 0x481C;
    /// Guest GS access rights.
    pub const GUEST_GS_AR: u32 = 0x481E;
    /// Guest LDTR access rights.
    pub const GUEST_LDTR_AR: u32 = 0x4820;
    /// Guest TR access rights.
    pub const GUEST_TR_AR: u32 = 0x4822;
    /// Guest interruptibility state (bit 0 blocking by STI, bit 1 by MOV SS).
    pub const GUEST_INTERRUPTIBILITY: u32 = 0x4824;
    /// Guest activity state (0 = active).
    pub const GUEST_ACTIVITY: u32 = 0x4826;
    /// Guest IA32_SYSENTER_CS.
    pub const GUEST_SYSENTER_CS: u32 = 0x482A;
    /// Host IA32_SYSENTER_CS (B.3.4).
    pub const HOST_SYSENTER_CS: u32 = 0x4C00;
}

/// Natural-width fields (SDM vol. 3D, B.4).
pub mod natural {
    /// CR0 guest/host mask (B.4.1).
    pub const CR0_MASK: u32 = 0x6000;
    /// CR4 guest/host mask.
    pub const CR4_MASK: u32 = 0x6002;
    /// CR0 read shadow.
    pub const CR0_READ_SHADOW: u32 = 0x6004;
    /// CR4 read shadow.
    pub const CR4_READ_SHADOW: u32 = 0x6006;
    /// Exit qualification (B.4.2, read-only).
    pub const EXIT_QUALIFICATION: u32 = 0x6400;
    /// Guest-linear address.
    pub const GUEST_LINEAR_ADDRESS: u32 = 0x640A;
    /// Guest CR0 (B.4.3).
    pub const GUEST_CR0: u32 = 0x6800;
    /// Guest CR3.
    pub const GUEST_CR3: u32 = 0x6802;
    /// Guest CR4.
    pub const GUEST_CR4: u32 = 0x6804;
    /// Guest ES base.
    pub const GUEST_ES_BASE: u32 = 0x6806;
    /// Guest CS base.
    pub const GUEST_CS_BASE: u32 = 0x6808;
    /// Guest SS base.
    pub const GUEST_SS_BASE: u32 = 0x680A;
    /// Guest DS base.
    pub const GUEST_DS_BASE: u32 = 0x680C;
    /// Guest FS base.
    pub const GUEST_FS_BASE: u32 = 0x680E;
    /// Guest GS base.
    pub const GUEST_GS_BASE: u32 = 0x6810;
    /// Guest LDTR base.
    pub const GUEST_LDTR_BASE: u32 = 0x6812;
    /// Guest TR base.
    pub const GUEST_TR_BASE: u32 = 0x6814;
    /// Guest GDTR base.
    pub const GUEST_GDTR_BASE: u32 = 0x6816;
    /// Guest IDTR base.
    pub const GUEST_IDTR_BASE: u32 = 0x6818;
    /// Guest DR7.
    pub const GUEST_DR7: u32 = 0x681A;
    /// Guest RSP.
    pub const GUEST_RSP: u32 = 0x681C;
    /// Guest RIP.
    pub const GUEST_RIP: u32 = 0x681E;
    /// Guest RFLAGS.
    pub const GUEST_RFLAGS: u32 = 0x6820;
    /// Guest pending debug exceptions.
    pub const GUEST_PENDING_DEBUG: u32 = 0x6822;
    /// Guest IA32_SYSENTER_ESP.
    pub const GUEST_SYSENTER_ESP: u32 = 0x6824;
    /// Guest IA32_SYSENTER_EIP.
    pub const GUEST_SYSENTER_EIP: u32 = 0x6826;
    /// Host CR0 (B.4.4).
    pub const HOST_CR0: u32 = 0x6C00;
    /// Host CR3.
    pub const HOST_CR3: u32 = 0x6C02;
    /// Host CR4.
    pub const HOST_CR4: u32 = 0x6C04;
    /// Host FS base.
    pub const HOST_FS_BASE: u32 = 0x6C06;
    /// Host GS base.
    pub const HOST_GS_BASE: u32 = 0x6C08;
    /// Host TR base.
    pub const HOST_TR_BASE: u32 = 0x6C0A;
    /// Host GDTR base.
    pub const HOST_GDTR_BASE: u32 = 0x6C0C;
    /// Host IDTR base.
    pub const HOST_IDTR_BASE: u32 = 0x6C0E;
    /// Host IA32_SYSENTER_ESP.
    pub const HOST_SYSENTER_ESP: u32 = 0x6C10;
    /// Host IA32_SYSENTER_EIP.
    pub const HOST_SYSENTER_EIP: u32 = 0x6C12;
    /// Host RSP (written by the world switch before every entry).
    pub const HOST_RSP: u32 = 0x6C14;
    /// Host RIP (the world switch's exit label).
    pub const HOST_RIP: u32 = 0x6C16;
}

/// Pin-based VM-execution controls (SDM vol. 3C 25.6.1, table 25-5).
pub mod pin {
    /// Bit 0: external interrupts cause VM exits.
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
}

/// Primary processor-based VM-execution controls (SDM vol. 3C 25.6.2, table 25-6).
pub mod proc {
    /// Bit 3: use TSC offsetting.
    pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
    /// Bit 7: HLT exits.
    pub const HLT_EXITING: u32 = 1 << 7;
    /// Bit 10: MWAIT exits.
    pub const MWAIT_EXITING: u32 = 1 << 10;
    /// Bit 11: RDPMC exits.
    pub const RDPMC_EXITING: u32 = 1 << 11;
    /// Bit 9: INVLPG exits.
    pub const INVLPG_EXITING: u32 = 1 << 9;
    /// Bit 15: MOV to CR3 exits.
    pub const CR3_LOAD_EXITING: u32 = 1 << 15;
    /// Bit 16: MOV from CR3 exits.
    pub const CR3_STORE_EXITING: u32 = 1 << 16;
    /// Bit 19: MOV to CR8 exits.
    pub const CR8_LOAD_EXITING: u32 = 1 << 19;
    /// Bit 20: MOV from CR8 exits.
    pub const CR8_STORE_EXITING: u32 = 1 << 20;
    /// Bit 24: every IN/OUT exits.
    pub const UNCONDITIONAL_IO_EXITING: u32 = 1 << 24;
    /// Bit 25: use I/O bitmaps.
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    /// Bit 28: use MSR bitmaps (clear: every RDMSR/WRMSR exits).
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    /// Bit 29: MONITOR exits.
    pub const MONITOR_EXITING: u32 = 1 << 29;
    /// Bit 31: activate the secondary controls.
    pub const SECONDARY_CONTROLS: u32 = 1 << 31;
}

/// Secondary processor-based VM-execution controls (SDM vol. 3C 25.6.2, table 25-7).
pub mod proc2 {
    /// Bit 1: enable EPT.
    pub const ENABLE_EPT: u32 = 1 << 1;
    /// Bit 5: enable VPID.
    pub const ENABLE_VPID: u32 = 1 << 5;
    /// Bit 6: WBINVD exits.
    pub const WBINVD_EXITING: u32 = 1 << 6;
    /// Bit 7: unrestricted guest (real mode and unpaged protected mode under EPT).
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
}

/// VM-exit controls (SDM vol. 3C 25.7.1, table 25-13).
pub mod exit_ctl {
    /// Bit 2: save the guest's DR7 and IA32_DEBUGCTL.
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    /// Bit 9: host address-space size (return to 64-bit mode).
    pub const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    /// Bit 15: acknowledge the interrupt controller on an external-interrupt exit
    /// (left clear: the host's IDT handler takes the interrupt).
    pub const ACK_INTERRUPT_ON_EXIT: u32 = 1 << 15;
    /// Bit 18: save guest IA32_PAT.
    pub const SAVE_PAT: u32 = 1 << 18;
    /// Bit 19: load host IA32_PAT.
    pub const LOAD_PAT: u32 = 1 << 19;
    /// Bit 20: save guest IA32_EFER.
    pub const SAVE_EFER: u32 = 1 << 20;
    /// Bit 21: load host IA32_EFER.
    pub const LOAD_EFER: u32 = 1 << 21;
}

/// VM-entry controls (SDM vol. 3C 25.8.1, table 25-15).
pub mod entry_ctl {
    /// Bit 2: load the guest's DR7 and IA32_DEBUGCTL.
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    /// Bit 9: IA-32e mode guest.
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    /// Bit 14: load guest IA32_PAT.
    pub const LOAD_PAT: u32 = 1 << 14;
    /// Bit 15: load guest IA32_EFER.
    pub const LOAD_EFER: u32 = 1 << 15;
}

/// Segment access rights in the VMCS format (SDM vol. 3C 25.4.1, table 25-2): type
/// bits 3:0, S bit 4, DPL bits 6:5, P bit 7, L bit 13, D/B bit 14, G bit 15,
/// unusable bit 16.
pub mod ar {
    /// 64-bit code: execute/read accessed, S, P, L, G.
    pub const CODE64: u32 = 0xA09B;
    /// Flat data: read/write accessed, S, P, D/B, G.
    pub const DATA: u32 = 0xC093;
    /// 16-bit real-mode code: execute/read accessed, S, P; D = 0, G = 0.
    pub const CODE16: u32 = 0x009B;
    /// 16-bit real-mode data: read/write accessed, S, P; B = 0, G = 0.
    pub const DATA16: u32 = 0x0093;
    /// Busy 64-bit TSS, present.
    pub const TSS_BUSY: u32 = 0x008B;
    /// The segment is unusable.
    pub const UNUSABLE: u32 = 1 << 16;
}

/// Guest interruptibility bits (SDM vol. 3C 25.4.2, table 25-3): blocking by STI
/// (bit 0) and by MOV SS (bit 1), cleared when an instruction is skipped.
pub const INTERRUPTIBILITY_STI_MOVSS: u32 = 0b11;

#[cfg(test)]
mod tests {
    use super::*;

    /// Bits 14:13 of an encoding give the width (0 = 16-bit, 1 = 64-bit, 2 = 32-bit,
    /// 3 = natural), bit 0 the access type (SDM vol. 3D, B; table 25-21).
    fn width(encoding: u32) -> u32 {
        (encoding >> 13) & 3
    }

    #[test]
    fn encodings_carry_their_width() {
        for e in [
            field16::VPID,
            field16::GUEST_TR_SELECTOR,
            field16::HOST_TR_SELECTOR,
        ] {
            assert_eq!(width(e), 0, "{e:#x}");
        }
        for e in [
            field64::EPT_POINTER,
            field64::GUEST_PHYSICAL_ADDRESS,
            field64::VMCS_LINK_POINTER,
            field64::HOST_EFER,
        ] {
            assert_eq!(width(e), 1, "{e:#x}");
            assert_eq!(e & 1, 0, "full (not high-half) access: {e:#x}");
        }
        for e in [
            field32::PROC_CONTROLS2,
            field32::EXIT_REASON,
            field32::GUEST_TR_AR,
            field32::HOST_SYSENTER_CS,
        ] {
            assert_eq!(width(e), 2, "{e:#x}");
        }
        for e in [
            natural::CR0_MASK,
            natural::EXIT_QUALIFICATION,
            natural::GUEST_RIP,
            natural::HOST_RIP,
        ] {
            assert_eq!(width(e), 3, "{e:#x}");
        }
    }

    #[test]
    fn code_segment_is_long_mode_not_32_bit() {
        // L = 1 requires D/B = 0 for a 64-bit code segment (SDM vol. 3A 5.2.1).
        assert_ne!(ar::CODE64 & (1 << 13), 0);
        assert_eq!(ar::CODE64 & (1 << 14), 0);
        assert_eq!(ar::CODE64 & 0x80, 0x80);
        assert_eq!(ar::TSS_BUSY & 0xF, 0xB);
    }
}
