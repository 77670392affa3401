//! Zero-page sharing: a read fault on a RAM page that was never written maps one
//! shared, read-only page of zeros instead of allocating a frame.
//!
//! # How
//! [`AddressSpace::set_zero_page`] turns it on for a space (off by default: a first
//! read would otherwise take the place of a 2 MiB leaf). The zero frame is taken from
//! the allocator, within the quota, on the first read fault that needs it, and is an
//! ordinary chunk of the frame book (`frames.rs`): the space holds one reference on
//! it for as long as it lives, every leaf mapping it is a live piece, so the one
//! per-frame reference count makes it *shared* and every rule for shared frames
//! applies unchanged:
//! * its leaves are never writable (protect keeps shared frames read-only, the
//!   validator checks it);
//! * the first write to such a page is a copy-on-write break: a private frame
//!   replaces the leaf (copying zeros), as a guest write or [`AddressSpace::write`]
//!   would for any shared frame;
//! * a clone shares the zero leaves like any other frame (and gets a zero page of
//!   its own for its own read faults);
//! * unmapping a zero leaf drops a live piece; the frame is freed with the space.
//!
//! # Quota
//! The zero frame counts once in the space's RAM frames from the moment it is taken,
//! however many pages map it. [`SpaceStats::zero_page_reads`] counts the read faults
//! served with it: each is a frame the space did not allocate.
//!
//! Only not-present read faults use it: an instruction fetch or a write allocates as
//! before, and a fault where none of this applies (no frame for the zero page) falls
//! back to the normal path.

use alloc::sync::Arc;

use memory_set::{GuestPhysAddr, HostPhysAddr, MemoryAddr, PAGE_SIZE_4K};

#[cfg(doc)]
use super::SpaceStats;
use super::frames::ShareMark;
use super::state::State;
use super::{AddressSpace, Invalidate};
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper, zero_frame};
use crate::size::LeafSize;

/// The zero page of one space.
#[derive(Debug, Default)]
pub(crate) struct ZeroState {
    /// Whether read faults may map the zero page.
    enabled: bool,
    /// The frame and the space's own reference on it, once taken.
    page: Option<(HostPhysAddr, Arc<ShareMark>)>,
}

impl ZeroState {
    /// A clone reads zeros the same way as its parent (with a zero page of its own).
    pub(crate) fn inherit_setting(&mut self, parent: &ZeroState) {
        self.enabled = parent.enabled;
    }
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Turns zero-page sharing on or off for later read faults (see
    /// `zero.rs`). Pages already mapped to the zero page stay so.
    pub fn set_zero_page(&mut self, enabled: bool) {
        self.inner.lock().st.zero.enabled = enabled;
    }

    /// The host frame of the zero page, once taken (for tests and reports).
    pub fn zero_page(&self) -> Option<HostPhysAddr> {
        self.inner.lock().st.zero.page.as_ref().map(|(hpa, _)| *hpa)
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc, I: Invalidate> State<F, M, A, I> {
    /// Serves a not-present `access` fault at `gpa` (RAM with rights `attr`) with the
    /// zero page if it is enabled and the access only reads. `None` (nothing changed)
    /// when that does not apply or fails; the caller then populates as usual.
    #[inline]
    pub(crate) fn serve_zero_read(
        &mut self,
        gpa: GuestPhysAddr,
        access: Access,
        attr: LeafAttr,
    ) -> Option<LeafSize> {
        if !self.zero.enabled || access != Access::READ {
            return None;
        }
        let fresh = self.zero.page.is_none();
        let hpa = self.zero_frame()?;
        let ro = LeafAttr {
            access: attr.access.difference(Access::WRITE),
            ..attr
        };
        let page = gpa.align_down(PAGE_SIZE_4K);
        if self.map_leaf(page, hpa, LeafSize::Size4K, ro).is_err() {
            if fresh {
                // Taken for this fault alone: give it back, nothing changed.
                self.drop_zero_page();
            }
            return None;
        }
        let (_, mark) = self.zero.page.as_ref()?;
        let mark = mark.clone();
        self.book.adopt(hpa, false, 1, mark);
        self.counters.zero_reads += 1;
        Some(LeafSize::Size4K)
    }

    /// The zero frame, if taken.
    pub(crate) fn zero_page_frame(&self) -> Option<HostPhysAddr> {
        self.zero.page.as_ref().map(|(hpa, _)| *hpa)
    }

    /// The zero frame, taken (within the quota) and zeroed on first use.
    fn zero_frame(&mut self) -> Option<HostPhysAddr> {
        if let Some((hpa, _)) = &self.zero.page {
            return Some(*hpa);
        }
        // The zero frame is one bookkeeping entry (a tracked chunk).
        self.alloc.budget.metadata_room(1).ok()?;
        let (table, mut meter) = self.parts();
        let hpa = meter.alloc_frame()?;
        if zero_frame(table.mapper(), hpa).is_err() {
            meter.dealloc_frame(hpa);
            return None;
        }
        let mark = Arc::new(ShareMark::default());
        // The space's own piece: the frame counts once from now on.
        self.book.adopt(hpa, false, 1, mark.clone());
        self.zero.page = Some((hpa, mark));
        let c = self.metadata_charged;
        self.alloc.budget.metadata_moved(c, c + 1);
        self.metadata_charged = c + 1;
        Some(hpa)
    }

    /// Lets go of the zero page (teardown, after every leaf was released): the
    /// space's own piece, then its reference; the last holder frees the frame.
    pub(crate) fn drop_zero_page(&mut self) {
        let Some((hpa, mark)) = self.zero.page.take() else {
            return;
        };
        self.book.release(hpa, LeafSize::Size4K, &mut self.alloc);
        if Arc::into_inner(mark).is_some() {
            // Never bundled: charged to this space's family.
            self.alloc.dealloc_frame(hpa);
        }
    }
}
