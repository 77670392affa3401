//! Page sizes as types: the walk for a leaf size is generated at compile time.
//!
//! [`PageSize`] is sealed and implemented by [`Size4K`], [`Size2M`] and [`Size1G`].
//! [`MapSize`] builds the chain of tables that holds a leaf of that size: each size
//! calls the next larger size's chain and descends one level, so no code inside a
//! walk branches on the size at run time. [`LeafSize`] is the run-time value, for
//! reports and for `map_range`'s choice between sizes.

use core::fmt;
use core::marker::PhantomData;

use memory_set::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4K};

use crate::format::{LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::table::{Stage2Table, TableError};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Size4K {}
    impl Sealed for super::Size2M {}
    impl Sealed for super::Size1G {}
}

/// A stage-2 leaf size. Sealed: exactly [`Size4K`], [`Size2M`], [`Size1G`].
pub trait PageSize: sealed::Sealed + Copy + Eq + fmt::Debug + Default + 'static {
    /// Bytes mapped by one leaf.
    const SIZE: usize;
    /// The level whose entries are leaves of this size (1 = PT, 2 = PD, 3 = PDPT).
    const LEVEL: u8;
    /// The run-time value of this size.
    const LEAF_SIZE: LeafSize;
}

/// A 4 KiB leaf, in a page table (level 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Size4K;
/// A 2 MiB leaf, in a page directory (level 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Size2M;
/// A 1 GiB leaf, in a page-directory-pointer table (level 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Size1G;

impl PageSize for Size4K {
    const SIZE: usize = PAGE_SIZE_4K;
    const LEVEL: u8 = 1;
    const LEAF_SIZE: LeafSize = LeafSize::Size4K;
}
impl PageSize for Size2M {
    const SIZE: usize = PAGE_SIZE_2M;
    const LEVEL: u8 = 2;
    const LEAF_SIZE: LeafSize = LeafSize::Size2M;
}
impl PageSize for Size1G {
    const SIZE: usize = PAGE_SIZE_1G;
    const LEVEL: u8 = 3;
    const LEAF_SIZE: LeafSize = LeafSize::Size1G;
}

/// The size of a leaf, as a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeafSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB.
    Size2M,
    /// 1 GiB.
    Size1G,
}

impl LeafSize {
    /// All sizes, smallest first.
    pub const ALL: [LeafSize; 3] = [LeafSize::Size4K, LeafSize::Size2M, LeafSize::Size1G];

    /// Bytes mapped by one leaf.
    pub const fn size(self) -> usize {
        match self {
            LeafSize::Size4K => PAGE_SIZE_4K,
            LeafSize::Size2M => PAGE_SIZE_2M,
            LeafSize::Size1G => PAGE_SIZE_1G,
        }
    }

    /// The level holding leaves of this size (1, 2 or 3).
    pub const fn level(self) -> u8 {
        match self {
            LeafSize::Size4K => 1,
            LeafSize::Size2M => 2,
            LeafSize::Size1G => 3,
        }
    }

    /// The size of the leaves at `level`; `None` for levels that hold no leaves.
    pub const fn from_level(level: u8) -> Option<Self> {
        match level {
            1 => Some(LeafSize::Size4K),
            2 => Some(LeafSize::Size2M),
            3 => Some(LeafSize::Size1G),
            _ => None,
        }
    }

    /// The index (0, 1, 2) used by per-size counters.
    pub const fn index(self) -> usize {
        self.level() as usize - 1
    }
}

impl fmt::Display for LeafSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeafSize::Size4K => "4K",
            LeafSize::Size2M => "2M",
            LeafSize::Size1G => "1G",
        })
    }
}

/// The table that holds leaves of size `S` for some 512-leaf span, as returned by
/// [`MapSize::ensure_chain_for`]. It stays usable until a table frame of its table
/// is freed (then [`MapSize::set_leaf`] refuses it with [`TableError::StaleLeafTable`]).
#[derive(Debug)]
pub struct LeafTable<S: PageSize> {
    pub(crate) frame: HostPhysAddr,
    pub(crate) span_start: GuestPhysAddr,
    pub(crate) generation: u64,
    pub(crate) root: HostPhysAddr,
    pub(crate) _size: PhantomData<S>,
}

impl<S: PageSize> LeafTable<S> {
    /// The host frame of the table.
    pub fn frame(&self) -> HostPhysAddr {
        self.frame
    }

    /// The first guest-physical address its 512 entries cover.
    pub fn span_start(&self) -> GuestPhysAddr {
        self.span_start
    }
}

/// A size the table can map: how to reach (and build) the table that holds its leaves.
pub trait MapSize: PageSize {
    /// Returns the table whose entries are leaves of this size for `gpa`, allocating
    /// and zeroing missing intermediate tables (linked with full rights; the leaf
    /// decides) and splitting a larger leaf in the way into a full table that keeps
    /// every translation it had.
    ///
    /// Fails with [`TableError::NoMemory`] naming the level of the table that could
    /// not be allocated, and then changes nothing: the frames are reserved before
    /// anything is linked.
    fn ensure_chain_for<F: Stage2Format, M: PhysMapper>(
        table: &mut Stage2Table<F, M>,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
    ) -> Result<LeafTable<Self>, TableError> {
        table.ensure_chain::<Self>(alloc, gpa)
    }

    /// The walk behind [`MapSize::ensure_chain_for`], taking frames from `alloc` as it
    /// goes (so a failure can leave empty tables linked): for callers that reserved
    /// the frames already.
    #[doc(hidden)]
    fn build_chain<F: Stage2Format, M: PhysMapper>(
        table: &mut Stage2Table<F, M>,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
    ) -> Result<LeafTable<Self>, TableError>;

    /// Writes the leaf mapping `gpa` (aligned to this size, inside `leaf_table`'s span)
    /// to `hpa` with `attr`. Refuses to overwrite a present entry
    /// ([`TableError::AlreadyMapped`]). A not-present to present change needs no flush.
    fn set_leaf<F: Stage2Format, M: PhysMapper>(
        table: &mut Stage2Table<F, M>,
        leaf_table: &LeafTable<Self>,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        attr: LeafAttr,
    ) -> Result<(), TableError> {
        table.write_leaf(leaf_table, gpa, hpa, attr)
    }
}

impl MapSize for Size1G {
    #[inline]
    fn build_chain<F: Stage2Format, M: PhysMapper>(
        table: &mut Stage2Table<F, M>,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
    ) -> Result<LeafTable<Self>, TableError> {
        let root = table.root();
        table.next_table(alloc, root, 4, gpa)
    }
}

impl MapSize for Size2M {
    #[inline]
    fn build_chain<F: Stage2Format, M: PhysMapper>(
        table: &mut Stage2Table<F, M>,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
    ) -> Result<LeafTable<Self>, TableError> {
        let pdpt = Size1G::build_chain(table, alloc, gpa)?;
        table.next_table(alloc, pdpt.frame, 3, gpa)
    }
}

impl MapSize for Size4K {
    #[inline]
    fn build_chain<F: Stage2Format, M: PhysMapper>(
        table: &mut Stage2Table<F, M>,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
    ) -> Result<LeafTable<Self>, TableError> {
        let pd = Size2M::build_chain(table, alloc, gpa)?;
        table.next_table(alloc, pd.frame, 2, gpa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_levels() {
        assert_eq!(Size4K::SIZE, 0x1000);
        assert_eq!(Size2M::SIZE, 0x20_0000);
        assert_eq!(Size1G::SIZE, 0x4000_0000);
        assert_eq!((Size4K::LEVEL, Size2M::LEVEL, Size1G::LEVEL), (1, 2, 3));
        for s in LeafSize::ALL {
            assert_eq!(LeafSize::from_level(s.level()), Some(s));
            assert_eq!(crate::format::level_size(s.level()), s.size() as u64);
        }
        assert_eq!(LeafSize::from_level(4), None);
        assert_eq!(LeafSize::from_level(0), None);
        assert_eq!(Size2M::LEAF_SIZE.size(), Size2M::SIZE);
        assert_eq!(LeafSize::Size1G.to_string(), "1G");
    }
}
