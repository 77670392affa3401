//! The mutable state of an address space and the operations that keep its table,
//! frames and areas in step.

use alloc::vec::Vec;
use core::cell::Cell;
use core::mem::ManuallyDrop;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, MemoryAddr, MemorySet, MemorySetError};

use super::Invalidate;
use super::backend::{AreaFlags, Backend, BackendKind};
use super::budget::{Budget, Charged};
use super::error::{OomReason, RangeProblem, SpaceError};
use super::frames::FrameBook;
use super::meter::Meter;
use crate::caps::Stage2Caps;
use crate::flush::{Flush, FlushScope};
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, Size1G, Size2M, Size4K};
use crate::table::{Stage2Table, TableError};

/// Event counters for reports.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) faults_handled: u64,
    pub(crate) cow_copies: u64,
    pub(crate) write_restores: u64,
    pub(crate) spurious: u64,
    /// Read faults served with the shared zero page (`zero.rs`).
    pub(crate) zero_reads: u64,
    /// RAM frames given back by [`discard`](super::AddressSpace::discard) (balloon).
    pub(crate) balloon_frames: u64,
}

/// Everything the backends mutate: the table, the allocator, the frame book.
pub(crate) struct State<F: Stage2Format, M: PhysMapper, A: FrameAlloc, I: Invalidate> {
    /// The table; taken out only by [`State::teardown`].
    pub(crate) table: ManuallyDrop<Stage2Table<F, M>>,
    /// The host allocator, counting into the family's budget.
    pub(crate) alloc: Charged<A>,
    pub(crate) invalidate: I,
    pub(crate) book: FrameBook,
    /// Frames taken up front for the current operation (empty between operations).
    pub(crate) reserve: Vec<HostPhysAddr>,
    pub(crate) caps: Stage2Caps,
    pub(crate) counters: Counters,
    /// Set while a clone's areas are relabelled: backend calls do nothing.
    pub(crate) replay: bool,
    /// The last owned-region id handed out.
    pub(crate) last_owner: u64,
    /// Bookkeeping entries of this space counted in the family's budget.
    pub(crate) metadata_charged: usize,
    /// Entries charged for heap the host keeps for this space outside it (see
    /// [`AddressSpace::charge_metadata`](super::AddressSpace::charge_metadata)).
    pub(crate) metadata_extra: usize,
    /// Dirty logging and snapshot tracking (`dirty.rs`, `snapshot.rs`).
    pub(crate) track: super::dirty::Tracking,
    /// The shared zero page, when enabled (`zero.rs`).
    pub(crate) zero: super::zero::ZeroState,
}

/// An area as [`Inner::area_at`] reports it: its range, flags and backend.
pub(crate) type AreaInfo = (AddrRange<GuestPhysAddr>, AreaFlags, BackendKind);

/// The state behind an address space's lock.
pub(crate) struct Inner<F: Stage2Format, M: PhysMapper, A: FrameAlloc + Clone, I: Invalidate> {
    /// The areas. Every change to it must go through a `&mut self` method of
    /// `Inner` that clears `last_area` (`map_area`, `unmap_range`, `relabel`).
    pub(crate) set: MemorySet<Backend<F, M, A, I>>,
    pub(crate) st: State<F, M, A, I>,
    pub(crate) window: AddrRange<GuestPhysAddr>,
    /// The area [`Inner::area_at`] found last: faults cluster in one area, and this
    /// spares them the B-tree search. Cleared whenever `set` changes.
    pub(crate) last_area: Cell<Option<AreaInfo>>,
}

/// Converts a table error, naming the allocation refusal when frames ran out.
pub(crate) fn table_err(e: TableError, reason: OomReason, gpa: GuestPhysAddr) -> SpaceError {
    match e {
        TableError::NoMemory { .. } => SpaceError::OutOfMemory {
            gpa: Some(gpa),
            reason,
        },
        other => SpaceError::Table(other),
    }
}

/// Converts a `memory_set` error.
pub(crate) fn set_err(
    e: MemorySetError<SpaceError>,
    start: GuestPhysAddr,
    size: usize,
) -> SpaceError {
    use memory_set::InvalidParam;
    match e {
        MemorySetError::Backend(e) => e,
        MemorySetError::UndoFailed { cause, .. } => cause,
        MemorySetError::AlreadyExists { existing_start } => SpaceError::AlreadyMapped {
            gpa: GuestPhysAddr::new(existing_start.max(start.as_usize())),
        },
        MemorySetError::NotFound { addr } => SpaceError::NotMapped {
            gpa: GuestPhysAddr::new(addr),
        },
        MemorySetError::NoMemory { size } => SpaceError::NoFreeArea { size },
        MemorySetError::InvalidParam { reason } => match reason {
            InvalidParam::Unaligned { page_size } => SpaceError::Unaligned {
                value: if start.is_aligned(page_size) {
                    size
                } else {
                    start.as_usize()
                },
                align: page_size,
            },
            InvalidParam::AlignNotPowerOfTwo { align } => SpaceError::Unaligned {
                value: align,
                align,
            },
            InvalidParam::ZeroSize => SpaceError::InvalidRange {
                start: start.as_usize(),
                size,
                problem: RangeProblem::Empty,
            },
            _ => SpaceError::InvalidRange {
                start: start.as_usize(),
                size,
                problem: RangeProblem::Overflow,
            },
        },
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc, I: Invalidate> State<F, M, A, I> {
    /// A state with an empty table (the root is the first frame counted) in the
    /// family of `budget`.
    pub(crate) fn new(
        mapper: M,
        host: A,
        invalidate: I,
        caps: Stage2Caps,
        budget: Budget,
    ) -> Result<Self, SpaceError> {
        let mut reserve = Vec::new();
        let mut alloc = Charged { host, budget };
        let (quota, held) = (alloc.budget.quota(), alloc.budget.held());
        let mut meter = Meter::new(&mut alloc, &mut reserve, quota, held);
        let table = Stage2Table::new(mapper, &mut meter, caps).map_err(|e| {
            let reason = meter.reason();
            table_err(e, reason, GuestPhysAddr::new(0))
        })?;
        Ok(Self {
            table: ManuallyDrop::new(table),
            alloc,
            invalidate,
            book: FrameBook::default(),
            reserve,
            caps,
            counters: Counters::default(),
            replay: false,
            last_owner: 0,
            metadata_charged: 0,
            metadata_extra: 0,
            track: Default::default(),
            zero: Default::default(),
        })
    }

    /// The family's frame quota.
    pub(crate) fn quota(&self) -> usize {
        self.alloc.budget.quota()
    }

    /// What counts against the quota: the host frames the family holds, plus the
    /// frames an attached snapshot charges (a snapshot has a budget of its own).
    pub(crate) fn used(&self) -> usize {
        self.alloc.budget.held() + self.track.charged_frames()
    }

    /// Frames this space alone refers to: RAM (shared frames included), tables, any
    /// reserve.
    pub(crate) fn own_frames(&self) -> usize {
        self.book.ram_frames() + self.table.table_frames() + self.reserve.len()
    }

    /// The table and a metered allocator for one operation: the quota applies to
    /// the frames the whole family holds.
    pub(crate) fn parts(&mut self) -> (&mut Stage2Table<F, M>, Meter<'_, Charged<A>>) {
        let (quota, used) = (self.quota(), self.used());
        (
            &mut self.table,
            Meter::new(&mut self.alloc, &mut self.reserve, quota, used),
        )
    }

    /// Runs one table operation with a fresh meter; a table error becomes the
    /// matching [`SpaceError`] at `gpa` (out of memory with the meter's reason).
    pub(crate) fn metered<T>(
        &mut self,
        gpa: GuestPhysAddr,
        op: impl FnOnce(&mut Stage2Table<F, M>, &mut Meter<'_, Charged<A>>) -> Result<T, TableError>,
    ) -> Result<T, SpaceError> {
        let (table, mut meter) = self.parts();
        let r = op(table, &mut meter);
        let reason = meter.reason();
        r.map_err(|e| table_err(e, reason, gpa))
    }

    /// Takes `n` frames into the reserve, all or nothing.
    pub(crate) fn fill_reserve(&mut self, n: usize, gpa: GuestPhysAddr) -> Result<(), SpaceError> {
        if n == 0 {
            return Ok(());
        }
        let (_, mut meter) = self.parts();
        meter
            .fill_reserve(n)
            .map_err(|reason| SpaceError::OutOfMemory {
                gpa: Some(gpa),
                reason,
            })
    }

    /// Gives every unused reserved frame back.
    pub(crate) fn drain_reserve(&mut self) {
        for f in self.reserve.drain(..) {
            self.alloc.dealloc_frame(f);
        }
    }

    /// Completes `flush`: invalidates, frees table frames, then releases the unmapped
    /// leaves' RAM frames when `ram` (linear windows own nothing).
    pub(crate) fn finish(&mut self, flush: Flush, ram: bool) {
        self.complete(flush, |_| ram);
    }

    /// Completes `flush`: invalidates, frees table frames, then releases the RAM
    /// frames of the unmapped leaves at `gpa` with `is_ram(gpa)`.
    #[inline]
    fn complete(&mut self, flush: Flush, is_ram: impl Fn(GuestPhysAddr) -> bool) {
        let Self {
            invalidate,
            alloc,
            book,
            ..
        } = self;
        let leaves = flush.complete(|s| invalidate.invalidate(s), alloc);
        for leaf in leaves.iter() {
            if is_ram(leaf.gpa) {
                book.release(leaf.hpa, leaf.size, alloc);
            }
        }
    }

    /// Invalidates `scope` directly (for leaves rewritten in place).
    pub(crate) fn invalidate_now(&mut self, scope: FlushScope) {
        self.invalidate.invalidate(scope);
    }

    /// Checks that the format can encode `attr` with these capabilities.
    pub(crate) fn check_attr(&self, attr: LeafAttr) -> Result<(), SpaceError> {
        F::leaf_bits(attr, 1, &self.caps)
            .map(|_| ())
            .map_err(|reason| SpaceError::BadAccess {
                access: attr.access,
                reason,
            })
    }

    /// Maps a linear window's leaves.
    pub(crate) fn map_linear_leaves(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: usize,
        attr: LeafAttr,
    ) -> Result<(), SpaceError> {
        let flush = self.metered(gpa, |table, meter| {
            table.map_range(meter, gpa, hpa, size, attr, LeafSize::Size1G)
        })?;
        self.finish(flush, false);
        Ok(())
    }

    /// Unmaps the leaves of `[gpa, gpa + size)`, releasing RAM frames after the flush.
    pub(crate) fn unmap_leaves(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        ram: bool,
    ) -> Result<(), SpaceError> {
        let flush = self.metered(gpa, |table, meter| table.unmap_range(meter, gpa, size))?;
        self.finish(flush, ram);
        Ok(())
    }

    /// Gives the leaves of `[gpa, gpa + size)` the attributes `attr`; for RAM, frames
    /// shared copy-on-write stay read-only.
    pub(crate) fn protect_leaves(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        attr: LeafAttr,
        ram: bool,
    ) -> Result<(), SpaceError> {
        let mut flush = self.metered(gpa, |table, meter| {
            table.protect_range(meter, gpa, size, attr)
        })?;
        if ram && attr.access.contains(Access::WRITE) && self.book.tracked() > 0 {
            let range = AddrRange::from_start_size(gpa, size);
            let shared: Vec<_> = range
                .map(|r| {
                    self.table
                        .leaves_in(r)
                        .filter(|l| self.book.is_shared(l.hpa))
                        .map(|l| (l.gpa, l.size))
                        .collect()
                })
                .unwrap_or_default();
            let ro = LeafAttr {
                access: attr.access.difference(Access::WRITE),
                ..attr
            };
            let mut all_ro = false;
            for (g, s) in shared {
                let (table, mut meter) = self.parts();
                // Exact leaves: never split, never allocate.
                match table.protect_range(&mut meter, g, s.size(), ro) {
                    Ok(f) => flush = flush.merge(f),
                    Err(_) => {
                        all_ro = true;
                        break;
                    }
                }
            }
            if all_ro {
                // Never leave a shared frame writable: the whole range (already split
                // to these leaves by the first call) goes read-only; write faults
                // restore the private leaves one by one.
                let (table, mut meter) = self.parts();
                let f = table.protect_range(&mut meter, gpa, size, ro);
                let reason = meter.reason();
                match f {
                    Ok(f) => flush = flush.merge(f),
                    Err(e) => {
                        self.finish(flush, false);
                        return Err(table_err(e, reason, gpa));
                    }
                }
            }
        }
        self.finish(flush, false);
        Ok(())
    }

    /// Maps one leaf of a given size (used by clones to copy a layout exactly).
    pub(crate) fn map_leaf(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: LeafSize,
        attr: LeafAttr,
    ) -> Result<(), SpaceError> {
        let flush = self.metered(gpa, |table, meter| match size {
            LeafSize::Size4K => table.map_page::<Size4K>(meter, gpa, hpa, attr),
            LeafSize::Size2M => table.map_page::<Size2M>(meter, gpa, hpa, attr),
            LeafSize::Size1G => table.map_page::<Size1G>(meter, gpa, hpa, attr),
        })?;
        self.finish(flush, false);
        Ok(())
    }

    /// Frees everything: every leaf (RAM frames released when `is_ram(gpa)`), every
    /// table frame, the reserve. The table is gone afterwards.
    pub(crate) fn teardown(&mut self, is_ram: impl Fn(GuestPhysAddr) -> bool) {
        // SAFETY: `teardown` runs once, from `Inner::drop` (or on a state about to be
        // dropped), and nothing touches `self.table` after it.
        let table = unsafe { ManuallyDrop::take(&mut self.table) };
        self.complete(table.destroy(), is_ram);
        self.drop_zero_page();
        self.drain_reserve();
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc + Clone, I: Invalidate> Inner<F, M, A, I> {
    /// The space's invariants plus the table validator.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        if self.st.table.validate().is_err() {
            return Err("table validator failed");
        }
        for leaf in self.st.table.leaves() {
            let Some((range, flags, kind)) = self.area_at(leaf.gpa) else {
                return Err("leaf outside every area");
            };
            let Some(leaf_range) = AddrRange::from_start_size(leaf.gpa, leaf.size.size()) else {
                return Err("leaf passes the top of the space");
            };
            if !range.contains_range(&leaf_range) {
                return Err("leaf straddles an area boundary");
            }
            if !flags.attr.access.contains(leaf.attr.access) {
                return Err("leaf grants more than its area");
            }
            if !flags.ceiling.contains(flags.attr.access) {
                return Err("area rights above the host's ceiling");
            }
            match kind {
                BackendKind::Linear { .. } => {
                    if kind.linear_hpa(leaf.gpa) != Some(leaf.hpa) || leaf.attr != flags.attr {
                        return Err("linear leaf differs from its window");
                    }
                }
                BackendKind::Window => {
                    if leaf.attr != flags.attr || self.st.book.chunk_of(leaf.hpa).is_none() {
                        return Err("window leaf differs from its area or holds no reference");
                    }
                }
                BackendKind::Alloc { .. } => {
                    if leaf.attr.access.contains(Access::WRITE) && self.st.book.is_shared(leaf.hpa)
                    {
                        return Err("writable leaf over a shared frame");
                    }
                    if leaf.attr.mem_type != flags.attr.mem_type {
                        return Err("RAM leaf with another memory type");
                    }
                }
            }
        }
        Ok(())
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc + Clone, I: Invalidate> Drop
    for Inner<F, M, A, I>
{
    fn drop(&mut self) {
        let Self { set, st, .. } = self;
        st.teardown(|gpa| {
            set.find(gpa)
                .is_some_and(|a| a.backend().kind.owns_frames())
        });
        st.alloc.budget.metadata_moved(st.metadata_charged, 0);
        st.metadata_charged = 0;
    }
}
