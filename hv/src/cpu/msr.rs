//! The MSR table: every MSR a guest may read or write, in one place, with per-vCPU
//! values (Intel SDM vol. 4, table 2-2 "IA-32 Architectural MSRs"; AMD APM vol. 2,
//! appendix A). RDMSR/WRMSR always exit (SVM: an all-ones MSR permission map; VMX: no
//! MSR bitmaps), and [`read()`]/[`write()`] decide: a value, or [`MsrError`], which the exit
//! handler turns into #GP(0) for the guest, as the hardware does for an unknown MSR or
//! a reserved bit (SDM vol. 2B "RDMSR"/"WRMSR").
//!
//! MSRs the hardware uses while the guest runs (EFER, PAT, the SYSCALL/SYSENTER MSRs,
//! FS/GS bases, KERNEL_GS_BASE, TSC_AUX, the TSC offset) live in the vCPU
//! ([`ArchReg`]); the rest, which only this table gives meaning to (APIC base, MTRRs,
//! MISC_ENABLE, ...), live in [`MsrFile`].
//!
//! The set is what an x86_64 Linux kernel touches on boot with `nolapic` (EFER, PAT,
//! MTRRs, APIC base, MISC_ENABLE, TSC, SYSCALL/SYSENTER, FS/GS/KERNEL_GS bases, TSC_AUX,
//! microcode signature, FEATURE_CONTROL, AMD SYSCFG/HWCR); add an entry to [`read()`]
//! and [`write()`] to offer another.

use core::fmt;

use crate::vcpu::{ArchReg, Vcpu};

/// MSR numbers (SDM vol. 4, table 2-2; AMD APM vol. 2, appendix A).
pub mod number {
    /// IA32_TIME_STAMP_COUNTER.
    pub const TSC: u32 = 0x10;
    /// IA32_APIC_BASE.
    pub const APIC_BASE: u32 = 0x1B;
    /// IA32_FEATURE_CONTROL.
    pub const FEATURE_CONTROL: u32 = 0x3A;
    /// IA32_BIOS_SIGN_ID (microcode revision).
    pub const BIOS_SIGN_ID: u32 = 0x8B;
    /// IA32_MTRRCAP.
    pub const MTRR_CAP: u32 = 0xFE;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1A0;
    /// IA32_DEBUGCTL.
    pub const DEBUGCTL: u32 = 0x1D9;
    /// IA32_MTRR_PHYSBASE0; PHYSBASEn = 0x200 + 2n, PHYSMASKn = 0x201 + 2n.
    pub const MTRR_PHYS_BASE0: u32 = 0x200;
    /// IA32_MTRR_FIX64K_00000.
    pub const MTRR_FIX64K: u32 = 0x250;
    /// IA32_MTRR_FIX16K_80000.
    pub const MTRR_FIX16K_80000: u32 = 0x258;
    /// IA32_MTRR_FIX16K_A0000.
    pub const MTRR_FIX16K_A0000: u32 = 0x259;
    /// IA32_MTRR_FIX4K_C0000 (..= 0x26F, IA32_MTRR_FIX4K_F8000).
    pub const MTRR_FIX4K_C0000: u32 = 0x268;
    /// IA32_PAT.
    pub const PAT: u32 = 0x277;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2FF;
    /// IA32_EFER.
    pub const EFER: u32 = 0xC000_0080;
    /// IA32_STAR.
    pub const STAR: u32 = 0xC000_0081;
    /// IA32_LSTAR.
    pub const LSTAR: u32 = 0xC000_0082;
    /// IA32_CSTAR.
    pub const CSTAR: u32 = 0xC000_0083;
    /// IA32_FMASK.
    pub const SFMASK: u32 = 0xC000_0084;
    /// IA32_FS_BASE.
    pub const FS_BASE: u32 = 0xC000_0100;
    /// IA32_GS_BASE.
    pub const GS_BASE: u32 = 0xC000_0101;
    /// IA32_KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
    /// IA32_TSC_AUX.
    pub const TSC_AUX: u32 = 0xC000_0103;
    /// AMD SYSCFG (APM vol. 2 7.9.1: MtrrFixDramEn, MtrrVarDramEn, MtrrTom2En...).
    pub const AMD_SYSCFG: u32 = 0xC001_0010;
    /// AMD HWCR (hardware configuration).
    pub const AMD_HWCR: u32 = 0xC001_0015;
}

/// Variable-range MTRRs offered (IA32_MTRRCAP.VCNT).
pub const MTRR_VARIABLE: usize = 8;
/// Fixed-range MTRR MSRs (SDM vol. 3A 13.11.2.2): one 64K, two 16K, eight 4K.
pub const MTRR_FIXED: usize = 11;

/// IA32_MTRRCAP: VCNT = 8, FIX (bit 8) and WC (bit 10); no SMRR (SDM vol. 3A 13.11.1).
pub const MTRR_CAP_VALUE: u64 = MTRR_VARIABLE as u64 | (1 << 8) | (1 << 10);
/// IA32_APIC_BASE at reset for the bootstrap processor: base 0xFEE0_0000, BSP (bit 8);
/// the APIC global enable (bit 11) is clear, as this virtual CPU has no local APIC
/// (CPUID.1:EDX.APIC = 0) (SDM vol. 3A 12.4.4).
pub const APIC_BASE_RESET: u64 = 0xFEE0_0000 | APIC_BASE_BSP;
const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_MISC_ENABLE at reset: fast strings (bit 0), BTS unavailable (bit 11), PEBS
/// unavailable (bit 12) (SDM vol. 4, table 2-2).
pub const MISC_ENABLE_RESET: u64 = 1 | (1 << 11) | (1 << 12);
/// IA32_FEATURE_CONTROL as the guest sees it: locked (bit 0), VMX off (bits 1-2 clear)
/// (SDM vol. 3C 24.7).
pub const FEATURE_CONTROL_VALUE: u64 = 1;

/// EFER bits a guest may set: SCE (0), LME (8), LMA (10, read-only), NXE (11)
/// (AMD APM vol. 2 3.1.7; SDM vol. 4 table 2-2).
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
/// CR0.PG (SDM vol. 3A 2.5).
const CR0_PG: u64 = 1 << 31;
/// Physical-address bits of MTRR bases and masks the virtual CPU accepts (bits 12-51).
const MTRR_ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// IA32_MTRR_PHYSMASKn.V (bit 11).
const MTRR_MASK_VALID: u64 = 1 << 11;
/// IA32_MTRR_DEF_TYPE: type (bits 7:0), FE (bit 10), E (bit 11).
const MTRR_DEF_TYPE_BITS: u64 = 0xFF | (1 << 10) | (1 << 11);

/// The MSRs only the hypervisor gives meaning to, per vCPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsrFile {
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_MISC_ENABLE.
    pub misc_enable: u64,
    /// IA32_BIOS_SIGN_ID (written by the guest before CPUID leaf 1 to read back the
    /// microcode revision; always reads 0 here).
    pub bios_sign_id: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: u64,
    /// IA32_MTRR_PHYSBASEn and PHYSMASKn, by n.
    pub mtrr_variable: [(u64, u64); MTRR_VARIABLE],
    /// The fixed-range MTRRs in MSR order (FIX64K, FIX16K x2, FIX4K x8).
    pub mtrr_fixed: [u64; MTRR_FIXED],
}

impl Default for MsrFile {
    /// The values at reset (SDM vol. 3A 13.11.5: MTRRs disabled, all UC).
    fn default() -> Self {
        Self {
            apic_base: APIC_BASE_RESET,
            misc_enable: MISC_ENABLE_RESET,
            bios_sign_id: 0,
            mtrr_def_type: 0,
            mtrr_variable: [(0, 0); MTRR_VARIABLE],
            mtrr_fixed: [0; MTRR_FIXED],
        }
    }
}

/// Why an RDMSR or WRMSR raises #GP(0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrError {
    /// No such MSR on this virtual CPU.
    Unknown,
    /// The MSR is read-only.
    ReadOnly,
    /// The value sets reserved bits, is not canonical, or is not a valid memory type.
    InvalidValue,
    /// The change is not allowed in the current mode (EFER.LME while paging is on).
    NotNow,
}

impl fmt::Display for MsrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unknown => "no such MSR on this virtual CPU",
            Self::ReadOnly => "the MSR is read-only",
            Self::InvalidValue => "the value sets reserved bits or is not valid",
            Self::NotNow => "the change is not allowed in the current mode",
        })
    }
}

/// The index in [`MsrFile::mtrr_fixed`] of a fixed-range MTRR MSR.
fn fixed_index(msr: u32) -> Option<usize> {
    match msr {
        number::MTRR_FIX64K => Some(0),
        number::MTRR_FIX16K_80000 => Some(1),
        number::MTRR_FIX16K_A0000 => Some(2),
        0x268..=0x26F => Some(3 + (msr - number::MTRR_FIX4K_C0000) as usize),
        _ => None,
    }
}

/// The variable-range MTRR `(n, is_mask)` of an MSR.
fn variable_index(msr: u32) -> Option<(usize, bool)> {
    let off = msr.checked_sub(number::MTRR_PHYS_BASE0)? as usize;
    (off < 2 * MTRR_VARIABLE).then_some((off / 2, off % 2 == 1))
}

/// The vCPU-held MSRs and the [`ArchReg`] that holds each.
fn arch_msr(msr: u32) -> Option<ArchReg> {
    Some(match msr {
        number::SYSENTER_CS => ArchReg::SysenterCs,
        number::SYSENTER_ESP => ArchReg::SysenterEsp,
        number::SYSENTER_EIP => ArchReg::SysenterEip,
        number::PAT => ArchReg::Pat,
        number::EFER => ArchReg::Efer,
        number::STAR => ArchReg::Star,
        number::LSTAR => ArchReg::Lstar,
        number::CSTAR => ArchReg::Cstar,
        number::SFMASK => ArchReg::Sfmask,
        number::FS_BASE => ArchReg::FsBase,
        number::GS_BASE => ArchReg::GsBase,
        number::KERNEL_GS_BASE => ArchReg::KernelGsBase,
        number::TSC_AUX => ArchReg::TscAux,
        _ => return None,
    })
}

/// Whether `v` is a canonical 48-bit linear address (SDM vol. 1 3.3.7.1).
pub fn is_canonical(v: u64) -> bool {
    ((v as i64) << 16 >> 16) as u64 == v
}

/// Whether `t` is a memory type valid in the PAT: UC 0, WC 1, WT 4, WP 5, WB 6, UC- 7
/// (SDM vol. 3A 13.12.2).
fn valid_pat_type(t: u8) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6 | 7)
}

/// Whether `t` is a memory type valid in an MTRR: UC 0, WC 1, WT 4, WP 5, WB 6 (SDM
/// vol. 3A 13.11.2, table 13-8).
fn valid_mtrr_type(t: u8) -> bool {
    matches!(t, 0 | 1 | 4 | 5 | 6)
}

/// The host's time-stamp counter (RDTSC, SDM vol. 2B).
fn host_tsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is clear in the host).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// RDMSR `msr` of a vCPU: its value, or why the guest gets #GP.
pub fn read<V: Vcpu + ?Sized>(vcpu: &V, file: &MsrFile, msr: u32) -> Result<u64, MsrError> {
    if let Some(reg) = arch_msr(msr) {
        return Ok(vcpu.arch(reg));
    }
    if let Some(i) = fixed_index(msr) {
        return Ok(file.mtrr_fixed[i]);
    }
    if let Some((n, mask)) = variable_index(msr) {
        let (b, m) = file.mtrr_variable[n];
        return Ok(if mask { m } else { b });
    }
    Ok(match msr {
        number::TSC => host_tsc().wrapping_add(vcpu.arch(ArchReg::TscOffset)),
        number::APIC_BASE => file.apic_base,
        number::FEATURE_CONTROL => FEATURE_CONTROL_VALUE,
        number::BIOS_SIGN_ID => 0,
        number::MTRR_CAP => MTRR_CAP_VALUE,
        number::MISC_ENABLE => file.misc_enable,
        number::DEBUGCTL => 0,
        number::MTRR_DEF_TYPE => file.mtrr_def_type,
        // No DRAM attributes in the fixed MTRRs, no TOM2, no special configuration:
        // Linux's MTRR code reads SYSCFG on AMD.
        number::AMD_SYSCFG | number::AMD_HWCR => 0,
        _ => return Err(MsrError::Unknown),
    })
}

/// WRMSR `value` to `msr` of a vCPU, or why the guest gets #GP (and nothing changed).
pub fn write<V: Vcpu + ?Sized>(
    vcpu: &mut V,
    file: &mut MsrFile,
    msr: u32,
    value: u64,
) -> Result<(), MsrError> {
    let check = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(MsrError::InvalidValue)
        }
    };
    if let Some(i) = fixed_index(msr) {
        check(value.to_le_bytes().into_iter().all(valid_mtrr_type))?;
        file.mtrr_fixed[i] = value;
        return Ok(());
    }
    if let Some((n, mask)) = variable_index(msr) {
        let entry = &mut file.mtrr_variable[n];
        if mask {
            check(value & !(MTRR_ADDR_MASK | MTRR_MASK_VALID) == 0)?;
            entry.1 = value;
        } else {
            check(value & !(MTRR_ADDR_MASK | 0xFF) == 0 && valid_mtrr_type(value as u8))?;
            entry.0 = value;
        }
        return Ok(());
    }
    match msr {
        number::TSC => {
            vcpu.set_arch(ArchReg::TscOffset, value.wrapping_sub(host_tsc()));
        }
        number::APIC_BASE => {
            // Base (bits 12-35 here) and BSP only: no local APIC to enable, no x2APIC.
            check(value & !(MTRR_ADDR_MASK | APIC_BASE_BSP) == 0)?;
            file.apic_base = value;
        }
        number::BIOS_SIGN_ID => file.bios_sign_id = value,
        number::MISC_ENABLE => file.misc_enable = value,
        number::DEBUGCTL | number::AMD_SYSCFG | number::AMD_HWCR => check(value == 0)?,
        number::MTRR_DEF_TYPE => {
            check(value & !MTRR_DEF_TYPE_BITS == 0 && valid_mtrr_type(value as u8))?;
            file.mtrr_def_type = value;
        }
        number::FEATURE_CONTROL | number::MTRR_CAP => return Err(MsrError::ReadOnly),
        number::PAT => {
            check(value.to_le_bytes().into_iter().all(valid_pat_type))?;
            vcpu.set_arch(ArchReg::Pat, value);
        }
        number::EFER => {
            let old = vcpu.arch(ArchReg::Efer);
            check(value & !(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE) == 0)?;
            // LMA is the processor's; LME may not change while paging is on (APM vol. 2
            // 14.6.1; SDM vol. 3A 10.8.5).
            let paging = vcpu.arch(ArchReg::Cr0) & CR0_PG != 0;
            if paging && (value ^ old) & EFER_LME != 0 {
                return Err(MsrError::NotNow);
            }
            vcpu.set_arch(ArchReg::Efer, (value & !EFER_LMA) | (old & EFER_LMA));
        }
        number::LSTAR
        | number::CSTAR
        | number::FS_BASE
        | number::GS_BASE
        | number::KERNEL_GS_BASE
        | number::SYSENTER_ESP
        | number::SYSENTER_EIP => {
            check(is_canonical(value))?;
            vcpu.set_arch(arch_msr(msr).ok_or(MsrError::Unknown)?, value);
        }
        number::SYSENTER_CS | number::SFMASK | number::TSC_AUX => {
            check(value >> 32 == 0)?;
            vcpu.set_arch(arch_msr(msr).ok_or(MsrError::Unknown)?, value);
        }
        number::STAR => vcpu.set_arch(ArchReg::Star, value),
        _ => return Err(MsrError::Unknown),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ScriptedVcpu;

    fn vcpu() -> ScriptedVcpu {
        let mut v = ScriptedVcpu::new(alloc::vec![]);
        v.set_arch(ArchReg::Efer, EFER_LME | EFER_LMA | EFER_NXE);
        v.set_arch(ArchReg::Cr0, CR0_PG | 1);
        v.set_arch(ArchReg::Pat, crate::vcpu::state::PAT_RESET);
        v
    }

    #[test]
    fn reset_values() {
        let v = vcpu();
        let f = MsrFile::default();
        assert_eq!(read(&v, &f, number::APIC_BASE), Ok(0xFEE0_0100));
        assert_eq!(read(&v, &f, number::MTRR_CAP), Ok(0x508));
        assert_eq!(read(&v, &f, number::MISC_ENABLE), Ok(0x1801));
        assert_eq!(read(&v, &f, number::PAT), Ok(0x0007_0406_0007_0406));
        assert_eq!(read(&v, &f, number::EFER), Ok(0xD00));
        assert_eq!(read(&v, &f, number::FEATURE_CONTROL), Ok(1));
        assert_eq!(read(&v, &f, 0x201), Ok(0));
        assert_eq!(read(&v, &f, 0x26F), Ok(0));
        assert_eq!(read(&v, &f, 0xC001_0114), Err(MsrError::Unknown));
        assert_eq!(read(&v, &f, number::AMD_SYSCFG), Ok(0));
        assert_eq!(read(&v, &f, 0x210), Err(MsrError::Unknown));
        let t0 = read(&v, &f, number::TSC).unwrap();
        assert!(read(&v, &f, number::TSC).unwrap() >= t0);
    }

    #[test]
    fn writes_land_per_vcpu_and_bad_values_change_nothing() {
        let mut v = vcpu();
        let mut f = MsrFile::default();
        write(&mut v, &mut f, number::LSTAR, 0xFFFF_8000_0000_1000).unwrap();
        assert_eq!(v.arch(ArchReg::Lstar), 0xFFFF_8000_0000_1000);
        assert_eq!(
            write(&mut v, &mut f, number::LSTAR, 0x0000_8000_0000_0000),
            Err(MsrError::InvalidValue)
        );
        assert_eq!(v.arch(ArchReg::Lstar), 0xFFFF_8000_0000_1000);
        write(&mut v, &mut f, number::KERNEL_GS_BASE, 0x1234_5000).unwrap();
        assert_eq!(read(&v, &f, number::KERNEL_GS_BASE), Ok(0x1234_5000));
        assert_eq!(
            write(&mut v, &mut f, number::TSC_AUX, 1 << 32),
            Err(MsrError::InvalidValue)
        );
        write(&mut v, &mut f, number::TSC_AUX, 7).unwrap();
        assert_eq!(v.arch(ArchReg::TscAux), 7);
        // PAT: entry 2 = 2 is reserved.
        assert_eq!(
            write(&mut v, &mut f, number::PAT, 0x0007_0406_0002_0406),
            Err(MsrError::InvalidValue)
        );
        write(&mut v, &mut f, number::PAT, 0x0007_0106_0007_0406).unwrap();
        assert_eq!(v.arch(ArchReg::Pat), 0x0007_0106_0007_0406);
        // MTRRs.
        write(&mut v, &mut f, number::MTRR_DEF_TYPE, 0xC06).unwrap();
        assert_eq!(f.mtrr_def_type, 0xC06);
        assert_eq!(
            write(&mut v, &mut f, number::MTRR_DEF_TYPE, 0xC02),
            Err(MsrError::InvalidValue)
        );
        write(&mut v, &mut f, 0x202, 0x8000_0006).unwrap();
        write(&mut v, &mut f, 0x203, 0xF_C000_0800).unwrap();
        assert_eq!(f.mtrr_variable[1], (0x8000_0006, 0xF_C000_0800));
        assert_eq!(write(&mut v, &mut f, 0x203, 1), Err(MsrError::InvalidValue));
        write(&mut v, &mut f, number::MTRR_FIX64K, 0x0606_0606_0606_0606).unwrap();
        assert_eq!(
            write(&mut v, &mut f, number::MTRR_FIX4K_C0000, 0x07),
            Err(MsrError::InvalidValue)
        );
        assert_eq!(
            write(&mut v, &mut f, number::MTRR_CAP, 0),
            Err(MsrError::ReadOnly)
        );
        assert_eq!(
            write(&mut v, &mut f, 0xDEAD_BEEF, 0),
            Err(MsrError::Unknown)
        );
        // No local APIC to enable.
        assert_eq!(
            write(
                &mut v,
                &mut f,
                number::APIC_BASE,
                APIC_BASE_RESET | (1 << 11)
            ),
            Err(MsrError::InvalidValue)
        );
        assert_eq!(f.apic_base, APIC_BASE_RESET);
    }

    #[test]
    fn efer_rules() {
        let mut v = vcpu();
        let mut f = MsrFile::default();
        write(&mut v, &mut f, number::EFER, EFER_LME | EFER_NXE | EFER_SCE).unwrap();
        assert_eq!(v.arch(ArchReg::Efer), 0xD01, "LMA is kept, SCE set");
        assert_eq!(
            write(&mut v, &mut f, number::EFER, EFER_NXE),
            Err(MsrError::NotNow),
            "LME may not change under paging"
        );
        assert_eq!(
            write(&mut v, &mut f, number::EFER, EFER_LME | (1 << 12)),
            Err(MsrError::InvalidValue),
            "SVME is not offered"
        );
        v.set_arch(ArchReg::Cr0, 1);
        v.set_arch(ArchReg::Efer, 0);
        write(&mut v, &mut f, number::EFER, EFER_LME | EFER_LMA).unwrap();
        assert_eq!(v.arch(ArchReg::Efer), EFER_LME, "LMA is read-only");
    }

    #[test]
    fn tsc_writes_set_the_offset() {
        let mut v = vcpu();
        let mut f = MsrFile::default();
        write(&mut v, &mut f, number::TSC, 0).unwrap();
        let t = read(&v, &f, number::TSC).unwrap();
        assert!(t < 1 << 40, "the guest TSC restarted near 0: {t:#x}");
    }
}
