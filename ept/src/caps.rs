//! What the stage-2 hardware supports: leaf sizes, accessed/dirty flags,
//! execute-only leaves, invalidation types, address widths.
//!
//! Built from `IA32_VMX_EPT_VPID_CAP` on Intel ([`Stage2Caps::from_vmx_ept_vpid_cap`])
//! or from CPUID on AMD ([`Stage2Caps::npt`]). The table refuses leaves the
//! capabilities do not allow, and the validator flags them.

/// Capabilities of the stage-2 translation hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Caps {
    /// 2 MiB leaves (EPT: `IA32_VMX_EPT_VPID_CAP` bit 16; NPT: always).
    pub leaf_2m: bool,
    /// 1 GiB leaves (EPT: `IA32_VMX_EPT_VPID_CAP` bit 17; NPT: CPUID
    /// 8000_0001h EDX bit 26, Page1GB).
    pub leaf_1g: bool,
    /// Accessed/dirty flags (EPT: bit 21, enabled through EPTP bit 6; NPT: always,
    /// APM Vol. 2 §15.25.5).
    pub accessed_dirty: bool,
    /// Execute-only leaves (EPT: bit 0; NPT: never).
    pub execute_only: bool,
    /// INVEPT single-context (EPT: bits 20 and 25).
    pub invept_single: bool,
    /// INVEPT all-context (EPT: bits 20 and 26).
    pub invept_all: bool,
    /// A 4-level walk is supported (EPT: bit 6; NPT: always).
    pub walk_4level: bool,
    /// Write-back paging-structure memory type in the EPTP (EPT: bit 14; NPT: always).
    pub mem_wb: bool,
    /// Uncacheable paging-structure memory type in the EPTP (EPT: bit 8; NPT: always).
    pub mem_uc: bool,
    /// Guest-physical address width: GPAs at or above `2^max_phys_bits` are refused
    /// (48 for a 4-level walk).
    pub max_phys_bits: u8,
    /// Host MAXPHYADDR (CPUID 8000_0008h EAX bits 7:0): entry address bits at or above
    /// it are reserved. 52, the architectural maximum, unless told otherwise.
    pub host_phys_bits: u8,
}

/// `IA32_VMX_EPT_VPID_CAP` (MSR 0x48C) bits (SDM Vol. 3D Appendix A.10).
pub mod vmx_cap {
    /// Bit 0: execute-only EPT translations.
    pub const EXECUTE_ONLY: u64 = 1 << 0;
    /// Bit 6: page-walk length of 4.
    pub const WALK_4: u64 = 1 << 6;
    /// Bit 8: the EPTP may use the UC memory type.
    pub const MEM_UC: u64 = 1 << 8;
    /// Bit 14: the EPTP may use the WB memory type.
    pub const MEM_WB: u64 = 1 << 14;
    /// Bit 16: 2 MiB EPT leaves (PDE bit 7).
    pub const LEAF_2M: u64 = 1 << 16;
    /// Bit 17: 1 GiB EPT leaves (PDPTE bit 7).
    pub const LEAF_1G: u64 = 1 << 17;
    /// Bit 20: the INVEPT instruction.
    pub const INVEPT: u64 = 1 << 20;
    /// Bit 21: accessed and dirty flags for EPT.
    pub const ACCESSED_DIRTY: u64 = 1 << 21;
    /// Bit 25: single-context INVEPT.
    pub const INVEPT_SINGLE: u64 = 1 << 25;
    /// Bit 26: all-context INVEPT.
    pub const INVEPT_ALL: u64 = 1 << 26;
}

impl Stage2Caps {
    /// GPA width of a 4-level walk.
    pub const DEFAULT_MAX_PHYS_BITS: u8 = 48;
    /// Architectural maximum physical-address width.
    pub const ARCH_HOST_PHYS_BITS: u8 = 52;

    /// Decodes `IA32_VMX_EPT_VPID_CAP` (SDM Vol. 3D Appendix A.10).
    pub const fn from_vmx_ept_vpid_cap(cap: u64) -> Self {
        let invept = cap & vmx_cap::INVEPT != 0;
        Self {
            leaf_2m: cap & vmx_cap::LEAF_2M != 0,
            leaf_1g: cap & vmx_cap::LEAF_1G != 0,
            accessed_dirty: cap & vmx_cap::ACCESSED_DIRTY != 0,
            execute_only: cap & vmx_cap::EXECUTE_ONLY != 0,
            invept_single: invept && cap & vmx_cap::INVEPT_SINGLE != 0,
            invept_all: invept && cap & vmx_cap::INVEPT_ALL != 0,
            walk_4level: cap & vmx_cap::WALK_4 != 0,
            mem_wb: cap & vmx_cap::MEM_WB != 0,
            mem_uc: cap & vmx_cap::MEM_UC != 0,
            max_phys_bits: Self::DEFAULT_MAX_PHYS_BITS,
            host_phys_bits: Self::ARCH_HOST_PHYS_BITS,
        }
    }

    /// AMD nested paging (APM Vol. 2 §15.25): 2 MiB leaves and A/D flags always,
    /// 1 GiB leaves when CPUID 8000_0001h EDX bit 26 (Page1GB) is set (`gbpages`),
    /// no execute-only leaves, no INVEPT (invalidation goes through the VMCB
    /// TLB_CONTROL field).
    pub const fn npt(gbpages: bool) -> Self {
        Self {
            leaf_2m: true,
            leaf_1g: gbpages,
            accessed_dirty: true,
            execute_only: false,
            invept_single: false,
            invept_all: false,
            walk_4level: true,
            mem_wb: true,
            mem_uc: true,
            max_phys_bits: Self::DEFAULT_MAX_PHYS_BITS,
            host_phys_bits: Self::ARCH_HOST_PHYS_BITS,
        }
    }

    /// Everything supported: for tests.
    pub const fn all() -> Self {
        Self {
            leaf_2m: true,
            leaf_1g: true,
            accessed_dirty: true,
            execute_only: true,
            invept_single: true,
            invept_all: true,
            walk_4level: true,
            mem_wb: true,
            mem_uc: true,
            max_phys_bits: Self::DEFAULT_MAX_PHYS_BITS,
            host_phys_bits: Self::ARCH_HOST_PHYS_BITS,
        }
    }

    /// The same capabilities with another host MAXPHYADDR.
    pub const fn with_host_phys_bits(mut self, bits: u8) -> Self {
        self.host_phys_bits = bits;
        self
    }

    /// Whether a leaf of `size` may be written.
    pub const fn allows(&self, size: crate::size::LeafSize) -> bool {
        match size {
            crate::size::LeafSize::Size4K => true,
            crate::size::LeafSize::Size2M => self.leaf_2m,
            crate::size::LeafSize::Size1G => self.leaf_1g,
        }
    }
}

impl Default for Stage2Caps {
    /// [`Stage2Caps::all`].
    fn default() -> Self {
        Self::all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skylake_like_cap() {
        // Bits 0, 6, 8, 14, 16, 17, 20, 21, 25, 26 as Bochs' Skylake model reports.
        let cap = 0x0000_0f01_0673_4141u64 | vmx_cap::INVEPT_ALL;
        let c = Stage2Caps::from_vmx_ept_vpid_cap(cap);
        assert!(c.execute_only && c.walk_4level && c.mem_uc && c.mem_wb);
        assert!(c.leaf_2m && c.leaf_1g && c.accessed_dirty);
        assert!(c.invept_single && c.invept_all);
    }

    #[test]
    fn each_vmx_bit_alone() {
        let none = Stage2Caps::from_vmx_ept_vpid_cap(0);
        assert_eq!(
            none,
            Stage2Caps {
                leaf_2m: false,
                leaf_1g: false,
                accessed_dirty: false,
                execute_only: false,
                invept_single: false,
                invept_all: false,
                walk_4level: false,
                mem_wb: false,
                mem_uc: false,
                max_phys_bits: 48,
                host_phys_bits: 52,
            }
        );
        let c = |b| Stage2Caps::from_vmx_ept_vpid_cap(b);
        assert!(c(1 << 0).execute_only);
        assert!(c(1 << 6).walk_4level);
        assert!(c(1 << 8).mem_uc);
        assert!(c(1 << 14).mem_wb);
        assert!(c(1 << 16).leaf_2m && !c(1 << 16).leaf_1g);
        assert!(c(1 << 17).leaf_1g && !c(1 << 17).leaf_2m);
        assert!(c(1 << 21).accessed_dirty);
        // Single/all-context INVEPT need the INVEPT bit too.
        assert!(!c(1 << 25).invept_single);
        assert!(c((1 << 25) | (1 << 20)).invept_single);
        assert!(!c((1 << 25) | (1 << 20)).invept_all);
        assert!(c((1 << 26) | (1 << 20)).invept_all);
        // Sandy Bridge: EPT without 1 GiB leaves and without A/D.
        let snb = c((1 << 0) | (1 << 6) | (1 << 8) | (1 << 14) | (1 << 16) | (1 << 20) | (1 << 25));
        assert!(snb.leaf_2m && !snb.leaf_1g && !snb.accessed_dirty);
    }

    #[test]
    fn npt_caps() {
        assert!(Stage2Caps::npt(true).leaf_1g);
        assert!(!Stage2Caps::npt(false).leaf_1g);
        let n = Stage2Caps::npt(false);
        assert!(n.leaf_2m && n.accessed_dirty && !n.execute_only && !n.invept_all);
        use crate::size::LeafSize;
        assert!(n.allows(LeafSize::Size4K) && n.allows(LeafSize::Size2M));
        assert!(!n.allows(LeafSize::Size1G));
    }
}
