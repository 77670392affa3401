//! Probing the running CPU for VMX: reading the VMX capability MSRs (which
//! [`caps`] turns into the controls in use) and the physical-address
//! width; [`rdmsr`] also reads the host MSRs the VMCS's host state takes.

use x86_64::registers::model_specific::Msr;

use super::caps::{self, VmxMsrs, msr};
use super::fields::{proc, proc2};

/// Reads an MSR.
pub(super) fn rdmsr(number: u32) -> u64 {
    // SAFETY: only architectural MSRs that exist on every VMX-capable CPU are read
    // (the VMX capability MSRs only after CPUID reported VMX).
    unsafe { Msr::new(number).read() }
}

/// Reads the VMX capability MSRs, preferring the TRUE_* controls (SDM vol. 3D A.1-A.5).
pub(super) fn read_msrs() -> VmxMsrs {
    let basic = rdmsr(msr::VMX_BASIC);
    let true_ctls = basic & caps::BASIC_TRUE_CONTROLS != 0;
    let pick = |plain, truer| rdmsr(if true_ctls { truer } else { plain });
    let proc_ctls = pick(msr::PROCBASED_CTLS, msr::TRUE_PROCBASED_CTLS);
    let has_proc2 = proc_ctls >> 32 & u64::from(proc::SECONDARY_CONTROLS) != 0;
    let proc2_ctls = if has_proc2 {
        rdmsr(msr::PROCBASED_CTLS2)
    } else {
        0
    };
    let ept_or_vpid = u64::from(proc2::ENABLE_EPT | proc2::ENABLE_VPID) << 32;
    VmxMsrs {
        feature_control: rdmsr(msr::FEATURE_CONTROL),
        basic,
        pin: pick(msr::PINBASED_CTLS, msr::TRUE_PINBASED_CTLS),
        proc: proc_ctls,
        proc2: proc2_ctls,
        exit: pick(msr::EXIT_CTLS, msr::TRUE_EXIT_CTLS),
        entry: pick(msr::ENTRY_CTLS, msr::TRUE_ENTRY_CTLS),
        cr0_fixed0: rdmsr(msr::CR0_FIXED0),
        cr0_fixed1: rdmsr(msr::CR0_FIXED1),
        cr4_fixed0: rdmsr(msr::CR4_FIXED0),
        cr4_fixed1: rdmsr(msr::CR4_FIXED1),
        ept_vpid_cap: if proc2_ctls & ept_or_vpid != 0 {
            rdmsr(msr::EPT_VPID_CAP)
        } else {
            0
        },
    }
}

/// CPUID.80000008H:EAX bits 7:0, the physical-address width (36 if the leaf is missing).
pub(super) fn host_phys_bits() -> u8 {
    if core::arch::x86_64::__cpuid(0x8000_0000).eax >= 0x8000_0008 {
        core::arch::x86_64::__cpuid(0x8000_0008).eax as u8
    } else {
        36
    }
}
