//! Populating RAM: zero-filled frames for the absent pages of a range or a fault, a
//! 2 MiB leaf where the area covers the whole block, 4 KiB otherwise; a fast path for
//! the common 4 KiB fault; and undoing a populate that ran out of frames.

use alloc::vec::Vec;

use memory_set::{AddrRange, GuestPhysAddr, MemoryAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

use super::Invalidate;
use super::error::SpaceError;
use super::state::{Inner, State, table_err};
use crate::format::{LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper, zero_frame, zero_frames};
use crate::size::{LeafSize, Size2M, Size4K};
use crate::table::TableError;

fn add(gpa: GuestPhysAddr, off: usize) -> GuestPhysAddr {
    GuestPhysAddr::new(gpa.as_usize().wrapping_add(off))
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc, I: Invalidate> State<F, M, A, I> {
    /// Populates every absent page of `range` (inside the RAM area `area`) with zeroed
    /// frames, recording each new leaf in `added` (for [`State::rollback`]).
    pub(crate) fn populate(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
        attr: LeafAttr,
        area: AddrRange<GuestPhysAddr>,
        added: &mut Vec<(GuestPhysAddr, LeafSize)>,
    ) -> Result<(), SpaceError> {
        let mut off = 0;
        while off < range.size() {
            let gpa = add(range.start(), off);
            if let Some(t) = self.table.translate(gpa) {
                off = t.leaf_gpa.as_usize() + t.size.size() - range.start().as_usize();
                continue;
            }
            // 2 MiB leaves only where the populated range itself covers the block.
            let leaf = self.populate_one(gpa, attr, range.intersection(&area).unwrap_or(range))?;
            added.push(leaf);
            off = leaf.0.as_usize() + leaf.1.size() - range.start().as_usize();
        }
        Ok(())
    }

    /// Unmaps leaves added by a failed populate, freeing their frames and emptied
    /// tables: the table is back to where it was.
    pub(crate) fn rollback(&mut self, added: &[(GuestPhysAddr, LeafSize)]) {
        for &(gpa, size) in added.iter().rev() {
            let (table, mut meter) = self.parts();
            // An exact leaf never needs a split, so this cannot run out of frames.
            if let Ok(flush) = table.unmap_range(&mut meter, gpa, size.size()) {
                self.finish(flush, true);
            }
        }
    }

    /// The fast path of a not-present fault on RAM at `gpa` (inside the RAM area
    /// `area`, rights `attr`): one read-only walk to the 4 KiB entry, then allocate,
    /// zero and fill it; no meter, no reserve, no translation. `None` when
    /// that does not apply (a table is missing, the page is mapped after all, no
    /// frame, ...): then nothing changed and the general path decides. Where a 2 MiB
    /// leaf may fit, this is [`State::populate_one`].
    #[inline]
    pub(crate) fn populate_fast(
        &mut self,
        gpa: GuestPhysAddr,
        attr: LeafAttr,
        area: AddrRange<GuestPhysAddr>,
    ) -> Option<LeafSize> {
        let block = gpa.align_down(PAGE_SIZE_2M);
        let huge_may_fit = self.caps.leaf_2m
            && AddrRange::from_start_size(block, PAGE_SIZE_2M)
                .is_some_and(|b| area.contains_range(&b));
        if huge_may_fit || !self.reserve.is_empty() {
            return self
                .populate_one(gpa, attr, area)
                .ok()
                .map(|(_, size)| size);
        }
        // Quota: the same rule as `Meter` (one more frame must fit).
        if self.used() >= self.quota() {
            return None;
        }
        let page = gpa.align_down(PAGE_SIZE_4K);
        // Find the entry first: the cache miss on it overlaps the allocation and
        // zeroing.
        let slot = self.table.leaf_slot::<Size4K>(page)?;
        let hpa = self.alloc.alloc_frame()?;
        let mapped = zero_frame(self.table.mapper(), hpa).is_ok()
            && self
                .table
                .fill_leaf_slot::<Size4K>(&slot, hpa, attr)
                .is_ok();
        if !mapped {
            self.alloc.dealloc_frame(hpa);
            return None;
        }
        self.book.add_4k();
        Some(LeafSize::Size4K)
    }

    /// Allocates, zeroes and maps the frame for the absent page at `gpa`: a 2 MiB
    /// leaf when `area` covers the aligned block, the block has no leaf yet, the
    /// hardware has 2 MiB leaves and the allocator a 2 MiB block; else 4 KiB.
    pub(crate) fn populate_one(
        &mut self,
        gpa: GuestPhysAddr,
        attr: LeafAttr,
        area: AddrRange<GuestPhysAddr>,
    ) -> Result<(GuestPhysAddr, LeafSize), SpaceError> {
        let block = gpa.align_down(PAGE_SIZE_2M);
        // A 2 MiB block needs a bookkeeping entry; without room, 4 KiB leaves do.
        let block_free = self.caps.leaf_2m
            && AddrRange::from_start_size(block, PAGE_SIZE_2M).is_some_and(|b| {
                area.contains_range(&b) && self.table.leaves_in(b).next().is_none()
            })
            && self.alloc.budget.metadata_room(1).is_ok();
        if block_free {
            let (table, mut meter) = self.parts();
            if let Some(hpa) = meter.alloc_2m() {
                let zeroed = zero_frames(table.mapper(), hpa, PAGE_SIZE_2M / PAGE_SIZE_4K).is_ok();
                let r = if zeroed {
                    table.map_page::<Size2M>(&mut meter, block, hpa, attr)
                } else {
                    Err(TableError::BadFrame { hpa })
                };
                match r {
                    Ok(flush) => {
                        self.finish(flush, false);
                        self.book.add_2m(hpa);
                        // Counted now, so the next block of a long populate sees it.
                        let c = self.metadata_charged;
                        self.alloc.budget.metadata_moved(c, c + 1);
                        self.metadata_charged = c + 1;
                        return Ok((block, LeafSize::Size2M));
                    }
                    // No frames for the tables a 2 MiB leaf needs: a 4 KiB leaf
                    // (one frame plus one more table) may still fit below.
                    Err(TableError::NoMemory { .. }) => meter.dealloc_2m(hpa),
                    Err(e) => {
                        meter.dealloc_2m(hpa);
                        let reason = meter.reason();
                        return Err(table_err(e, reason, gpa));
                    }
                }
            }
            // No 2 MiB block (host or quota), or no tables for it: fall back to 4 KiB.
        }
        let page = gpa.align_down(PAGE_SIZE_4K);
        let (table, mut meter) = self.parts();
        let Some(hpa) = meter.alloc_frame() else {
            return Err(SpaceError::OutOfMemory {
                gpa: Some(gpa),
                reason: meter.reason(),
            });
        };
        let r = match zero_frame(table.mapper(), hpa) {
            Ok(()) => table.map_page::<Size4K>(&mut meter, page, hpa, attr),
            Err(_) => Err(TableError::BadFrame { hpa }),
        };
        match r {
            Ok(flush) => {
                self.finish(flush, false);
                self.book.add_4k();
                Ok((page, LeafSize::Size4K))
            }
            Err(e) => {
                meter.dealloc_frame(hpa);
                let reason = meter.reason();
                Err(table_err(e, reason, gpa))
            }
        }
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc + Clone, I: Invalidate> Inner<F, M, A, I> {
    /// Populates every absent page of `range`, which RAM areas must cover. All or
    /// nothing.
    pub(crate) fn populate_range(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
    ) -> Result<(), SpaceError> {
        let pieces = self.covering(range)?;
        if let Some((p, _, _)) = pieces.iter().find(|(_, _, k)| !k.is_ram()) {
            return Err(SpaceError::NotRam { gpa: p.start() });
        }
        let mut added = Vec::new();
        for (piece, flags, _) in &pieces {
            let area = self
                .set
                .find(piece.start())
                .map(|a| a.va_range())
                .unwrap_or(*piece);
            if let Err(e) = self.st.populate(*piece, flags.attr, area, &mut added) {
                self.st.rollback(&added);
                self.sync_metadata();
                return Err(e);
            }
        }
        self.sync_metadata();
        Ok(())
    }
}
