//! The areas of a space: checking ranges against the window and the areas that cover
//! them, adding, unmapping and relabelling areas (every change to the set goes
//! through here and clears the area hint), finding free room, and looking an area up.

use alloc::vec::Vec;

use memory_set::{AddrRange, GuestPhysAddr, MemoryArea, MemorySetError, PAGE_SIZE_2M};

use super::backend::{AreaFlags, Backend, BackendKind};
use super::error::{RangeProblem, SpaceError};
use super::state::{AreaInfo, Inner, set_err};
use super::{Invalidate, page_range};
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc + Clone, I: Invalidate> Inner<F, M, A, I> {
    /// Checks a range for area operations: non-empty, 4 KiB aligned, inside the window.
    pub(crate) fn check_range(
        &self,
        gpa: GuestPhysAddr,
        size: usize,
    ) -> Result<AddrRange<GuestPhysAddr>, SpaceError> {
        let range = page_range(gpa, size)?;
        if !self.window.contains_range(&range) {
            return Err(SpaceError::InvalidRange {
                start: gpa.as_usize(),
                size,
                problem: RangeProblem::OutsideWindow,
            });
        }
        Ok(range)
    }

    /// Adds an area and maps it through its backend.
    pub(crate) fn map_area(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
        flags: AreaFlags,
        kind: BackendKind,
    ) -> Result<(), SpaceError> {
        let (start, size) = (range.start(), range.size());
        let area = MemoryArea::new(start, size, flags, Backend::new(kind))
            .map_err(|e| set_err(e, start, size))?;
        // The area, and any 2 MiB blocks a populated area takes (a bound: one each).
        let blocks = match kind {
            BackendKind::Alloc { populate: true } => size.div_ceil(PAGE_SIZE_2M),
            _ => 0,
        };
        self.metadata_room(1 + blocks)?;
        self.last_area.set(None);
        let r = self
            .set
            .map(area, &mut self.st, false)
            .map_err(|e| set_err(e, start, size));
        self.sync_metadata();
        r?;
        self.note_area_change(range);
        Ok(())
    }

    /// The areas overlapping `range` as (piece, flags, kind), checking that they cover
    /// it without a hole.
    pub(crate) fn covering(
        &self,
        range: AddrRange<GuestPhysAddr>,
    ) -> Result<Vec<(AddrRange<GuestPhysAddr>, AreaFlags, BackendKind)>, SpaceError> {
        let mut out = Vec::new();
        let mut next = range.start();
        for area in self.set.iter_overlapping(range) {
            if area.start() > next {
                return Err(SpaceError::NotMapped { gpa: next });
            }
            let Some(piece) = area.va_range().intersection(&range) else {
                continue;
            };
            out.push((piece, area.flags(), area.backend().kind));
            match area.end() {
                Some(end) => next = end,
                None => return Ok(out),
            }
        }
        match range.last() {
            Some(last) if next <= last => Err(SpaceError::NotMapped { gpa: next }),
            _ => Ok(out),
        }
    }

    /// Checks that every byte of `range` lies in an area allowing `access`; returns
    /// the covering pieces.
    pub(crate) fn check_access(
        &self,
        range: AddrRange<GuestPhysAddr>,
        access: Access,
    ) -> Result<Vec<(AddrRange<GuestPhysAddr>, AreaFlags, BackendKind)>, SpaceError> {
        let pieces = self.covering(range)?;
        for (piece, flags, _) in &pieces {
            if !flags.attr.access.contains(access) {
                return Err(SpaceError::PermissionDenied {
                    gpa: piece.start(),
                    access,
                    allowed: flags.attr.access,
                });
            }
        }
        Ok(pieces)
    }

    /// Refuses a range that touches an owned region.
    pub(crate) fn check_not_owned(
        &self,
        range: AddrRange<GuestPhysAddr>,
    ) -> Result<(), SpaceError> {
        match self
            .set
            .iter_overlapping(range)
            .find(|a| a.flags().owner != 0)
        {
            Some(a) => Err(SpaceError::Owned {
                gpa: a.start().max(range.start()),
            }),
            None => Ok(()),
        }
    }

    /// Unmaps `range` (ownership already checked).
    pub(crate) fn unmap_range(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
    ) -> Result<(), SpaceError> {
        // Cutting a hole into one area leaves two; anything else leaves fewer areas.
        let inside_one = self.set.find(range.start()).is_some_and(|a| {
            a.start() < range.start() && range.end().is_some_and(|e| a.va_range().contains(e))
        });
        self.metadata_room(usize::from(inside_one))?;
        let cuts = self.cuts(range, |_| true);
        self.reserve_splits(&cuts)?;
        self.last_area.set(None);
        let r = self.set.unmap(range.start(), range.size(), &mut self.st);
        self.settle_area_change(range, r)
    }

    /// After the area set changed `range` with `result` (its splits prepared by
    /// `reserve_splits`): gives back the reserve the splits did not use and syncs the
    /// bookkeeping whatever the result, then on success records the change for the
    /// dirty log.
    fn settle_area_change(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
        result: Result<(), MemorySetError<SpaceError>>,
    ) -> Result<(), SpaceError> {
        self.st.drain_reserve();
        self.sync_metadata();
        result.map_err(|e| set_err(e, range.start(), range.size()))?;
        self.note_area_change(range);
        Ok(())
    }

    /// Changes the rights (and, with `owner`, the owner label) of the areas in `range`.
    pub(crate) fn protect_range(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
        access: Access,
        owner: Option<u64>,
    ) -> Result<(), SpaceError> {
        self.relabel(range, |f| AreaFlags {
            attr: LeafAttr { access, ..f.attr },
            owner: owner.unwrap_or(f.owner),
            ceiling: f.ceiling,
        })
    }

    /// Gives the areas in `range` new flags, cutting them at the ends.
    pub(crate) fn relabel(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
        update: impl Fn(AreaFlags) -> AreaFlags,
    ) -> Result<(), SpaceError> {
        // Areas whose flags stay as they are are neither cut nor touched: a relabel
        // that changes nothing needs no frame and no bookkeeping.
        let changes = |f: &AreaFlags| update(*f) != *f;
        if !self
            .set
            .iter_overlapping(range)
            .any(|a| changes(&a.flags()))
        {
            return Ok(());
        }
        // Each end that cuts a changing area adds one area.
        let cuts = self.cuts(range, changes);
        self.metadata_room(cuts.len())?;
        self.reserve_splits(&cuts)?;
        self.last_area.set(None);
        let r = self.set.protect(
            range.start(),
            range.size(),
            |f| {
                let new = update(f);
                (new != f).then_some(new)
            },
            &mut self.st,
        );
        self.settle_area_change(range, r)
    }

    /// Unmaps every area no region owns. Whole areas never need a split.
    pub(crate) fn clear(&mut self) -> Result<(), SpaceError> {
        let ranges: Vec<_> = self
            .set
            .iter()
            .filter(|a| a.flags().owner == 0)
            .map(|a| a.va_range())
            .collect();
        for r in ranges {
            self.unmap_range(r)?;
        }
        Ok(())
    }

    /// See [`AddressSpace::find_free_area`](super::AddressSpace::find_free_area).
    pub(crate) fn find_free_area(
        &self,
        hint: GuestPhysAddr,
        size: usize,
        limit: AddrRange<GuestPhysAddr>,
        align: usize,
    ) -> Result<GuestPhysAddr, SpaceError> {
        let limit = limit
            .intersection(&self.window)
            .ok_or(SpaceError::NoFreeArea { size })?;
        use memory_set::InvalidParam;
        self.set
            .find_free_area(hint, size, limit, align)
            .map_err(|e| match e {
                // Only the size is checked for alignment (the hint is rounded up).
                MemorySetError::InvalidParam {
                    reason: InvalidParam::Unaligned { page_size },
                } => SpaceError::Unaligned {
                    value: size,
                    align: page_size,
                },
                e => set_err(e, hint, size),
            })
    }

    /// The area containing `gpa`, if any (remembered for the next call).
    #[inline]
    pub(crate) fn area_at(&self, gpa: GuestPhysAddr) -> Option<AreaInfo> {
        if let Some(hit) = self.last_area.get()
            && hit.0.contains(gpa)
        {
            debug_assert_eq!(self.find_area(gpa), Some(hit), "stale area hint");
            return Some(hit);
        }
        let found = self.find_area(gpa);
        if found.is_some() {
            self.last_area.set(found);
        }
        found
    }

    /// The area containing `gpa`, searched in the set.
    fn find_area(&self, gpa: GuestPhysAddr) -> Option<AreaInfo> {
        self.set
            .find(gpa)
            .map(|a| (a.va_range(), a.flags(), a.backend().kind))
    }
}
