//! AMD nested page table entries: the long-mode PTE format (APM Vol. 2 §5.4.1
//! "Field Definitions", Figures 5-17 to 5-25) walked as described in APM Vol. 2
//! §15.25 "Nested Paging".

use memory_set::HostPhysAddr;

use super::{ADDR_MASK, AttrError, EntryProblem, LeafAttr, MemType, Stage2Format};
use crate::caps::Stage2Caps;
use crate::format::{Access, huge_leaf_reserved, refuse_reserved, reserved_phys_mask};
use crate::size::LeafSize;

/// AMD nested page tables (NPT, "nested paging").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Npt;

/// The host `PAT` MSR value this crate's NPT memory-type encoding assumes.
///
/// Nested page table entries index the host PAT (APM Vol. 2 §15.25.8; the VMCB
/// `g_PAT` is for the guest's own tables). Entries 0-3 equal the power-on default
/// (WB, WT, UC-, UC); entry 4 is WC and entry 5 is WP (APM Vol. 2 §7.8.1 "PAT
/// Register"). The hypervisor must load this value when it maps WC or WP leaves.
pub const NPT_HOST_PAT: u64 = 0x0007_0501_0007_0406;

impl Npt {
    /// Bit 0: present (APM Vol. 2 §5.4.1).
    pub const PRESENT: u64 = 1 << 0;
    /// Bit 1: read/write; clear means read-only (APM Vol. 2 §5.4.1).
    pub const WRITABLE: u64 = 1 << 1;
    /// Bit 2: user/supervisor; must be set in every nested entry since nested walks
    /// are user accesses (APM Vol. 2 §5.4.1, §15.25.5).
    pub const USER: u64 = 1 << 2;
    /// Bit 3: page-level write-through, PAT index bit 0 (APM Vol. 2 §5.4.1, §7.8.2).
    pub const PWT: u64 = 1 << 3;
    /// Bit 4: page-level cache disable, PAT index bit 1 (APM Vol. 2 §5.4.1, §7.8.2).
    pub const PCD: u64 = 1 << 4;
    /// Bit 5: accessed, set by the CPU (APM Vol. 2 §5.4.1).
    pub const ACCESSED: u64 = 1 << 5;
    /// Bit 6 of a leaf: dirty, set by the CPU on writes (APM Vol. 2 §5.4.1).
    pub const DIRTY: u64 = 1 << 6;
    /// Bit 7 of a PDE/PDPE: page size, maps a 2 MiB / 1 GiB page (APM Vol. 2 §5.4.1);
    /// must be zero in a PML4E.
    pub const HUGE: u64 = 1 << 7;
    /// Bit 7 of a PTE: PAT index bit 2 for a 4 KiB page (APM Vol. 2 §5.4.1, §7.8.2).
    pub const PAT_4K: u64 = 1 << 7;
    /// Bit 12 of a 2 MiB / 1 GiB leaf: PAT index bit 2 (APM Vol. 2 §5.4.1, §7.8.2).
    pub const PAT_HUGE: u64 = 1 << 12;
    /// Bit 63: no-execute, honoured when the host's EFER.NXE is set
    /// (APM Vol. 2 §5.4.1, §15.25.5).
    pub const NO_EXECUTE: u64 = 1 << 63;

    /// The PAT index (0..8) that [`NPT_HOST_PAT`] gives to a memory type.
    pub const fn pat_index(mt: MemType) -> u8 {
        match mt {
            MemType::WriteBack => 0,
            MemType::WriteThrough => 1,
            MemType::Uncacheable => 3,
            MemType::WriteCombining => 4,
            MemType::WriteProtected => 5,
        }
    }

    /// The memory type of a PAT index under [`NPT_HOST_PAT`] (UC- counts as UC).
    pub const fn mem_type_of_pat_index(index: u8) -> MemType {
        match index & 7 {
            0 => MemType::WriteBack,
            1 => MemType::WriteThrough,
            4 => MemType::WriteCombining,
            5 => MemType::WriteProtected,
            _ => MemType::Uncacheable,
        }
    }

    const fn pat_bit(level: u8) -> u64 {
        if level == 1 {
            Self::PAT_4K
        } else {
            Self::PAT_HUGE
        }
    }

    /// The nCR3 value for a nested table rooted at `root`: the PML4 address with
    /// PWT = PCD = 0, so walks are write-back (APM Vol. 2 §15.25.4, VMCB offset 0xB0).
    pub fn ncr3(root: HostPhysAddr) -> u64 {
        root.as_u64() & ADDR_MASK
    }
}

/// Reserved bit of a PML4E: 7 (APM Vol. 2 §5.4.1, Figure 5-18, "MBZ").
const PML4E_RESERVED: u64 = 1 << 7;
/// Reserved bits of a 1 GiB leaf: 29:13 (APM Vol. 2 Figure 5-23).
const LEAF_1G_RESERVED: u64 = 0x3fff_e000;
/// Reserved bits of a 2 MiB leaf: 20:13 (APM Vol. 2 Figure 5-25).
const LEAF_2M_RESERVED: u64 = 0x001f_e000;

impl Stage2Format for Npt {
    const NAME: &'static str = "NPT";
    const HUGE_BIT: u64 = Npt::HUGE;
    const ACCESSED: u64 = Npt::ACCESSED;
    const DIRTY: u64 = Npt::DIRTY;

    #[inline]
    fn is_present(entry: u64) -> bool {
        entry & Self::PRESENT != 0
    }

    #[inline]
    fn table_entry(table: HostPhysAddr) -> u64 {
        (table.as_u64() & ADDR_MASK) | Self::PRESENT | Self::WRITABLE | Self::USER
    }

    #[inline]
    fn leaf_bits(attr: LeafAttr, level: u8, _caps: &Stage2Caps) -> Result<u64, AttrError> {
        let a = attr.access;
        if a.is_empty() {
            return Err(AttrError::NoAccess);
        }
        if !a.contains(Access::READ) {
            return Err(if a.contains(Access::WRITE) {
                AttrError::WriteWithoutRead
            } else {
                AttrError::ExecuteOnlyUnsupported
            });
        }
        let mut bits = Self::PRESENT | Self::USER;
        if a.contains(Access::WRITE) {
            bits |= Self::WRITABLE;
        }
        if !a.contains(Access::EXECUTE) {
            bits |= Self::NO_EXECUTE;
        }
        let idx = Self::pat_index(attr.mem_type);
        if idx & 1 != 0 {
            bits |= Self::PWT;
        }
        if idx & 2 != 0 {
            bits |= Self::PCD;
        }
        if idx & 4 != 0 {
            bits |= Self::pat_bit(level);
        }
        if level > 1 {
            bits |= Self::HUGE;
        }
        Ok(bits)
    }

    #[inline]
    fn leaf_attr(entry: u64, level: u8) -> LeafAttr {
        let mut access = Access::READ;
        if entry & Self::WRITABLE != 0 {
            access |= Access::WRITE;
        }
        if entry & Self::NO_EXECUTE == 0 {
            access |= Access::EXECUTE;
        }
        let idx = (entry & Self::PWT != 0) as u8
            | ((entry & Self::PCD != 0) as u8) << 1
            | ((entry & Self::pat_bit(level) != 0) as u8) << 2;
        LeafAttr {
            access,
            mem_type: Self::mem_type_of_pat_index(idx),
        }
    }

    fn check_entry(entry: u64, level: u8, caps: &Stage2Caps) -> Result<(), EntryProblem> {
        // APM Vol. 2 §5.4.1 reserved (MBZ) bits; §15.25.5 the U bit.
        if entry & Self::USER == 0 {
            return Err(EntryProblem::MissingUser);
        }
        refuse_reserved(entry, reserved_phys_mask(caps.host_phys_bits))?;
        let huge = entry & Self::HUGE != 0;
        let reserved = match (level, huge) {
            (4, _) => PML4E_RESERVED,
            (3, true) => huge_leaf_reserved(caps, LeafSize::Size1G, LEAF_1G_RESERVED)?,
            (2, true) => huge_leaf_reserved(caps, LeafSize::Size2M, LEAF_2M_RESERVED)?,
            _ => 0,
        };
        refuse_reserved(entry, reserved)?;
        Ok(())
    }

    fn root_pointer(root: HostPhysAddr, _caps: &Stage2Caps) -> u64 {
        Self::ncr3(root)
    }
}
