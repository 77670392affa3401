//! Stage-2 faults from both vendors, decoded into one [`Stage2Fault`].
//!
//! Intel: an EPT violation (exit reason 48) carries an exit qualification
//! (SDM Vol. 3C §28.2.1, Table 28-7) and the GPA in the VMCS; an EPT
//! misconfiguration (exit reason 49) only the GPA. AMD: a nested page fault
//! (`#VMEXIT(NPF)`, exit code 0x400) carries a page-fault error code in EXITINFO1 and
//! the GPA in EXITINFO2 (APM Vol. 2 §15.25.6).

use memory_set::GuestPhysAddr;

use crate::format::Access;

/// Why the access faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// Nothing maps the address.
    NotPresent,
    /// A leaf maps it without the needed right.
    Permission,
    /// The table holds an entry the hardware rejects (EPT misconfiguration; NPT
    /// reserved bit).
    Misconfig,
}

/// One stage-2 fault, whichever vendor reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stage2Fault {
    /// The faulting guest-physical address.
    pub gpa: GuestPhysAddr,
    /// The access that faulted (exactly one right for violations; empty when the
    /// hardware does not say, as for EPT misconfigurations).
    pub access: Access,
    /// Why.
    pub kind: FaultKind,
    /// Whether the access was the guest's own page-table walk (reading or updating
    /// its paging structures) rather than the final access.
    pub in_guest_walk: bool,
}

/// EPT-violation exit qualification bits (SDM Vol. 3C §28.2.1, Table 28-7).
pub mod ept_qual {
    /// Bit 0: the access was a data read.
    pub const READ: u64 = 1 << 0;
    /// Bit 1: the access was a data write.
    pub const WRITE: u64 = 1 << 1;
    /// Bit 2: the access was an instruction fetch.
    pub const FETCH: u64 = 1 << 2;
    /// Bit 3: the GPA was readable (AND of the read bits of the walk).
    pub const READABLE: u64 = 1 << 3;
    /// Bit 4: the GPA was writable.
    pub const WRITABLE: u64 = 1 << 4;
    /// Bit 5: the GPA was executable (supervisor-executable with mode-based control).
    pub const EXECUTABLE: u64 = 1 << 5;
    /// Bit 6: the GPA was user-mode executable (mode-based execute control only).
    pub const USER_EXECUTABLE: u64 = 1 << 6;
    /// Bit 7: the guest linear-address field is valid.
    pub const LINEAR_VALID: u64 = 1 << 7;
    /// Bit 8 (when bit 7 is set): 1 if the access was to the translated linear
    /// address, 0 if it was part of the guest's paging-structure walk.
    pub const TRANSLATED: u64 = 1 << 8;
}

/// Nested-page-fault EXITINFO1 bits: the #PF error code (APM Vol. 2 §8.4.2) plus
/// the nested-paging bits 32 and 33 (APM Vol. 2 §15.25.6).
pub mod npf_info {
    /// Bit 0: the nested entry was present (a protection violation).
    pub const PRESENT: u64 = 1 << 0;
    /// Bit 1: the access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// Bit 2: user access (always set for nested walks).
    pub const USER: u64 = 1 << 2;
    /// Bit 3: a reserved bit was set in a nested entry.
    pub const RESERVED: u64 = 1 << 3;
    /// Bit 4: the access was an instruction fetch.
    pub const FETCH: u64 = 1 << 4;
    /// Bit 32: the fault was on the final guest-physical address.
    pub const FINAL_GPA: u64 = 1 << 32;
    /// Bit 33: the fault was on a guest page-table access.
    pub const GUEST_WALK: u64 = 1 << 33;
}

impl Stage2Fault {
    /// Decodes an EPT violation: `qualification` is the exit qualification, `gpa` the
    /// VMCS guest-physical-address field (SDM Vol. 3C §28.2.1, Table 28-7).
    pub fn from_ept_violation(qualification: u64, gpa: u64) -> Self {
        use ept_qual::*;
        // A fetch is reported with only bit 2; a read-modify-write has bits 0 and 1:
        // report the strongest right the access needed.
        let access = if qualification & FETCH != 0 {
            Access::EXECUTE
        } else if qualification & WRITE != 0 {
            Access::WRITE
        } else {
            Access::READ
        };
        let permitted = qualification & (READABLE | WRITABLE | EXECUTABLE | USER_EXECUTABLE);
        Self {
            gpa: GuestPhysAddr::new(gpa as usize),
            access,
            kind: if permitted == 0 {
                FaultKind::NotPresent
            } else {
                FaultKind::Permission
            },
            in_guest_walk: qualification & LINEAR_VALID != 0 && qualification & TRANSLATED == 0,
        }
    }

    /// An EPT misconfiguration (exit reason 49): only the GPA is known
    /// (SDM Vol. 3C §29.3.3.1).
    pub fn from_ept_misconfig(gpa: u64) -> Self {
        Self {
            gpa: GuestPhysAddr::new(gpa as usize),
            access: Access::empty(),
            kind: FaultKind::Misconfig,
            in_guest_walk: false,
        }
    }

    /// Decodes a nested page fault from EXITINFO1 (error code) and EXITINFO2 (GPA)
    /// (APM Vol. 2 §15.25.6).
    pub fn from_npf(exitinfo1: u64, exitinfo2: u64) -> Self {
        use npf_info::*;
        let access = if exitinfo1 & FETCH != 0 {
            Access::EXECUTE
        } else if exitinfo1 & WRITE != 0 {
            Access::WRITE
        } else {
            Access::READ
        };
        let kind = if exitinfo1 & RESERVED != 0 {
            FaultKind::Misconfig
        } else if exitinfo1 & PRESENT != 0 {
            FaultKind::Permission
        } else {
            FaultKind::NotPresent
        };
        Self {
            gpa: GuestPhysAddr::new(exitinfo2 as usize),
            access,
            kind,
            in_guest_walk: exitinfo1 & GUEST_WALK != 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ept_violation_kinds_and_access() {
        // Read of an unmapped page, final access (bits 7 and 8).
        let f = Stage2Fault::from_ept_violation(0x181, 0x1234_5000);
        assert_eq!(f.gpa, GuestPhysAddr::new(0x1234_5000));
        assert_eq!(f.access, Access::READ);
        assert_eq!(f.kind, FaultKind::NotPresent);
        assert!(!f.in_guest_walk);
        // Write to a read/execute page.
        let f = Stage2Fault::from_ept_violation(0x2 | 0x8 | 0x20 | 0x180, 0);
        assert_eq!((f.access, f.kind), (Access::WRITE, FaultKind::Permission));
        // Fetch from a read-only page during... the final access.
        let f = Stage2Fault::from_ept_violation(0x4 | 0x8, 0);
        assert_eq!((f.access, f.kind), (Access::EXECUTE, FaultKind::Permission));
        // Guest page walk: bit 7 set, bit 8 clear.
        let f = Stage2Fault::from_ept_violation(0x1 | 0x80, 0);
        assert!(f.in_guest_walk);
        // No linear address: not a walk.
        assert!(!Stage2Fault::from_ept_violation(0x1, 0).in_guest_walk);
        // Only user-executable: still a permission fault.
        let f = Stage2Fault::from_ept_violation(0x1 | 0x40, 0);
        assert_eq!(f.kind, FaultKind::Permission);
        // Read-modify-write reports the write.
        assert_eq!(
            Stage2Fault::from_ept_violation(0x3, 0).access,
            Access::WRITE
        );
    }

    #[test]
    fn ept_misconfig() {
        let f = Stage2Fault::from_ept_misconfig(0xfee0_0000);
        assert_eq!(f.kind, FaultKind::Misconfig);
        assert!(f.access.is_empty());
        assert_eq!(f.gpa.as_usize(), 0xfee0_0000);
    }

    #[test]
    fn npf_decoding() {
        // Not present read, final GPA (as QEMU reports: bits 32 and 2).
        let f = Stage2Fault::from_npf((1 << 32) | 0x4, 0xdead_0000);
        assert_eq!(f.gpa.as_usize(), 0xdead_0000);
        assert_eq!((f.access, f.kind), (Access::READ, FaultKind::NotPresent));
        assert!(!f.in_guest_walk);
        // Present + write: permission.
        let f = Stage2Fault::from_npf((1 << 32) | 0x7, 0);
        assert_eq!((f.access, f.kind), (Access::WRITE, FaultKind::Permission));
        // Fetch.
        let f = Stage2Fault::from_npf((1 << 32) | 0x15, 0);
        assert_eq!((f.access, f.kind), (Access::EXECUTE, FaultKind::Permission));
        // Reserved bit: misconfiguration, whatever P says.
        let f = Stage2Fault::from_npf((1 << 32) | 0xd, 0);
        assert_eq!(f.kind, FaultKind::Misconfig);
        // During the guest's page walk.
        let f = Stage2Fault::from_npf((1 << 33) | 0x6, 0x3000);
        assert!(f.in_guest_walk);
        assert_eq!(f.access, Access::WRITE);
    }
}
