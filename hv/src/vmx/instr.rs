//! The VMX instructions (SDM vol. 3C, chapter 31) as functions that report
//! VMfailInvalid / VMfailValid (CF / ZF set, SDM 31.2) as errors.
//!
//! They are only meaningful on a CPU in VMX operation: each is `unsafe` and states
//! what its caller must guarantee.

use core::arch::asm;

use super::fields::field32;

/// A failed VMX instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmFail {
    /// VMfailInvalid (CF = 1): no current VMCS, or VMX is off.
    Invalid,
    /// VMfailValid (ZF = 1) with the VM-instruction error number.
    Valid(u32),
}

impl VmFail {
    /// The VM-instruction error number (0 for VMfailInvalid).
    pub fn error(self) -> u32 {
        match self {
            Self::Invalid => 0,
            Self::Valid(e) => e,
        }
    }
}

/// Turns the CF/ZF flags after a VMX instruction into a result.
fn status(cf: u8, zf: u8) -> Result<(), VmFail> {
    if cf != 0 {
        Err(VmFail::Invalid)
    } else if zf != 0 {
        // SAFETY: VMfailValid means there is a current VMCS whose VM-instruction error
        // field is readable.
        Err(VmFail::Valid(
            unsafe { vmread(field32::VM_INSTRUCTION_ERROR) } as u32,
        ))
    } else {
        Ok(())
    }
}

/// VMXON with the region at physical address `region`.
///
/// # Safety
/// CR4.VMXE must be set, CR0/CR4 must satisfy the fixed-bit MSRs, and `region` must be
/// a zeroed, page-aligned, identity-mapped page holding the VMCS revision identifier
/// that stays allocated while VMX is on.
pub unsafe fn vmxon(region: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees the preconditions of VMXON.
    unsafe {
        asm!("vmxon [{0}]", "setc {1}", "setz {2}", in(reg) &region, out(reg_byte) cf,
            out(reg_byte) zf, options(nostack))
    };
    if cf != 0 {
        Err(VmFail::Invalid)
    } else if zf != 0 {
        Err(VmFail::Valid(0))
    } else {
        Ok(())
    }
}

/// VMCLEAR: writes the VMCS at `vmcs` back to memory and makes it clear (not
/// launched, not current).
///
/// # Safety
/// The CPU must be in VMX operation and `vmcs` a VMCS region of this hypervisor.
pub unsafe fn vmclear(vmcs: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX operation and a valid VMCS region.
    unsafe {
        asm!("vmclear [{0}]", "setc {1}", "setz {2}", in(reg) &vmcs, out(reg_byte) cf,
            out(reg_byte) zf, options(nostack))
    };
    status(cf, zf)
}

/// VMPTRLD: makes the VMCS at `vmcs` current.
///
/// # Safety
/// The CPU must be in VMX operation and `vmcs` a VMCS region of this hypervisor with
/// the right revision identifier.
pub unsafe fn vmptrld(vmcs: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX operation and a valid VMCS region.
    unsafe {
        asm!("vmptrld [{0}]", "setc {1}", "setz {2}", in(reg) &vmcs, out(reg_byte) cf,
            out(reg_byte) zf, options(nostack))
    };
    status(cf, zf)
}

/// VMREAD of `field` from the current VMCS; 0 if the read fails.
///
/// # Safety
/// The CPU must be in VMX operation with a current VMCS.
pub unsafe fn vmread(field: u32) -> u64 {
    let value: u64;
    // SAFETY: the caller guarantees a current VMCS; a failed read leaves flags set and
    // the destination unchanged, which the zero initialisation covers.
    unsafe {
        asm!("xor {0:e}, {0:e}", "vmread {0}, {1}", out(reg) value, in(reg) u64::from(field),
            options(nostack))
    };
    value
}

/// VMWRITE of `value` to `field` of the current VMCS.
///
/// # Safety
/// The CPU must be in VMX operation with a current VMCS, and `value` must be a valid
/// setting of `field` for the guest or host state this hypervisor builds.
pub unsafe fn vmwrite(field: u32, value: u64) -> Result<(), VmFail> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees a current VMCS and a sensible value.
    unsafe {
        asm!("vmwrite {0}, {1}", "setc {2}", "setz {3}", in(reg) u64::from(field),
            in(reg) value, out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    status(cf, zf)
}

/// INVEPT of `kind` (1 single-context, 2 all-context) for `eptp`
/// (SDM vol. 3C 31.3, INVEPT; the descriptor is the EPTP and 64 reserved bits).
///
/// # Safety
/// The CPU must be in VMX operation and support the INVEPT type.
pub unsafe fn invept(kind: u64, eptp: u64) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [eptp, 0];
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX operation and a supported type; the descriptor
    // is a 16-byte readable buffer.
    unsafe {
        asm!("invept {0}, [{1}]", "setc {2}", "setz {3}", in(reg) kind, in(reg) &descriptor,
            out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    status(cf, zf)
}

/// INVVPID single-context (type 1) for `vpid` (SDM vol. 3C 31.3, INVVPID; the
/// descriptor holds the VPID in bits 15:0 and a linear address).
///
/// # Safety
/// The CPU must be in VMX operation and support single-context INVVPID; `vpid` must
/// not be 0.
pub unsafe fn invvpid_single(vpid: u16) -> Result<(), VmFail> {
    let descriptor: [u64; 2] = [u64::from(vpid), 0];
    let (cf, zf): (u8, u8);
    // SAFETY: the caller guarantees VMX operation, support for the type and a non-zero
    // VPID; the descriptor is a 16-byte readable buffer.
    unsafe {
        asm!("invvpid {0}, [{1}]", "setc {2}", "setz {3}", in(reg) 1u64, in(reg) &descriptor,
            out(reg_byte) cf, out(reg_byte) zf, options(nostack))
    };
    status(cf, zf)
}
