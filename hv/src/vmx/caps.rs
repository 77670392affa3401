//! VMX capabilities from the capability MSRs (SDM vol. 3D, appendix A), and the
//! VM-execution, exit and entry controls computed from them.
//!
//! Everything here is a pure function of raw MSR values, so it is tested on the host
//! with the values Bochs' models report.

use core::fmt;

use ept::caps::Stage2Caps;

use super::fields::{entry_ctl, exit_ctl, pin, proc, proc2};

/// VMX capability MSR numbers (SDM vol. 4, table 2-2; vol. 3D, appendix A).
pub mod msr {
    /// IA32_FEATURE_CONTROL (bit 0 lock, bit 2 VMX outside SMX).
    pub const FEATURE_CONTROL: u32 = 0x3A;
    /// IA32_VMX_BASIC (A.1).
    pub const VMX_BASIC: u32 = 0x480;
    /// IA32_VMX_PINBASED_CTLS (A.3.1).
    pub const PINBASED_CTLS: u32 = 0x481;
    /// IA32_VMX_PROCBASED_CTLS (A.3.2).
    pub const PROCBASED_CTLS: u32 = 0x482;
    /// IA32_VMX_EXIT_CTLS (A.4).
    pub const EXIT_CTLS: u32 = 0x483;
    /// IA32_VMX_ENTRY_CTLS (A.5).
    pub const ENTRY_CTLS: u32 = 0x484;
    /// IA32_VMX_CR0_FIXED0 (A.7).
    pub const CR0_FIXED0: u32 = 0x486;
    /// IA32_VMX_CR0_FIXED1.
    pub const CR0_FIXED1: u32 = 0x487;
    /// IA32_VMX_CR4_FIXED0 (A.8).
    pub const CR4_FIXED0: u32 = 0x488;
    /// IA32_VMX_CR4_FIXED1.
    pub const CR4_FIXED1: u32 = 0x489;
    /// IA32_VMX_PROCBASED_CTLS2 (A.3.3).
    pub const PROCBASED_CTLS2: u32 = 0x48B;
    /// IA32_VMX_EPT_VPID_CAP (A.10).
    pub const EPT_VPID_CAP: u32 = 0x48C;
    /// IA32_VMX_TRUE_PINBASED_CTLS (A.3.1).
    pub const TRUE_PINBASED_CTLS: u32 = 0x48D;
    /// IA32_VMX_TRUE_PROCBASED_CTLS (A.3.2).
    pub const TRUE_PROCBASED_CTLS: u32 = 0x48E;
    /// IA32_VMX_TRUE_EXIT_CTLS (A.4).
    pub const TRUE_EXIT_CTLS: u32 = 0x48F;
    /// IA32_VMX_TRUE_ENTRY_CTLS (A.5).
    pub const TRUE_ENTRY_CTLS: u32 = 0x490;
}

/// IA32_FEATURE_CONTROL bit 0: locked (SDM vol. 3C 24.7).
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// IA32_FEATURE_CONTROL bit 2: VMXON allowed outside SMX operation.
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
/// IA32_VMX_BASIC bit 55: the TRUE_* control MSRs exist (SDM vol. 3D A.1).
pub const BASIC_TRUE_CONTROLS: u64 = 1 << 55;
/// IA32_VMX_BASIC bits 30:0: the VMCS revision identifier.
pub const BASIC_REVISION_MASK: u64 = 0x7FFF_FFFF;
/// IA32_VMX_BASIC bits 44:32: bytes to allocate for the VMXON region and VMCS.
pub const BASIC_REGION_SIZE_SHIFT: u32 = 32;
/// IA32_VMX_EPT_VPID_CAP bit 32: INVVPID supported (SDM vol. 3D A.10).
pub const CAP_INVVPID: u64 = 1 << 32;
/// IA32_VMX_EPT_VPID_CAP bit 41: single-context INVVPID.
pub const CAP_INVVPID_SINGLE: u64 = 1 << 41;
/// IA32_VMX_EPT_VPID_CAP bit 42: all-context INVVPID.
pub const CAP_INVVPID_ALL: u64 = 1 << 42;
/// CR4.VMXE, bit 13 (SDM vol. 3A 2.5).
pub const CR4_VMXE: u64 = 1 << 13;

/// Raw values of the VMX capability MSRs (`true_*` hold the TRUE_* MSRs, or the
/// plain ones when IA32_VMX_BASIC bit 55 is clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmxMsrs {
    /// IA32_FEATURE_CONTROL.
    pub feature_control: u64,
    /// IA32_VMX_BASIC.
    pub basic: u64,
    /// Pin-based controls (TRUE when available).
    pub pin: u64,
    /// Primary processor-based controls (TRUE when available).
    pub proc: u64,
    /// IA32_VMX_PROCBASED_CTLS2 (0 when the primary controls cannot activate it).
    pub proc2: u64,
    /// Exit controls (TRUE when available).
    pub exit: u64,
    /// Entry controls (TRUE when available).
    pub entry: u64,
    /// IA32_VMX_CR0_FIXED0.
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1.
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0.
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1.
    pub cr4_fixed1: u64,
    /// IA32_VMX_EPT_VPID_CAP (0 when neither EPT nor VPID can be enabled).
    pub ept_vpid_cap: u64,
}

/// Why VMX cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmxError {
    /// CPUID does not report VMX.
    NoVmx,
    /// Firmware locked IA32_FEATURE_CONTROL without VMX outside SMX.
    DisabledByFirmware,
    /// A control this hypervisor needs cannot be set.
    MissingControl {
        /// Which control register (`"secondary"`, `"exit"`, ...).
        group: &'static str,
        /// The bits that are required but not allowed to be 1.
        bits: u32,
    },
    /// EPT cannot walk 4 levels or use a write-back or uncacheable EPTP.
    EptUnusable,
    /// No INVEPT type is available, so stage-2 changes could not be flushed.
    NoInvept,
    /// The VMXON or VMCS region would be larger than a page.
    RegionTooLarge {
        /// Size IA32_VMX_BASIC asks for.
        size: u32,
    },
    /// VMXON failed (the instruction's status flags).
    VmxonFailed,
    /// A VMX instruction failed while setting up a vCPU.
    InstructionFailed {
        /// The instruction.
        what: &'static str,
        /// The VM-instruction error number (0 for VMfailInvalid).
        error: u32,
    },
}

impl fmt::Display for VmxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoVmx => write!(f, "the CPU does not offer VMX"),
            Self::DisabledByFirmware => write!(
                f,
                "VMX is disabled by firmware (IA32_FEATURE_CONTROL locked without VMXON)"
            ),
            Self::MissingControl { group, bits } => write!(
                f,
                "required {group} VM-execution control bits {bits:#x} are not supported"
            ),
            Self::EptUnusable => write!(
                f,
                "EPT lacks a 4-level walk or a WB/UC paging-structure memory type"
            ),
            Self::NoInvept => write!(f, "neither single- nor all-context INVEPT is supported"),
            Self::RegionTooLarge { size } => {
                write!(f, "VMCS regions of {size} bytes do not fit in a page")
            }
            Self::VmxonFailed => write!(f, "VMXON failed"),
            Self::InstructionFailed { what, error } => {
                write!(f, "{what} failed (VM-instruction error {error})")
            }
        }
    }
}

/// The controls required and wanted in one control field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Bits the hypervisor cannot work without.
    pub required: u32,
    /// Bits used when the CPU allows them.
    pub optional: u32,
}

/// Computes a control field from its capability MSR (SDM vol. 3D A.3): bits 31:0 are
/// the allowed 0-settings (a 1 there means the bit must be 1), bits 63:32 the allowed
/// 1-settings. Every bit not wanted is 0 where the CPU allows it.
pub fn adjust(group: &'static str, wanted: Wanted, cap: u64) -> Result<u32, VmxError> {
    let must_be_one = cap as u32;
    let may_be_one = (cap >> 32) as u32;
    let missing = wanted.required & !may_be_one;
    if missing != 0 {
        return Err(VmxError::MissingControl {
            group,
            bits: missing,
        });
    }
    Ok((wanted.required | (wanted.optional & may_be_one) | must_be_one) & may_be_one)
}

/// Applies IA32_VMX_CRx_FIXED0/1 (SDM vol. 3D A.7, A.8): bits set in FIXED0 must be 1,
/// bits clear in FIXED1 must be 0.
pub fn apply_fixed(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// The INVEPT type used after stage-2 changes (SDM vol. 3C 30.3.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InveptType {
    /// Type 1: mappings of one EPTP.
    SingleContext = 1,
    /// Type 2: mappings of every EPTP.
    AllContext = 2,
}

/// What the CPU offers for VMX, and the controls this hypervisor will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmxCaps {
    /// The VMCS revision identifier (IA32_VMX_BASIC bits 30:0).
    pub revision: u32,
    /// Whether the TRUE_* control MSRs were used.
    pub true_controls: bool,
    /// Pin-based controls.
    pub pin: u32,
    /// Primary processor-based controls.
    pub proc: u32,
    /// Secondary processor-based controls.
    pub proc2: u32,
    /// VM-exit controls.
    pub exit: u32,
    /// VM-entry controls.
    pub entry: u32,
    /// CR0 bits fixed to 1 and allowed to be 1 (FIXED0, FIXED1).
    pub cr0_fixed: (u64, u64),
    /// CR4 bits fixed to 1 and allowed to be 1.
    pub cr4_fixed: (u64, u64),
    /// The stage-2 capabilities (leaf sizes, A/D, INVEPT types).
    pub stage2: Stage2Caps,
    /// VPIDs are enabled.
    pub vpid: bool,
    /// Unrestricted guest is enabled.
    pub unrestricted_guest: bool,
    /// The INVEPT type for stage-2 flushes.
    pub invept: InveptType,
    /// Single-context INVVPID is available.
    pub invvpid_single: bool,
}

impl VmxCaps {
    /// Decodes the capability MSRs and chooses the controls: EPT, HLT, every I/O port
    /// and MSR, and (when offered) VPID, unrestricted guest and EFER switching.
    /// `host_phys_bits` is CPUID.80000008H:EAX bits 7:0.
    pub fn from_msrs(m: &VmxMsrs, host_phys_bits: u8) -> Result<Self, VmxError> {
        let fc = m.feature_control;
        if fc & FEATURE_CONTROL_LOCK != 0 && fc & FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0 {
            return Err(VmxError::DisabledByFirmware);
        }
        let size = ((m.basic >> BASIC_REGION_SIZE_SHIFT) & 0x1FFF) as u32;
        if size > 4096 {
            return Err(VmxError::RegionTooLarge { size });
        }
        // Timer interrupts end the guest's time slice (SDM vol. 3C 26.2); they stay
        // pending for the host, which takes them right after the exit.
        let pin = adjust(
            "pin-based",
            Wanted {
                required: pin::EXTERNAL_INTERRUPT_EXITING,
                optional: 0,
            },
            m.pin,
        )?;
        let proc = adjust(
            "primary processor-based",
            Wanted {
                // MOV CR8 exits: the guest's TPR is emulated, never the CPU's.
                required: proc::HLT_EXITING
                    | proc::UNCONDITIONAL_IO_EXITING
                    | proc::SECONDARY_CONTROLS
                    | proc::CR8_LOAD_EXITING
                    | proc::CR8_STORE_EXITING,
                optional: proc::MWAIT_EXITING
                    | proc::RDPMC_EXITING
                    | proc::MONITOR_EXITING
                    | proc::USE_TSC_OFFSETTING,
            },
            m.proc,
        )?;
        // Without MSR bitmaps every RDMSR/WRMSR exits; without I/O bitmaps and with
        // unconditional I/O exiting, every IN/OUT does (SDM vol. 3C 26.1.3).
        let bitmaps = proc::USE_MSR_BITMAPS | proc::USE_IO_BITMAPS;
        if proc & bitmaps != 0 {
            // The CPU insists on bitmaps this hypervisor does not provide.
            return Err(VmxError::MissingControl {
                group: "primary processor-based (bitmaps forced on)",
                bits: proc & bitmaps,
            });
        }
        let proc2 = adjust(
            "secondary processor-based",
            Wanted {
                required: proc2::ENABLE_EPT,
                optional: proc2::ENABLE_VPID | proc2::UNRESTRICTED_GUEST | proc2::WBINVD_EXITING,
            },
            m.proc2,
        )?;
        let exit = adjust(
            "VM-exit",
            Wanted {
                // The guest's DR7 is saved at each exit (and DR7 = 0x400 loaded).
                required: exit_ctl::HOST_ADDRESS_SPACE_SIZE | exit_ctl::SAVE_DEBUG_CONTROLS,
                optional: exit_ctl::LOAD_EFER
                    | exit_ctl::SAVE_EFER
                    | exit_ctl::SAVE_PAT
                    | exit_ctl::LOAD_PAT,
            },
            m.exit,
        )?;
        let entry = adjust(
            "VM-entry",
            Wanted {
                required: entry_ctl::IA32E_MODE_GUEST | entry_ctl::LOAD_DEBUG_CONTROLS,
                optional: entry_ctl::LOAD_EFER | entry_ctl::LOAD_PAT,
            },
            m.entry,
        )?;
        let stage2 =
            Stage2Caps::from_vmx_ept_vpid_cap(m.ept_vpid_cap).with_host_phys_bits(host_phys_bits);
        if !stage2.walk_4level || !(stage2.mem_wb || stage2.mem_uc) {
            return Err(VmxError::EptUnusable);
        }
        let invept = if stage2.invept_single {
            InveptType::SingleContext
        } else if stage2.invept_all {
            InveptType::AllContext
        } else {
            return Err(VmxError::NoInvept);
        };
        let invvpid = m.ept_vpid_cap & CAP_INVVPID != 0;
        Ok(Self {
            revision: (m.basic & BASIC_REVISION_MASK) as u32,
            true_controls: m.basic & BASIC_TRUE_CONTROLS != 0,
            pin,
            proc,
            proc2,
            exit,
            entry,
            cr0_fixed: (m.cr0_fixed0, m.cr0_fixed1),
            cr4_fixed: (m.cr4_fixed0, m.cr4_fixed1),
            stage2,
            vpid: proc2 & proc2::ENABLE_VPID != 0,
            unrestricted_guest: proc2 & proc2::UNRESTRICTED_GUEST != 0,
            invept,
            invvpid_single: invvpid && m.ept_vpid_cap & CAP_INVVPID_SINGLE != 0,
        })
    }

    /// Whether guest and host EFER are switched by the entry and exit controls.
    pub fn switches_efer(&self) -> bool {
        self.entry & entry_ctl::LOAD_EFER != 0 && self.exit & exit_ctl::LOAD_EFER != 0
    }

    /// Whether guest and host IA32_PAT are switched by the entry and exit controls.
    pub fn switches_pat(&self) -> bool {
        self.entry & entry_ctl::LOAD_PAT != 0 && self.exit & exit_ctl::LOAD_PAT != 0
    }

    /// Whether the guest's TSC is offset (RDTSC and the TSC MSR).
    pub fn tsc_offsetting(&self) -> bool {
        self.proc & proc::USE_TSC_OFFSETTING != 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Capability MSR values of Bochs 2.7's `corei7_skylake_x` model, as the
    /// hypervisor logs them at `log=debug` under `cargo xtask run --emulator bochs`.
    pub(crate) fn skylake() -> VmxMsrs {
        VmxMsrs {
            feature_control: 0x5,
            basic: 0x00D8_1000_0000_002B,
            pin: 0x0000_007F_0000_0016,
            proc: 0xF7F9_FFFE_0400_6172,
            proc2: 0x0217_7FFF_0000_0000,
            exit: 0x007F_FFFF_0003_6DFB,
            entry: 0x0000_FFFF_0000_11FB,
            cr0_fixed0: 0x8000_0021,
            cr0_fixed1: 0xFFFF_FFFF,
            cr4_fixed0: 0x2000,
            cr4_fixed1: 0x0037_27FF,
            ept_vpid_cap: 0x0F01_0633_4141,
        }
    }

    /// The same for `corei7_sandy_bridge_2600k`: EPT without 1 GiB leaves and A/D.
    pub(crate) fn sandy_bridge() -> VmxMsrs {
        VmxMsrs {
            proc2: 0x0000_00FF_0000_0000,
            cr4_fixed1: 0x0006_27FF,
            ept_vpid_cap: 0x0F01_0611_4141,
            ..skylake()
        }
    }

    #[test]
    fn adjust_honours_allowed_settings() {
        // Bit 1 must be 1, bits 0-3 may be 1.
        let cap = (0b1111u64 << 32) | 0b0010;
        let w = |required, optional| Wanted { required, optional };
        assert_eq!(adjust("t", w(0b0001, 0), cap), Ok(0b0011));
        assert_eq!(adjust("t", w(0, 0b1100), cap), Ok(0b1110));
        // Optional bits beyond the allowed 1-settings are dropped, required ones fail.
        assert_eq!(adjust("t", w(0, 0b1_0000), cap), Ok(0b0010));
        assert_eq!(
            adjust("t", w(0b1_0001, 0), cap),
            Err(VmxError::MissingControl {
                group: "t",
                bits: 0b1_0000
            })
        );
    }

    #[test]
    fn fixed_bits() {
        // CR0: PE, NE, PG forced on; nothing forced off.
        assert_eq!(apply_fixed(0, 0x8000_0021, 0xFFFF_FFFF), 0x8000_0021);
        // CR4: VMXE forced on, bits above FIXED1 cleared.
        assert_eq!(apply_fixed(1 << 30, CR4_VMXE, 0x0037_27FF), CR4_VMXE);
    }

    #[test]
    fn skylake_model_gets_every_feature() {
        let c = VmxCaps::from_msrs(&skylake(), 40).unwrap();
        assert_eq!(c.revision, 0x2B);
        assert!(c.true_controls);
        assert!(c.vpid && c.unrestricted_guest && c.switches_efer());
        assert!(c.switches_pat() && c.tsc_offsetting());
        assert_ne!(
            c.proc & (proc::CR8_LOAD_EXITING | proc::CR8_STORE_EXITING),
            0
        );
        assert_ne!(c.proc2 & proc2::WBINVD_EXITING, 0);
        assert_eq!(c.invept, InveptType::SingleContext);
        assert!(c.stage2.leaf_1g && c.stage2.accessed_dirty);
        assert_eq!(c.stage2.host_phys_bits, 40);
        assert_ne!(c.proc & proc::HLT_EXITING, 0);
        assert_ne!(c.pin & pin::EXTERNAL_INTERRUPT_EXITING, 0);
        // Interrupts are not acknowledged on exit: the host's IDT handler takes them.
        assert_eq!(c.exit & exit_ctl::ACK_INTERRUPT_ON_EXIT, 0);
        assert_ne!(c.proc & proc::UNCONDITIONAL_IO_EXITING, 0);
        assert_eq!(c.proc & proc::USE_MSR_BITMAPS, 0);
        // The TRUE controls let CR3 loads and stores run without exits.
        assert_eq!(
            c.proc & (proc::CR3_LOAD_EXITING | proc::CR3_STORE_EXITING),
            0
        );
        assert_ne!(c.proc2 & proc2::ENABLE_EPT, 0);
        // The must-be-one bits of each group are kept.
        let m = skylake();
        assert_eq!(c.pin & m.pin as u32, m.pin as u32);
        assert_eq!(c.exit & m.exit as u32, m.exit as u32);
        assert_eq!(c.entry & m.entry as u32, m.entry as u32);
    }

    #[test]
    fn sandy_bridge_model_has_ept_without_1g_and_ad() {
        let c = VmxCaps::from_msrs(&sandy_bridge(), 36).unwrap();
        assert!(!c.stage2.leaf_1g && !c.stage2.accessed_dirty && c.stage2.leaf_2m);
        assert!(c.vpid && c.unrestricted_guest);
        assert_eq!(c.invept, InveptType::SingleContext);
    }

    #[test]
    fn refusals() {
        let mut m = skylake();
        m.feature_control = 0x1;
        assert_eq!(
            VmxCaps::from_msrs(&m, 36),
            Err(VmxError::DisabledByFirmware)
        );
        let mut m = skylake();
        m.proc2 &= !(u64::from(proc2::ENABLE_EPT) << 32);
        assert!(matches!(
            VmxCaps::from_msrs(&m, 36),
            Err(VmxError::MissingControl {
                group: "secondary processor-based",
                ..
            })
        ));
        let mut m = skylake();
        m.ept_vpid_cap &= !((1 << 25) | (1 << 26));
        assert_eq!(VmxCaps::from_msrs(&m, 36), Err(VmxError::NoInvept));
        let mut m = skylake();
        m.ept_vpid_cap &= !(1 << 25);
        assert_eq!(
            VmxCaps::from_msrs(&m, 36).unwrap().invept,
            InveptType::AllContext
        );
        let mut m = skylake();
        m.ept_vpid_cap &= !(1 << 6);
        assert_eq!(VmxCaps::from_msrs(&m, 36), Err(VmxError::EptUnusable));
        let mut m = skylake();
        m.basic = (6144u64 << 32) | 1;
        assert_eq!(
            VmxCaps::from_msrs(&m, 36),
            Err(VmxError::RegionTooLarge { size: 6144 })
        );
        // Without VPID and unrestricted guest the caps still work, without them.
        let mut m = skylake();
        m.proc2 &= !(u64::from(proc2::ENABLE_VPID | proc2::UNRESTRICTED_GUEST) << 32);
        let c = VmxCaps::from_msrs(&m, 36).unwrap();
        assert!(!c.vpid && !c.unrestricted_guest);
    }
}
