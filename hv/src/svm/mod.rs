//! AMD SVM with nested paging (AMD APM vol. 2, chapter 15).
//!
//! * [`vmcb`]: the VMCB layout, accessed by offset.
//! * [`exit`]: decoding exit codes into [`crate::vcpu::VmExit`].
//! * [`vcpu`]: [`SvmVcpu`], the world switch, and [`SvmHost`], the per-CPU state
//!   (host save areas, permission maps, ASIDs).

pub mod exit;
mod state;
pub mod vcpu;
pub mod vmcb;

pub use vcpu::{SvmHost, SvmVcpu};

use core::fmt;

/// CPUID Fn8000_0001 ECX bit 2: SVM (APM vol. 3, appendix E.4.2).
pub const CPUID_EXT_ECX_SVM: u32 = 1 << 2;
/// CPUID Fn8000_000A EDX bit 0: nested paging (APM vol. 3, E.4.9).
pub const CPUID_SVM_EDX_NP: u32 = 1 << 0;
/// CPUID Fn8000_000A EDX bit 3: NRIP save.
pub const CPUID_SVM_EDX_NRIPS: u32 = 1 << 3;
/// CPUID Fn8000_000A EDX bit 7: decode assists.
pub const CPUID_SVM_EDX_DECODE_ASSISTS: u32 = 1 << 7;
/// CPUID Fn8000_0001 EDX bit 26: 1 GiB pages.
pub const CPUID_EXT_EDX_PAGE1GB: u32 = 1 << 26;

/// What the CPU offers for SVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SvmCaps {
    /// Nested paging.
    pub nested_paging: bool,
    /// NRIP save (the VMCB gives the next RIP after an intercepted instruction).
    pub nrips: bool,
    /// Decode assists.
    pub decode_assists: bool,
    /// Number of ASIDs (ASID 0 is the host's).
    pub asids: u32,
    /// 1 GiB pages (hence 1 GiB nested leaves).
    pub page_1g: bool,
}

/// Why SVM cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvmError {
    /// CPUID does not report SVM.
    NoSvm,
    /// SVM is disabled by firmware (VM_CR.SVMDIS).
    Disabled,
    /// CPUID does not report nested paging.
    NoNestedPaging,
    /// Fewer than two ASIDs.
    NoAsids,
}

impl fmt::Display for SvmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSvm => write!(f, "the CPU does not offer SVM"),
            Self::Disabled => write!(f, "SVM is disabled by firmware (VM_CR.SVMDIS)"),
            Self::NoNestedPaging => write!(f, "the CPU does not offer nested paging"),
            Self::NoAsids => write!(f, "the CPU offers no guest ASIDs"),
        }
    }
}

impl SvmCaps {
    /// Decodes the capabilities from CPUID: `ext_ecx`/`ext_edx` from Fn8000_0001,
    /// `svm_ebx`/`svm_edx` from Fn8000_000A (`None` if that leaf does not exist).
    pub fn from_cpuid(
        ext_ecx: u32,
        ext_edx: u32,
        svm_leaf: Option<(u32, u32)>,
    ) -> Result<Self, SvmError> {
        if ext_ecx & CPUID_EXT_ECX_SVM == 0 {
            return Err(SvmError::NoSvm);
        }
        let (ebx, edx) = svm_leaf.ok_or(SvmError::NoSvm)?;
        if edx & CPUID_SVM_EDX_NP == 0 {
            return Err(SvmError::NoNestedPaging);
        }
        if ebx < 2 {
            return Err(SvmError::NoAsids);
        }
        Ok(Self {
            nested_paging: true,
            nrips: edx & CPUID_SVM_EDX_NRIPS != 0,
            decode_assists: edx & CPUID_SVM_EDX_DECODE_ASSISTS != 0,
            asids: ebx,
            page_1g: ext_edx & CPUID_EXT_EDX_PAGE1GB != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_from_cpuid() {
        // QEMU TCG -cpu max: SVM, NP, 16 ASIDs, no NRIPS, no decode assists.
        let c = SvmCaps::from_cpuid(CPUID_EXT_ECX_SVM, 0, Some((16, CPUID_SVM_EDX_NP))).unwrap();
        assert_eq!(c.asids, 16);
        assert!(!c.nrips && !c.decode_assists && !c.page_1g);
        let c = SvmCaps::from_cpuid(
            CPUID_EXT_ECX_SVM,
            CPUID_EXT_EDX_PAGE1GB,
            Some((
                32768,
                CPUID_SVM_EDX_NP | CPUID_SVM_EDX_NRIPS | CPUID_SVM_EDX_DECODE_ASSISTS,
            )),
        )
        .unwrap();
        assert!(c.nrips && c.decode_assists && c.page_1g);
        assert_eq!(
            SvmCaps::from_cpuid(0, 0, Some((16, 1))),
            Err(SvmError::NoSvm)
        );
        assert_eq!(
            SvmCaps::from_cpuid(CPUID_EXT_ECX_SVM, 0, Some((16, 0))),
            Err(SvmError::NoNestedPaging)
        );
        assert_eq!(
            SvmCaps::from_cpuid(CPUID_EXT_ECX_SVM, 0, Some((1, 1))),
            Err(SvmError::NoAsids)
        );
        assert_eq!(
            SvmCaps::from_cpuid(CPUID_EXT_ECX_SVM, 0, None),
            Err(SvmError::NoSvm)
        );
    }
}
