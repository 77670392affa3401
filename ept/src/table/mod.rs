//! [`Stage2Table`]: a 4-level stage-2 table in either format.
//!
//! Invariants (checked by [`Stage2Table::validate`]):
//! * every table entry points at a frame this table allocated and owns exclusively;
//! * no table below the root is empty (unmap frees tables it empties);
//! * every leaf is allowed by the capabilities and encodes valid attributes;
//! * the counters (`table_frames`, per-size leaf counts) match the tree.
//!
//! Callers must not let a vCPU run on the table while a `&mut self` operation is in
//! progress only if they rely on it for anything beyond what the returned [`Flush`]
//! says; changes become safe once the flush is completed.

mod error;

use core::marker::PhantomData;
use core::sync::atomic::AtomicU64;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr};

use crate::caps::Stage2Caps;
use crate::flush::Flush;
use crate::format::{LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, LeafTable, MapSize};
use crate::validate::ValidationError;

pub use error::TableError;

/// Entries per table.
pub const ENTRIES: usize = 512;

/// The result of [`Stage2Table::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address the GPA translates to.
    pub hpa: HostPhysAddr,
    /// The leaf's attributes.
    pub attr: LeafAttr,
    /// The leaf's size.
    pub size: LeafSize,
    /// The first GPA the leaf maps.
    pub leaf_gpa: GuestPhysAddr,
}

/// One leaf, as [`Stage2Table::leaves`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The first GPA the leaf maps.
    pub gpa: GuestPhysAddr,
    /// The first HPA it maps to.
    pub hpa: HostPhysAddr,
    /// Its attributes.
    pub attr: LeafAttr,
    /// Its size.
    pub size: LeafSize,
    /// The accessed flag (always false without A/D support).
    pub accessed: bool,
    /// The dirty flag (always false without A/D support).
    pub dirty: bool,
}

/// A stage-2 translation table in format `F`, reached through mapper `M`.
///
/// Frames come from the [`FrameAlloc`] passed to each operation (always the same
/// pool for one table) and leave only through [`Flush`] tokens.
pub struct Stage2Table<F: Stage2Format, M: PhysMapper> {
    root: HostPhysAddr,
    mapper: M,
    caps: Stage2Caps,
    tables: usize,
    leaves: [usize; 3],
    generation: u64,
    _format: PhantomData<F>,
}

impl<F: Stage2Format, M: PhysMapper> core::fmt::Debug for Stage2Table<F, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stage2Table")
            .field("format", &F::NAME)
            .field("root", &self.root)
            .field("tables", &self.tables)
            .field("leaves", &self.leaves)
            .finish()
    }
}

impl<F: Stage2Format, M: PhysMapper> Stage2Table<F, M> {
    /// An empty table: allocates and zeroes the root.
    pub fn new(
        mapper: M,
        alloc: &mut (impl FrameAlloc + ?Sized),
        caps: Stage2Caps,
    ) -> Result<Self, TableError> {
        let _ = (mapper, alloc, caps);
        todo!()
    }

    /// The root table's frame.
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// The hardware root pointer (EPTP or nCR3).
    pub fn root_pointer(&self) -> u64 {
        F::root_pointer(self.root, &self.caps)
    }

    /// The capabilities the table was built for.
    pub fn caps(&self) -> &Stage2Caps {
        &self.caps
    }

    /// The mapper.
    pub fn mapper(&self) -> &M {
        &self.mapper
    }

    /// Table frames in use, root included.
    pub fn table_frames(&self) -> usize {
        self.tables
    }

    /// The number of leaves of `size`.
    pub fn leaf_count(&self, size: LeafSize) -> usize {
        self.leaves[size.index()]
    }

    /// Maps one page of size `S`: `gpa` to `hpa` (both aligned to `S::SIZE`).
    /// [`TableError::AlreadyMapped`] if any part of the page is mapped.
    pub fn map_page<S: MapSize>(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        attr: LeafAttr,
    ) -> Result<Flush, TableError> {
        let _ = (alloc, gpa, hpa, attr);
        todo!()
    }

    /// Maps `[gpa, gpa + size)` to `[hpa, hpa + size)` with the largest leaves that
    /// alignment, the capabilities and `max` allow, writing each leaf table's run in
    /// one pass. All addresses and `size` must be 4 KiB aligned; nothing in the range
    /// may be mapped. On error nothing changed.
    pub fn map_range(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: usize,
        attr: LeafAttr,
        max: LeafSize,
    ) -> Result<Flush, TableError> {
        let _ = (alloc, gpa, hpa, size, attr, max);
        todo!()
    }

    /// Unmaps everything in `[gpa, gpa + size)` (holes are fine), splitting huge
    /// leaves that stick out of the range (the parts outside stay mapped) and freeing
    /// tables that become empty. On error (no frame for a split) nothing changed.
    pub fn unmap_range(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        size: usize,
    ) -> Result<Flush, TableError> {
        let _ = (alloc, gpa, size);
        todo!()
    }

    /// Gives every mapped page of `[gpa, gpa + size)` the attributes `attr` (holes
    /// stay holes), splitting huge leaves that stick out of the range. On error
    /// nothing changed.
    pub fn protect_range(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        size: usize,
        attr: LeafAttr,
    ) -> Result<Flush, TableError> {
        let _ = (alloc, gpa, size, attr);
        todo!()
    }

    /// Where `gpa` translates to, if mapped.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<Translation> {
        let _ = gpa;
        todo!()
    }

    /// Every leaf, in GPA order.
    pub fn leaves(&self) -> LeafIter<'_, F, M> {
        todo!()
    }

    /// The leaves overlapping `range`, in GPA order.
    pub fn leaves_in(&self, range: AddrRange<GuestPhysAddr>) -> LeafIter<'_, F, M> {
        let _ = range;
        todo!()
    }

    /// Calls `f(leaf_gpa, size)` for every dirty leaf overlapping `range` and clears
    /// its dirty flag (a dirty-page log). The flush must be completed before the next
    /// harvest can trust the flags.
    pub fn harvest_dirty(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
        f: impl FnMut(GuestPhysAddr, LeafSize),
    ) -> Result<Flush, TableError> {
        let _ = (range, f);
        todo!()
    }

    /// Replaces the 4 KiB table holding `gpa` by one 2 MiB leaf if its 512 leaves are
    /// contiguous, 2 MiB aligned and alike, and then the 2 MiB table by a 1 GiB leaf
    /// likewise (as the capabilities allow). An empty flush means nothing changed.
    pub fn collapse(&mut self, gpa: GuestPhysAddr) -> Result<Flush, TableError> {
        let _ = gpa;
        todo!()
    }

    /// Tears the table down: every leaf is reported as unmapped and every table frame
    /// (root included) is freed when the returned flush completes.
    pub fn destroy(self) -> Flush {
        todo!()
    }

    /// Checks the table the way the hardware would, plus this type's invariants.
    pub fn validate(&self) -> Result<(), ValidationError> {
        todo!()
    }

    pub(crate) fn next_table<S: MapSize>(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        parent: HostPhysAddr,
        parent_level: u8,
        gpa: GuestPhysAddr,
    ) -> Result<LeafTable<S>, TableError> {
        let _ = (alloc, parent, parent_level, gpa);
        todo!()
    }

    pub(crate) fn write_leaf<S: MapSize>(
        &mut self,
        leaf_table: &LeafTable<S>,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        attr: LeafAttr,
    ) -> Result<(), TableError> {
        let _ = (leaf_table, gpa, hpa, attr);
        todo!()
    }
}

/// Iterator over leaves (see [`Stage2Table::leaves`]).
pub struct LeafIter<'a, F: Stage2Format, M: PhysMapper> {
    table: &'a Stage2Table<F, M>,
    next: u64,
    end: u64,
}

impl<F: Stage2Format, M: PhysMapper> Iterator for LeafIter<'_, F, M> {
    type Item = Leaf;

    fn next(&mut self) -> Option<Leaf> {
        let _ = (self.table, self.next, self.end);
        todo!()
    }
}

#[allow(dead_code)]
fn entries_type_check(_: &[AtomicU64; ENTRIES]) {}
