//! Intel EPT entries (SDM Vol. 3C §29.3.2 "EPT Translation Mechanism", Tables 29-2
//! to 29-7) and the EPT pointer (SDM Vol. 3C §25.6.11, Table 25-9).

use memory_set::HostPhysAddr;

use super::{ADDR_MASK, AttrError, EntryProblem, LeafAttr, MemType, Stage2Format};
use crate::caps::Stage2Caps;
use crate::format::{Access, huge_leaf_reserved, refuse_reserved, reserved_phys_mask};
use crate::size::LeafSize;

/// Intel Extended Page Tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ept;

impl Ept {
    /// Bit 0: read access allowed (SDM Vol. 3C Tables 29-2..29-7).
    pub const READ: u64 = 1 << 0;
    /// Bit 1: write access allowed (SDM Vol. 3C Tables 29-2..29-7).
    pub const WRITE: u64 = 1 << 1;
    /// Bit 2: instruction fetch allowed (supervisor fetch with mode-based execute
    /// control) (SDM Vol. 3C Tables 29-2..29-7).
    pub const EXECUTE: u64 = 1 << 2;
    /// Bits 5:3 of a leaf: EPT memory type (SDM Vol. 3C §29.3.7, Tables 29-3/5/7).
    pub const MEM_TYPE_SHIFT: u32 = 3;
    /// Mask of the leaf memory-type field, bits 5:3.
    pub const MEM_TYPE_MASK: u64 = 0b111 << 3;
    /// Bit 6 of a leaf: ignore the guest PAT memory type (SDM Vol. 3C §29.3.7.2).
    /// We leave it clear so the guest PAT combines with the EPT type.
    pub const IGNORE_PAT: u64 = 1 << 6;
    /// Bit 7: in a PDPTE/PDE, 1 maps a 1 GiB / 2 MiB page (SDM Vol. 3C Tables 29-3,
    /// 29-5); reserved in the PML4E, ignored in a PTE.
    pub const LEAF: u64 = 1 << 7;
    /// Bit 8: accessed, set by the CPU when A/D flags are enabled in the EPTP
    /// (SDM Vol. 3C §29.3.5).
    pub const ACCESSED: u64 = 1 << 8;
    /// Bit 9 of a leaf: dirty, set by the CPU on writes when A/D flags are enabled
    /// (SDM Vol. 3C §29.3.5).
    pub const DIRTY: u64 = 1 << 9;
    /// Bit 10: user-mode execute, only with mode-based execute control
    /// (SDM Vol. 3C §29.3.2); never set by this crate.
    pub const USER_EXECUTE: u64 = 1 << 10;

    /// EPT memory type codes (SDM Vol. 3C §29.3.7, Table 12-2 encodings): UC.
    pub const MT_UC: u8 = 0;
    /// WC.
    pub const MT_WC: u8 = 1;
    /// WT.
    pub const MT_WT: u8 = 4;
    /// WP.
    pub const MT_WP: u8 = 5;
    /// WB.
    pub const MT_WB: u8 = 6;

    /// EPTP bits 2:0: paging-structure memory type, UC (0) or WB (6)
    /// (SDM Vol. 3C §25.6.11, Table 25-9).
    pub const EPTP_MEM_TYPE_MASK: u64 = 0b111;
    /// EPTP bits 5:3: page-walk length minus one; 3 for a 4-level walk
    /// (SDM Vol. 3C §25.6.11, Table 25-9).
    pub const EPTP_WALK_4: u64 = 3 << 3;
    /// EPTP bit 6: enable accessed and dirty flags (SDM Vol. 3C §25.6.11, Table 25-9).
    pub const EPTP_AD_ENABLE: u64 = 1 << 6;

    /// The EPT code of a memory type.
    pub const fn mem_type_code(mt: MemType) -> u8 {
        match mt {
            MemType::Uncacheable => Self::MT_UC,
            MemType::WriteCombining => Self::MT_WC,
            MemType::WriteThrough => Self::MT_WT,
            MemType::WriteProtected => Self::MT_WP,
            MemType::WriteBack => Self::MT_WB,
        }
    }

    /// The memory type of an EPT code; `None` for the reserved codes 2, 3 and 7.
    pub const fn mem_type_from_code(code: u8) -> Option<MemType> {
        match code {
            Self::MT_UC => Some(MemType::Uncacheable),
            Self::MT_WC => Some(MemType::WriteCombining),
            Self::MT_WT => Some(MemType::WriteThrough),
            Self::MT_WP => Some(MemType::WriteProtected),
            Self::MT_WB => Some(MemType::WriteBack),
            _ => None,
        }
    }

    /// Builds an EPT pointer: WB paging-structure accesses when supported (UC
    /// otherwise), a 4-level walk, and A/D flags only if `caps.accessed_dirty`
    /// (SDM Vol. 3C §25.6.11, Table 25-9).
    pub fn eptp(root: HostPhysAddr, caps: &Stage2Caps) -> u64 {
        let mt = if caps.mem_wb {
            Self::MT_WB
        } else {
            Self::MT_UC
        } as u64;
        let ad = if caps.accessed_dirty {
            Self::EPTP_AD_ENABLE
        } else {
            0
        };
        (root.as_u64() & ADDR_MASK) | mt | Self::EPTP_WALK_4 | ad
    }
}

/// Reserved bits of a PML4E: 7:3 (SDM Vol. 3C Table 29-2).
const PML4E_RESERVED: u64 = 0b1_1111 << 3;
/// Reserved bits of a non-leaf PDPTE/PDE: 6:3 (SDM Vol. 3C Tables 29-4, 29-6).
const NONLEAF_RESERVED: u64 = 0b1111 << 3;
/// Reserved bits of a 1 GiB leaf: 29:12 (SDM Vol. 3C Table 29-3).
const LEAF_1G_RESERVED: u64 = 0x3fff_f000;
/// Reserved bits of a 2 MiB leaf: 20:12 (SDM Vol. 3C Table 29-5).
const LEAF_2M_RESERVED: u64 = 0x001f_f000;

impl Stage2Format for Ept {
    const NAME: &'static str = "EPT";
    const HUGE_BIT: u64 = Ept::LEAF;
    const ACCESSED: u64 = Ept::ACCESSED;
    const DIRTY: u64 = Ept::DIRTY;

    #[inline]
    fn is_present(entry: u64) -> bool {
        // SDM Vol. 3C §29.3.2: an entry is present if any of bits 2:0 is set (bit 10
        // too with mode-based execute control, which this crate never enables).
        entry & (Self::READ | Self::WRITE | Self::EXECUTE) != 0
    }

    #[inline]
    fn table_entry(table: HostPhysAddr) -> u64 {
        (table.as_u64() & ADDR_MASK) | Self::READ | Self::WRITE | Self::EXECUTE
    }

    #[inline]
    fn leaf_bits(attr: LeafAttr, level: u8, caps: &Stage2Caps) -> Result<u64, AttrError> {
        let a = attr.access;
        if a.is_empty() {
            return Err(AttrError::NoAccess);
        }
        if a.contains(Access::WRITE) && !a.contains(Access::READ) {
            return Err(AttrError::WriteWithoutRead);
        }
        if a == Access::EXECUTE && !caps.execute_only {
            return Err(AttrError::ExecuteOnlyUnsupported);
        }
        let mut bits = a.bits() as u64; // Access bits 0..2 are EPT bits 0..2.
        bits |= (Self::mem_type_code(attr.mem_type) as u64) << Self::MEM_TYPE_SHIFT;
        if level > 1 {
            bits |= Self::LEAF;
        }
        Ok(bits)
    }

    #[inline]
    fn leaf_attr(entry: u64, _level: u8) -> LeafAttr {
        let code = ((entry & Self::MEM_TYPE_MASK) >> Self::MEM_TYPE_SHIFT) as u8;
        LeafAttr {
            access: Access::from_bits_truncate((entry & 0b111) as u8),
            mem_type: Self::mem_type_from_code(code).unwrap_or(MemType::Uncacheable),
        }
    }

    fn check_entry(entry: u64, level: u8, caps: &Stage2Caps) -> Result<(), EntryProblem> {
        // SDM Vol. 3C §29.3.3.1 "EPT Misconfigurations".
        let rwx = entry & 0b111;
        if rwx & Self::WRITE != 0 && rwx & Self::READ == 0 {
            return Err(EntryProblem::WriteWithoutRead);
        }
        if rwx == Self::EXECUTE && !caps.execute_only {
            return Err(EntryProblem::ExecuteOnlyUnsupported);
        }
        refuse_reserved(entry, reserved_phys_mask(caps.host_phys_bits))?;
        let is_leaf = level == 1 || (level < 4 && entry & Self::LEAF != 0);
        let reserved = match (level, is_leaf) {
            (4, _) => PML4E_RESERVED,
            (3, true) => huge_leaf_reserved(caps, LeafSize::Size1G, LEAF_1G_RESERVED)?,
            (2, true) => huge_leaf_reserved(caps, LeafSize::Size2M, LEAF_2M_RESERVED)?,
            (_, false) => NONLEAF_RESERVED,
            _ => 0,
        };
        refuse_reserved(entry, reserved)?;
        if is_leaf {
            let code = ((entry & Self::MEM_TYPE_MASK) >> Self::MEM_TYPE_SHIFT) as u8;
            if Self::mem_type_from_code(code).is_none() {
                return Err(EntryProblem::BadMemType(code));
            }
        }
        Ok(())
    }

    fn root_pointer(root: HostPhysAddr, caps: &Stage2Caps) -> u64 {
        Self::eptp(root, caps)
    }
}
