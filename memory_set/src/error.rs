//! The one error type of the crate.

use core::fmt;

/// Why a parameter was rejected. Nothing was changed when this is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InvalidParam {
    /// A size of zero bytes (an empty area or range).
    ZeroSize,
    /// `start + size` would pass the top of the address space (a range ending exactly
    /// at `2^64` is fine).
    Overflow,
    /// A start or size is not a multiple of the backend's page size
    /// ([`MappingBackend::PAGE_SIZE`](crate::MappingBackend::PAGE_SIZE)).
    Unaligned {
        /// The page size the value had to be a multiple of.
        page_size: usize,
    },
    /// An alignment that is not a power of two.
    AlignNotPowerOfTwo {
        /// The rejected alignment.
        align: usize,
    },
    /// A new size for `shrink_left`/`shrink_right` outside `0 < new_size < size`.
    ShrinkSize {
        /// The requested new size.
        new_size: usize,
        /// The current size of the area.
        size: usize,
    },
}

/// Every error a [`MemoryArea`](crate::MemoryArea) or [`MemorySet`](crate::MemorySet)
/// operation can return; `E` is the backend's own error type.
///
/// Apart from [`MemorySetError::UndoFailed`] (which only a backend breaking its
/// contract can cause), an error means the set and the page table are exactly as they
/// were before the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemorySetError<E> {
    /// A parameter was rejected before anything was touched.
    InvalidParam {
        /// The exact condition.
        reason: InvalidParam,
    },
    /// The new area overlaps an existing one and replacing was not requested.
    AlreadyExists {
        /// Start address (raw) of an existing area that overlaps.
        existing_start: usize,
    },
    /// No area contains the address.
    NotFound {
        /// The address (raw) that no area contains.
        addr: usize,
    },
    /// The backend failed; everything done by this call was undone.
    Backend(E),
    /// `find_free_area`: no free, aligned range of the requested size lies in the limit.
    NoMemory {
        /// The requested size in bytes.
        size: usize,
    },
    /// The backend failed (`cause`), and then undoing this call's earlier steps failed
    /// too (`undo`), which breaks the backend contract (see the crate docs). The set
    /// and page table may disagree from here on.
    UndoFailed {
        /// The first failure.
        cause: E,
        /// The failure of the undo step.
        undo: E,
    },
}

impl<E> MemorySetError<E> {
    pub(crate) const fn invalid(reason: InvalidParam) -> Self {
        Self::InvalidParam { reason }
    }
}

impl fmt::Display for InvalidParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroSize => write!(f, "size is zero"),
            Self::Overflow => write!(f, "range passes the top of the address space"),
            Self::Unaligned { page_size } => {
                write!(f, "start or size is not a multiple of {page_size:#x}")
            }
            Self::AlignNotPowerOfTwo { align } => {
                write!(f, "alignment {align:#x} is not a power of two")
            }
            Self::ShrinkSize { new_size, size } => {
                write!(f, "new size {new_size:#x} not in (0, {size:#x})")
            }
        }
    }
}

impl<E: fmt::Debug> fmt::Display for MemorySetError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidParam { reason } => write!(f, "invalid parameter: {reason}"),
            Self::AlreadyExists { existing_start } => {
                write!(f, "range overlaps the existing area at {existing_start:#x}")
            }
            Self::NotFound { addr } => write!(f, "no area contains {addr:#x}"),
            Self::Backend(e) => write!(f, "backend failed (nothing changed): {e:?}"),
            Self::NoMemory { size } => {
                write!(f, "no free range of {size:#x} bytes inside the limit")
            }
            Self::UndoFailed { cause, undo } => write!(
                f,
                "backend failed ({cause:?}) and undoing failed too ({undo:?}): state inconsistent"
            ),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for MemorySetError<E> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_condition() {
        let e: MemorySetError<u8> = MemorySetError::invalid(InvalidParam::ZeroSize);
        assert_eq!(e.to_string(), "invalid parameter: size is zero");
        let e: MemorySetError<u8> =
            MemorySetError::invalid(InvalidParam::Unaligned { page_size: 0x1000 });
        assert_eq!(
            e.to_string(),
            "invalid parameter: start or size is not a multiple of 0x1000"
        );
        let e: MemorySetError<&str> = MemorySetError::Backend("oom");
        assert_eq!(e.to_string(), "backend failed (nothing changed): \"oom\"");
        let e: MemorySetError<u8> = MemorySetError::AlreadyExists {
            existing_start: 0x2000,
        };
        assert_eq!(e.to_string(), "range overlaps the existing area at 0x2000");
        let e: MemorySetError<u8> = MemorySetError::NoMemory { size: 0x3000 };
        assert!(e.to_string().contains("0x3000"));
    }
}
