//! Stage-2 entry formats: one trait, two encodings (Intel EPT and AMD NPT).
//!
//! The table engine only speaks the generic vocabulary of this module ([`Access`],
//! [`MemType`], [`LeafAttr`], [`EntryKind`]); [`Ept`] and [`Npt`] turn it into bits.
//! Levels are numbered the way both manuals do for 4-level paging: 4 = PML4,
//! 3 = PDPT (1 GiB leaves), 2 = PD (2 MiB leaves), 1 = PT (4 KiB leaves).

mod ept;
mod npt;
#[cfg(test)]
mod tests;

use core::fmt;

use bitflags::bitflags;
use memory_set::HostPhysAddr;

use crate::caps::Stage2Caps;
use crate::size::LeafSize;

pub use ept::Ept;
pub use npt::{NPT_HOST_PAT, Npt};

bitflags! {
    /// Guest access rights: the permissions of a mapping, and the kind of a faulting
    /// access. Encoded per format by [`Stage2Format::leaf_bits`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Access: u8 {
        /// Data read (EPT bit 0, SDM Vol. 3C §29.3.2; NPT: the P bit, APM Vol. 2 §5.4.1).
        const READ = 1 << 0;
        /// Data write (EPT bit 1, SDM Vol. 3C §29.3.2; NPT: the R/W bit, APM Vol. 2 §5.4.1).
        const WRITE = 1 << 1;
        /// Instruction fetch (EPT bit 2, SDM Vol. 3C §29.3.2; NPT: the NX bit clear,
        /// APM Vol. 2 §5.4.1).
        const EXECUTE = 1 << 2;
    }
}

impl Access {
    /// Read, write and execute.
    pub const RWX: Self = Self::all();
    /// Read and write.
    pub const RW: Self = Self::READ.union(Self::WRITE);
    /// Read and execute.
    pub const RX: Self = Self::READ.union(Self::EXECUTE);
}

/// The memory type of a leaf (SDM Vol. 3C §12.3 "Methods of caching available",
/// Table 12-2; APM Vol. 2 §7.4 "Memory types").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MemType {
    /// UC: strong uncacheable, for device windows (EPT memory type 0).
    Uncacheable,
    /// WC: write combining (EPT memory type 1).
    WriteCombining,
    /// WT: write through (EPT memory type 4).
    WriteThrough,
    /// WP: write protected (EPT memory type 5).
    WriteProtected,
    /// WB: write back, for RAM (EPT memory type 6).
    #[default]
    WriteBack,
}

impl MemType {
    /// Every memory type, for tests and exhaustive matches.
    pub const ALL: [MemType; 5] = [
        MemType::Uncacheable,
        MemType::WriteCombining,
        MemType::WriteThrough,
        MemType::WriteProtected,
        MemType::WriteBack,
    ];
}

/// What a leaf grants: access rights and memory type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeafAttr {
    /// The access rights of the guest through this leaf.
    pub access: Access,
    /// The memory type of the leaf.
    pub mem_type: MemType,
}

impl LeafAttr {
    /// Guest RAM: write-back with the given rights.
    pub const fn ram(access: Access) -> Self {
        Self {
            access,
            mem_type: MemType::WriteBack,
        }
    }

    /// A device window: uncacheable with the given rights.
    pub const fn device(access: Access) -> Self {
        Self {
            access,
            mem_type: MemType::Uncacheable,
        }
    }
}

impl fmt::Display for LeafAttr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.access;
        let c = |flag, ch| if a.contains(flag) { ch } else { '-' };
        write!(
            f,
            "{}{}{} {:?}",
            c(Access::READ, 'r'),
            c(Access::WRITE, 'w'),
            c(Access::EXECUTE, 'x'),
            self.mem_type
        )
    }
}

/// What a raw entry is, once decoded at a known level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Not present: translations through it fault.
    Absent,
    /// Points at a next-level table.
    Table(HostPhysAddr),
    /// Maps a page of the level's size starting at the address.
    Leaf(HostPhysAddr),
}

/// Why a leaf attribute cannot be encoded in a format (with the given capabilities).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrError {
    /// No access right at all: that is "not present", use unmap instead.
    NoAccess,
    /// Write without read: an EPT misconfiguration (SDM Vol. 3C §29.3.3.1); NPT cannot
    /// express it either (a present NPT entry is always readable).
    WriteWithoutRead,
    /// Execute without read: EPT needs the execute-only capability
    /// (`IA32_VMX_EPT_VPID_CAP` bit 0); NPT cannot express it.
    ExecuteOnlyUnsupported,
}

impl fmt::Display for AttrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttrError::NoAccess => "a leaf needs at least one access right",
            AttrError::WriteWithoutRead => "write access without read access",
            AttrError::ExecuteOnlyUnsupported => "execute-only leaves are not supported",
        })
    }
}

/// A hardware-level problem in one entry, as the validator reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryProblem {
    /// EPT: bit 1 set with bit 0 clear (SDM Vol. 3C §29.3.3.1).
    WriteWithoutRead,
    /// EPT: execute-only without the capability (SDM Vol. 3C §29.3.3.1).
    ExecuteOnlyUnsupported,
    /// A reserved bit is set (the mask of the offending bits).
    ReservedBits(u64),
    /// EPT: memory type 2, 3 or 7 in a leaf (SDM Vol. 3C §29.3.3.1).
    BadMemType(u8),
    /// A leaf bit at a level that cannot hold leaves (PML4, or 1 GiB/2 MiB without the
    /// capability).
    LeafNotAllowed,
    /// NPT: a present entry without the U/S bit: every guest access faults
    /// (APM Vol. 2 §15.25.5: nested walks are user accesses).
    MissingUser,
    /// The address is not aligned to what the entry maps.
    MisalignedAddress,
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryProblem::WriteWithoutRead => f.write_str("write without read"),
            EntryProblem::ExecuteOnlyUnsupported => f.write_str("execute-only not supported"),
            EntryProblem::ReservedBits(m) => write!(f, "reserved bits {m:#x} set"),
            EntryProblem::BadMemType(t) => write!(f, "invalid memory type {t}"),
            EntryProblem::LeafNotAllowed => f.write_str("leaf not allowed at this level"),
            EntryProblem::MissingUser => f.write_str("U/S bit clear"),
            EntryProblem::MisalignedAddress => f.write_str("misaligned address"),
        }
    }
}

/// The physical address field of an entry: bits 51:12 (SDM Vol. 3C §29.3.2;
/// APM Vol. 2 §5.4.1). Bits above the CPU's MAXPHYADDR are reserved.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Mask of the physical-address bits `[max_phys_bits, 52)` that are reserved.
#[inline]
pub(crate) const fn reserved_phys_mask(max_phys_bits: u8) -> u64 {
    if max_phys_bits >= 52 {
        0
    } else {
        ADDR_MASK & !((1u64 << max_phys_bits) - 1)
    }
}

/// `Err(ReservedBits)` naming the bits of `mask` set in `entry`, if any.
#[inline]
pub(crate) fn refuse_reserved(entry: u64, mask: u64) -> Result<(), EntryProblem> {
    match entry & mask {
        0 => Ok(()),
        bits => Err(EntryProblem::ReservedBits(bits)),
    }
}

/// The reserved bits `reserved` of a huge leaf of `size`, or
/// [`EntryProblem::LeafNotAllowed`] when `caps` has no leaves of that size.
#[inline]
pub(crate) fn huge_leaf_reserved(
    caps: &Stage2Caps,
    size: LeafSize,
    reserved: u64,
) -> Result<u64, EntryProblem> {
    if caps.allows(size) {
        Ok(reserved)
    } else {
        Err(EntryProblem::LeafNotAllowed)
    }
}

/// The size in bytes mapped by one entry at `level` (1..=4).
#[inline]
pub(crate) const fn level_size(level: u8) -> u64 {
    1u64 << (12 + 9 * (level as u32 - 1))
}

/// One stage-2 entry encoding. Implemented by [`Ept`] and [`Npt`].
///
/// All functions are pure bit manipulation on `u64` entries; the table engine owns
/// the memory. `level` is 1..=4 (see the module docs).
pub trait Stage2Format: Copy + Eq + fmt::Debug + Default + Send + Sync + 'static {
    /// A short name for reports ("EPT" or "NPT").
    const NAME: &'static str;
    /// The bits that mark a leaf at levels 2 and 3 (EPT bit 7 / NPT PS bit 7).
    const HUGE_BIT: u64;
    /// The accessed bit of this format.
    const ACCESSED: u64;
    /// The dirty bit of this format (leaves only).
    const DIRTY: u64;

    /// Whether the entry is present (maps or points at something).
    fn is_present(entry: u64) -> bool;

    /// A non-leaf entry pointing at the next-level table `table`, granting every right
    /// (the leaf decides).
    fn table_entry(table: HostPhysAddr) -> u64;

    /// Every bit of a leaf at `level` except the address, or why `attr` cannot be
    /// encoded with `caps`. OR the page's address into it to get the entry.
    fn leaf_bits(attr: LeafAttr, level: u8, caps: &Stage2Caps) -> Result<u64, AttrError>;

    /// The attributes of a present leaf at `level`.
    fn leaf_attr(entry: u64, level: u8) -> LeafAttr;

    /// Decodes an entry found at `level`.
    #[inline]
    fn decode(entry: u64, level: u8) -> EntryKind {
        if !Self::is_present(entry) {
            EntryKind::Absent
        } else if level == 1 || (level < 4 && entry & Self::HUGE_BIT != 0) {
            EntryKind::Leaf(HostPhysAddr::new(
                (entry & ADDR_MASK & !(level_size(level) - 1)) as usize,
            ))
        } else {
            EntryKind::Table(HostPhysAddr::new((entry & ADDR_MASK) as usize))
        }
    }

    /// The hardware rules for one present entry at `level`, as the validator applies
    /// them (`is_leaf` says how the entry was decoded).
    fn check_entry(entry: u64, level: u8, caps: &Stage2Caps) -> Result<(), EntryProblem>;

    /// The value to load into the hardware root pointer for a table rooted at `root`
    /// (EPTP for EPT, nCR3 for NPT).
    fn root_pointer(root: HostPhysAddr, caps: &Stage2Caps) -> u64;
}
