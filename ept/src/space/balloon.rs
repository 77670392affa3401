//! Ballooning: a guest gives RAM back without giving up the address range.
//!
//! [`AddressSpace::discard`] unmaps every leaf of a RAM range and releases its frames
//! at once (after the flush), through the same per-frame reference count every
//! release goes through: a private frame goes back to the allocator, a frame still
//! shared with a clone, a snapshot or a frame bundle only loses this space's
//! reference, and the zero page only loses a mapping. The areas stay as they are, on
//! demand: touching a discarded page again faults in a fresh page of zeros (or the
//! zero page, for a read where it is enabled). The frames leave the space's count at
//! once, so the quota has room for them again.
//!
//! Huge leaves that the range covers whole go whole; a huge leaf cut by an end of
//! the range is split first (its table is taken before anything changes, so running
//! out of frames changes nothing), and only the pages inside the range go.

use alloc::vec::Vec;

use memory_set::{AddrRange, GuestPhysAddr, PAGE_SIZE_4K};

use super::error::SpaceError;
use super::state::Inner;
use super::{AddressSpace, Invalidate};
use crate::format::Stage2Format;
use crate::frame::{FrameAlloc, PhysMapper};

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Gives the frames of `[gpa, gpa + size)` back (see `balloon.rs`) and
    /// returns how many 4 KiB frames this space stopped holding.
    ///
    /// Errors change nothing: a range that is not page aligned or leaves the window;
    /// [`SpaceError::NotMapped`] for a hole in the areas; [`SpaceError::NotRam`] for
    /// a linear or shared window; [`SpaceError::Owned`] for an owned region; out of
    /// memory when a huge leaf at an end must be split and no frame is left.
    pub fn discard(&mut self, gpa: GuestPhysAddr, size: usize) -> Result<usize, SpaceError> {
        let mut inner = self.inner.lock();
        let range = inner.check_range(gpa, size)?;
        let result = inner.discard_range(range);
        super::debug_validated(&inner, result)
    }
}

impl<F, M, A, I> Inner<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Checks that `range` lies in unowned RAM areas (any rights).
    pub(crate) fn check_plain_ram(
        &self,
        range: AddrRange<GuestPhysAddr>,
    ) -> Result<(), SpaceError> {
        for (piece, flags, kind) in self.covering(range)? {
            if !kind.is_ram() {
                return Err(SpaceError::NotRam { gpa: piece.start() });
            }
            if flags.owner != 0 {
                return Err(SpaceError::Owned { gpa: piece.start() });
            }
        }
        Ok(())
    }

    /// Splits the huge leaves that straddle the ends of `range`, taking the frames
    /// first: all or nothing (a split keeps every translation).
    pub(crate) fn split_ends(&mut self, range: AddrRange<GuestPhysAddr>) -> Result<(), SpaceError> {
        let mut cuts: Vec<GuestPhysAddr> = alloc::vec![range.start()];
        cuts.extend(range.end());
        let need = self.st.split_need(&cuts);
        self.st.fill_reserve(need, range.start())?;
        let mut result = Ok(());
        for at in cuts {
            result = result.and_then(|()| self.st.split_at(at));
        }
        self.st.drain_reserve();
        result
    }

    fn discard_range(&mut self, range: AddrRange<GuestPhysAddr>) -> Result<usize, SpaceError> {
        self.check_plain_ram(range)?;
        self.split_ends(range)?;
        let before = self.st.book.ram_frames();
        // The leaves now lie inside the range: unmapping them needs no frame.
        self.st.unmap_leaves(range.start(), range.size(), true)?;
        let freed = before.saturating_sub(self.st.book.ram_frames());
        // Entries of frames that went (2 MiB blocks, shared frames) are given back.
        self.sync_metadata();
        self.st.counters.balloon_frames += freed as u64;
        // The contents changed under a snapshot (restoring would need the pages).
        if let Some(snap) = &mut self.st.track.snap {
            snap.stale = true;
        }
        debug_assert!(
            self.st.table.leaves_in(range).next().is_none(),
            "discard left a leaf of {} pages",
            range.size() / PAGE_SIZE_4K
        );
        Ok(freed)
    }
}
