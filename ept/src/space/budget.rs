//! What a guest may take from the host: host frames (its quota) and bookkeeping
//! entries (areas and tracked frames), shared by a space and every copy-on-write clone
//! of it (a *family*), plus an optional host-wide [`MetadataPool`].
//!
//! # Frames
//! Every frame a family takes from the host allocator goes through [`Charged`], which
//! counts it in the family's [`Budget`]; every frame it gives back is uncounted. So
//! the count is exactly the host frames the family holds: a frame shared between a
//! parent and its clones counts once, a private copy made by a copy-on-write break
//! counts once more. The quota bounds that count; a clone gets no quota of its own.
//!
//! # Bookkeeping
//! The areas of a space, the gap index beside them and the frames that need an entry
//! of their own (2 MiB blocks and frames shared copy-on-write) live on the host heap.
//! Each counts as one *entry* (at most [`ENTRY_BYTES`] bytes of heap, index overhead
//! included). A family may hold `metadata_entries` of them, and all families together
//! at most the pool's limit. An operation that could pass either limit is refused
//! before it changes anything ([`SpaceError::OutOfMetadata`]).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};

use memory_set::{HostPhysAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

use super::error::SpaceError;
use super::state::{Inner, State};
use super::{AddressSpace, Invalidate};
use crate::format::Stage2Format;
use crate::frame::{FrameAlloc, PhysMapper};

/// An upper bound on the host heap one bookkeeping entry takes (an area with its
/// gap-index entry and B-tree share, or a tracked frame with its share mark), in
/// bytes; measured by the `entry_bytes_bound` test. For sizing a [`MetadataPool`].
pub const ENTRY_BYTES: usize = 256;

/// Bookkeeping entries every family may hold whatever its quota (the areas a
/// hypervisor sets up, the first clones).
pub const MIN_METADATA_ENTRIES: usize = 256;

/// The host-wide limit on bookkeeping entries of all families together.
///
/// A `static` the hypervisor sizes to the part of its heap it gives guests.
#[derive(Debug)]
pub struct MetadataPool {
    used: AtomicUsize,
    limit: usize,
}

impl MetadataPool {
    /// A pool of `limit` entries.
    pub const fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Entries held by all families now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The pool's limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// The limits of a new space (and of every clone made from it).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Host frames (RAM and tables) the family may hold.
    pub quota_frames: usize,
    /// Bookkeeping entries the family may hold.
    pub metadata_entries: usize,
    /// The host-wide pool the entries also count in, if any.
    pub pool: Option<&'static MetadataPool>,
}

impl Limits {
    /// `quota_frames` frames, and the default bookkeeping budget derived from it
    /// ([`Limits::default_metadata`]), no host pool.
    pub fn quota(quota_frames: usize) -> Self {
        Self {
            quota_frames,
            metadata_entries: Self::default_metadata(quota_frames),
            pool: None,
        }
    }

    /// These limits with a bookkeeping budget of `entries`.
    pub fn metadata(self, entries: usize) -> Self {
        Self {
            metadata_entries: entries,
            ..self
        }
    }

    /// The default bookkeeping budget of a quota: one entry per quota frame (enough
    /// to share every frame of a full guest with one clone), at least
    /// [`MIN_METADATA_ENTRIES`].
    pub fn default_metadata(quota_frames: usize) -> usize {
        quota_frames.max(MIN_METADATA_ENTRIES)
    }
}

/// The counters of one family.
#[derive(Debug)]
struct Family {
    quota_frames: usize,
    held_frames: AtomicUsize,
    metadata_limit: usize,
    metadata_used: AtomicUsize,
    pool: Option<&'static MetadataPool>,
}

impl Drop for Family {
    fn drop(&mut self) {
        // Every space of the family gave its entries back; whatever is left (none
        // unless a space forgot) returns to the pool here.
        if let Some(pool) = self.pool {
            pool.used
                .fetch_sub(*self.metadata_used.get_mut(), Ordering::Relaxed);
        }
    }
}

/// A handle to a family's counters (see the module docs); clones share them.
#[derive(Clone, Debug)]
pub(crate) struct Budget(Arc<Family>);

impl Budget {
    /// A new family with `limits`.
    pub(crate) fn new(limits: Limits) -> Self {
        Self(Arc::new(Family {
            quota_frames: limits.quota_frames,
            held_frames: AtomicUsize::new(0),
            metadata_limit: limits.metadata_entries,
            metadata_used: AtomicUsize::new(0),
            pool: limits.pool,
        }))
    }

    /// The family's frame quota.
    pub(crate) fn quota(&self) -> usize {
        self.0.quota_frames
    }

    /// Host frames the family holds.
    pub(crate) fn held(&self) -> usize {
        self.0.held_frames.load(Ordering::Relaxed)
    }

    /// Whether `other` is a handle to the same family.
    pub(crate) fn same_family(&self, other: &Budget) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Counts `frames` more host frames as held by the family (frames whose charge
    /// moved in from another family with a frame bundle, see `share.rs`).
    pub(crate) fn charge(&self, frames: usize) {
        self.0.held_frames.fetch_add(frames, Ordering::Relaxed);
    }

    /// Counts `frames` fewer (frames whose charge moved out, or that another
    /// family's space freed as their last holder).
    pub(crate) fn uncharge(&self, frames: usize) {
        self.0.held_frames.fetch_sub(frames, Ordering::Relaxed);
    }

    /// Bookkeeping entries the family holds, and its limit.
    pub(crate) fn metadata(&self) -> (usize, usize) {
        (
            self.0.metadata_used.load(Ordering::Relaxed),
            self.0.metadata_limit,
        )
    }

    /// Whether `more` entries fit in the family's budget and in the host pool.
    pub(crate) fn metadata_room(&self, more: usize) -> Result<(), SpaceError> {
        let (used, limit) = self.metadata();
        if used.saturating_add(more) > limit {
            return Err(SpaceError::OutOfMetadata {
                used,
                limit,
                host_pool: false,
            });
        }
        if let Some(pool) = self.0.pool
            && pool.used().saturating_add(more) > pool.limit
        {
            return Err(SpaceError::OutOfMetadata {
                used: pool.used(),
                limit: pool.limit,
                host_pool: true,
            });
        }
        Ok(())
    }

    /// Records that a space of the family went from `from` to `to` entries.
    pub(crate) fn metadata_moved(&self, from: usize, to: usize) {
        let f = &self.0;
        if to >= from {
            f.metadata_used.fetch_add(to - from, Ordering::Relaxed);
            if let Some(pool) = f.pool {
                pool.used.fetch_add(to - from, Ordering::Relaxed);
            }
        } else {
            f.metadata_used.fetch_sub(from - to, Ordering::Relaxed);
            if let Some(pool) = f.pool {
                pool.used.fetch_sub(from - to, Ordering::Relaxed);
            }
        }
    }
}

/// The family's allocator: the host allocator `A`, counting every frame taken and
/// given back in the family's [`Budget`]. It enforces nothing itself (the quota is
/// checked where frames are asked for, in `Meter`).
#[derive(Clone, Debug)]
pub(crate) struct Charged<A> {
    pub(crate) host: A,
    pub(crate) budget: Budget,
}

const FRAMES_2M: usize = PAGE_SIZE_2M / PAGE_SIZE_4K;

impl<A: FrameAlloc> FrameAlloc for Charged<A> {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        let f = self.host.alloc_frame()?;
        self.budget.0.held_frames.fetch_add(1, Ordering::Relaxed);
        Some(f)
    }

    fn dealloc_frame(&mut self, frame: HostPhysAddr) {
        self.host.dealloc_frame(frame);
        self.budget.0.held_frames.fetch_sub(1, Ordering::Relaxed);
    }

    fn alloc_2m(&mut self) -> Option<HostPhysAddr> {
        let b = self.host.alloc_2m()?;
        self.budget
            .0
            .held_frames
            .fetch_add(FRAMES_2M, Ordering::Relaxed);
        Some(b)
    }

    fn dealloc_2m(&mut self, block: HostPhysAddr) {
        self.host.dealloc_2m(block);
        self.budget
            .0
            .held_frames
            .fetch_sub(FRAMES_2M, Ordering::Relaxed);
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc, I: Invalidate> State<F, M, A, I> {
    /// Brings the family's count of this space's bookkeeping entries up to date
    /// (`areas` areas plus the tracked frames of the book).
    pub(crate) fn sync_metadata(&mut self, areas: usize) {
        let now = areas + self.book.tracked() + self.metadata_extra;
        self.alloc.budget.metadata_moved(self.metadata_charged, now);
        self.metadata_charged = now;
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc + Clone, I: Invalidate> Inner<F, M, A, I> {
    /// Brings the family's count of this space's bookkeeping entries up to date;
    /// every operation that may add or drop areas or tracked frames ends with it.
    pub(crate) fn sync_metadata(&mut self) {
        let areas = self.set.len();
        self.st.sync_metadata(areas);
    }

    /// Checks that `more` bookkeeping entries fit (before an operation adds them).
    pub(crate) fn metadata_room(&mut self, more: usize) -> Result<(), SpaceError> {
        self.sync_metadata();
        self.st.alloc.budget.metadata_room(more)
    }
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Charges `entries` more bookkeeping entries to this space, for heap the host
    /// keeps for the guest outside the space (its vCPU and VM state): they count in
    /// the family's budget and the pool until the space goes. Refused, changing
    /// nothing, when they do not fit ([`SpaceError::OutOfMetadata`]).
    pub fn charge_metadata(&mut self, entries: usize) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        inner.metadata_room(entries)?;
        inner.st.metadata_extra += entries;
        inner.sync_metadata();
        Ok(())
    }
}
