//! [`TableError`]: every way a table operation can refuse.

use core::fmt;

use memory_set::{GuestPhysAddr, HostPhysAddr};

use crate::format::AttrError;
use crate::size::LeafSize;

/// Why a table operation refused. On any error the table is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The allocator ran out of frames for a table at `level` (4 = root, 3 = PDPT,
    /// 2 = PD, 1 = PT).
    NoMemory {
        /// The level of the table that could not be allocated.
        level: u8,
    },
    /// Something is already mapped at `gpa` (the first mapped address found).
    AlreadyMapped {
        /// The mapped address.
        gpa: GuestPhysAddr,
    },
    /// An address or size is not aligned as required.
    Unaligned {
        /// The offending address or size.
        value: usize,
        /// The alignment it needs.
        align: usize,
    },
    /// A guest-physical address lies beyond the stage-2 address width.
    OutOfRange {
        /// The first address out of range.
        gpa: GuestPhysAddr,
        /// The width: addresses must be below `2^max_bits`.
        max_bits: u8,
    },
    /// A host-physical address does not fit the entry address field (or the host
    /// MAXPHYADDR).
    HostOutOfRange {
        /// The address.
        hpa: HostPhysAddr,
    },
    /// The capabilities do not allow leaves of this size.
    UnsupportedLeaf {
        /// The size.
        size: LeafSize,
    },
    /// The attributes cannot be encoded in this format.
    BadAttr(AttrError),
    /// The hardware has no accessed/dirty flags, so there is nothing to harvest.
    NoAccessedDirty,
    /// A [`crate::size::LeafTable`] outlived a change that freed table frames, or
    /// the address is outside its span.
    StaleLeafTable,
    /// The allocator returned a frame that is not 4 KiB aligned or not mapped.
    BadFrame {
        /// The frame.
        hpa: HostPhysAddr,
    },
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::NoMemory { level } => {
                write!(f, "out of frames for a level-{level} stage-2 table")
            }
            TableError::AlreadyMapped { gpa } => write!(f, "guest address {gpa} is already mapped"),
            TableError::Unaligned { value, align } => {
                write!(f, "{value:#x} is not aligned to {align:#x}")
            }
            TableError::OutOfRange { gpa, max_bits } => {
                write!(
                    f,
                    "guest address {gpa} is beyond the {max_bits}-bit stage-2 space"
                )
            }
            TableError::HostOutOfRange { hpa } => {
                write!(f, "host address {hpa} does not fit a stage-2 entry")
            }
            TableError::UnsupportedLeaf { size } => {
                write!(f, "{size} leaves are not supported by this hardware")
            }
            TableError::BadAttr(e) => write!(f, "invalid leaf attributes: {e}"),
            TableError::NoAccessedDirty => {
                f.write_str("accessed/dirty flags are not supported by this hardware")
            }
            TableError::StaleLeafTable => f.write_str("stale or mismatched leaf-table handle"),
            TableError::BadFrame { hpa } => {
                write!(f, "allocator returned an unusable table frame {hpa}")
            }
        }
    }
}

impl From<AttrError> for TableError {
    fn from(e: AttrError) -> Self {
        TableError::BadAttr(e)
    }
}
