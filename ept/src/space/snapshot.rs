//! Snapshots: freeze a space's memory contents copy-on-write, and roll the space back
//! to them as often as needed, at a cost that grows with what changed.
//!
//! # How
//! [`AddressSpace::snapshot`] is a copy-on-write clone ([`AddressSpace::try_clone`])
//! that is never run: it shares every RAM frame through the same per-frame reference
//! count clones use (`frames.rs`), and the live space's RAM leaves become read-only.
//! Its cost is that of copying the areas and the table layout, not the RAM. From
//! then on the live space records (in a page bitmap with a summary level) every page
//! it faults in, copies on write, gets write access back for, or the hypervisor
//! writes: every page whose contents may differ from the snapshot's.
//!
//! [`AddressSpace::restore`] visits only those pages:
//! * a page the snapshot does not have (faulted in since) is unmapped and its frame
//!   freed (after the flush);
//! * a page still mapping the snapshot's own frame is left alone;
//! * any other page (a private copy) gets the snapshot's contents copied back and is
//!   write-protected again, so its next write faults (cheaply: no copy, the frame is
//!   private) and is recorded. Keeping the private frame makes the next round's write
//!   fault a rights change instead of an allocation and copy.
//!
//! One invalidation covers the whole restore. Restoring again and again works the
//! same way. Dropping the snapshot frees the frames only it still holds (the
//! originals of pages copied on write) and its table.
//!
//! # Quota
//! The snapshot is charged to the space: while it exists, the space's usage includes
//! every frame the snapshot references (RAM, shared or not, and its table frames),
//! the same rule as for clones, where a shared frame counts for every sharer. A
//! snapshot that would not fit the quota is refused and nothing changes.
//!
//! # Limits
//! One snapshot at a time per space. Changing the areas (map, unmap, protect,
//! populate) while a snapshot is attached makes it stale: it can then only be
//! dropped ([`TrackingProblem::SnapshotStale`]). Owned regions are written without
//! faults, so a space with owned regions cannot be snapshotted. Linear windows are
//! host memory the space does not own: they are not part of the snapshot's contents.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};

use memory_set::{AddrRange, GuestPhysAddr, PAGE_SIZE_4K};

use super::Limits;
use super::bitmap::DirtyBitmap;
use super::budget::Budget;
use super::error::{OomReason, SpaceError, TrackingProblem};
use super::lock::SpinLock;
use super::state::Inner;
use super::{AddressSpace, Invalidate};
use crate::flush::Flush;
use crate::format::{Access, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper, copy_frame};
use crate::size::LeafSize;
use crate::table::Translation;

/// Snapshot ids, unique for the life of the program.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What the live space keeps about its attached snapshot.
#[derive(Debug)]
pub(crate) struct SnapTrack {
    pub(crate) id: u64,
    /// The areas changed since: restoring is refused.
    pub(crate) stale: bool,
    /// Pages that may differ from the snapshot.
    pub(crate) set: DirtyBitmap,
    /// Frames the snapshot holds, charged to the space.
    pub(crate) charge: usize,
}

/// What one [`AddressSpace::restore`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Pages whose contents were copied back from the snapshot.
    pub pages_copied: usize,
    /// 4 KiB pages unmapped (faulted in after the snapshot), frames freed.
    pub pages_unmapped: usize,
    /// Recorded pages that still mapped the snapshot's own frames.
    pub pages_unchanged: usize,
}

impl RestoreStats {
    /// Pages put back to the snapshot's contents (copied or unmapped).
    pub fn pages_restored(&self) -> usize {
        self.pages_copied + self.pages_unmapped
    }
}

/// The frozen memory contents of an address space (see the [module docs](self)).
///
/// It keeps the space's state alive (like an [`OwnedRegion`](super::OwnedRegion))
/// and detaches itself from the space when dropped.
pub struct Snapshot<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    live: Arc<SpinLock<Inner<F, M, A, I>>>,
    frozen: Inner<F, M, A, I>,
    id: u64,
    charge: usize,
}

impl<F, M, A, I> Snapshot<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Frames the snapshot references (RAM and tables), charged to its space.
    pub fn frames(&self) -> usize {
        self.charge
    }

    /// Reads bytes of the frozen contents (pages that were absent read as zeros).
    /// Errors as for [`AddressSpace::read`].
    pub fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), SpaceError> {
        if buf.is_empty() {
            return Ok(());
        }
        let range = AddrRange::from_start_size(gpa, buf.len()).ok_or(SpaceError::InvalidRange {
            start: gpa.as_usize(),
            size: buf.len(),
            problem: super::RangeProblem::Overflow,
        })?;
        self.frozen.check_ram(range, Access::READ)?;
        self.frozen.copy_out(gpa, buf);
        Ok(())
    }
}

impl<F, M, A, I> core::fmt::Debug for Snapshot<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Snapshot")
            .field("id", &self.id)
            .field("frames", &self.charge)
            .finish()
    }
}

impl<F, M, A, I> Drop for Snapshot<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    fn drop(&mut self) {
        let mut live = self.live.lock();
        if live.st.track.snap.as_ref().is_some_and(|s| s.id == self.id) {
            live.st.track.snap = None;
        }
        // `frozen` drops next: its teardown frees what only it held.
    }
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate + Clone,
{
    /// Freezes the space's memory contents (see the [module docs](self)).
    ///
    /// Errors change nothing: [`TrackingProblem::SnapshotAttached`] (one at a time),
    /// [`TrackingProblem::OwnedRegion`], out of memory (over the quota, which counts
    /// the snapshot's frames, or no frames for its table).
    pub fn snapshot(&mut self) -> Result<Snapshot<F, M, A, I>, SpaceError> {
        let mut inner = self.inner.lock();
        let refuse = |problem| Err(SpaceError::Tracking { problem });
        if inner.st.track.snap.is_some() {
            return refuse(TrackingProblem::SnapshotAttached);
        }
        if inner.set.iter().any(|a| a.flags().owner != 0) {
            return refuse(TrackingProblem::OwnedRegion);
        }
        // The snapshot references every RAM frame and copies the table layout.
        let charge = inner.st.book.ram_frames() + inner.st.table.table_frames();
        let used = inner.st.used();
        if used + charge > inner.st.quota() {
            return Err(SpaceError::OutOfMemory {
                gpa: None,
                reason: OomReason::Quota {
                    quota_frames: inner.st.quota(),
                    used_frames: used + charge,
                },
            });
        }
        let invalidate = inner.st.invalidate.clone();
        // The frozen copy keeps a budget of its own (its frames are charged to the
        // live space through `charge`, not through the family's count).
        let own = Budget::new(Limits::quota(usize::MAX).metadata(usize::MAX));
        let (set, st) = inner.clone_parts(invalidate, Some(own))?;
        debug_assert_eq!(st.own_frames(), charge, "snapshot charge estimate");
        let charge = st.own_frames();
        let extent = ram_extent(&inner);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        inner.st.track.snap = Some(SnapTrack {
            id,
            stale: false,
            set: DirtyBitmap::for_range(extent),
            charge,
        });
        let window = inner.window;
        super::debug_validated(&inner, Ok(()))?;
        drop(inner);
        Ok(Snapshot {
            live: self.inner.clone(),
            frozen: Inner {
                set,
                st,
                window,
                last_area: Cell::new(None),
            },
            id,
            charge,
        })
    }
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Brings the space's memory back to `snap`'s contents, touching only the pages
    /// recorded since the snapshot or the last restore (see the [module docs](self)).
    ///
    /// Errors change nothing: [`TrackingProblem::ForeignSnapshot`] (another space's),
    /// [`TrackingProblem::SnapshotStale`] (the areas changed).
    pub fn restore(&mut self, snap: &Snapshot<F, M, A, I>) -> Result<RestoreStats, SpaceError> {
        let refuse = |problem| Err(SpaceError::Tracking { problem });
        if !Arc::ptr_eq(&self.inner, &snap.live) {
            return refuse(TrackingProblem::ForeignSnapshot);
        }
        let mut inner = self.inner.lock();
        let result = match inner.st.track.snap.as_ref() {
            Some(t) if t.id != snap.id => refuse(TrackingProblem::ForeignSnapshot),
            None => refuse(TrackingProblem::ForeignSnapshot),
            Some(t) if t.stale => refuse(TrackingProblem::SnapshotStale),
            Some(_) => inner.restore_from(&snap.frozen),
        };
        super::debug_validated(&inner, result)
    }
}

/// The span from the first RAM area's start to the last one's end (where pages can
/// differ from a snapshot).
fn ram_extent<F, M, A, I>(inner: &Inner<F, M, A, I>) -> AddrRange<GuestPhysAddr>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    let mut ram = inner.set.iter().filter(|a| a.backend().kind.is_ram());
    let Some(first) = ram.next() else {
        return AddrRange::from_start_size(inner.window.start(), 0).unwrap_or(inner.window);
    };
    let start = first.start();
    let last = ram.next_back().unwrap_or(first);
    let end = last
        .va_range()
        .last()
        .map_or(start.as_usize(), |l| l.as_usize() + 1);
    AddrRange::from_start_size(start, end - start.as_usize()).unwrap_or(inner.window)
}

/// What restoring one recorded page needs.
enum Step {
    /// Copy the snapshot's page `src` over the live private leaf.
    Copy(Translation, memory_set::HostPhysAddr),
    /// Unmap the live leaf (faulted in after the snapshot).
    Unmap(Translation),
}

impl<F, M, A, I> Inner<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Plans every recorded page (reading only), then applies the plan, which cannot
    /// fail: exact leaves are write-protected or unmapped, never split.
    fn restore_from(&mut self, frozen: &Inner<F, M, A, I>) -> Result<RestoreStats, SpaceError> {
        let stale = || {
            Err(SpaceError::Tracking {
                problem: TrackingProblem::SnapshotStale,
            })
        };
        let Some(track) = self.st.track.snap.as_ref() else {
            return stale();
        };
        let set = &track.set;
        let base = set.base().as_usize();
        let live = &self.st.table;
        let old = &frozen.st.table;
        let mut steps = Vec::with_capacity(set.count());
        let mut stats = RestoreStats::default();
        let mut next = 0;
        while let Some(i) = set.next_set(next) {
            next = i + 1;
            let page = GuestPhysAddr::new(base + i * PAGE_SIZE_4K);
            match (live.translate(page), old.translate(page)) {
                (None, None) => {}
                (Some(l), None) => {
                    let leaf = AddrRange::from_start_size(l.leaf_gpa, l.size.size());
                    if l.size != LeafSize::Size4K
                        && leaf.is_none_or(|r| old.leaves_in(r).next().is_some())
                    {
                        return stale();
                    }
                    let end = l.leaf_gpa.as_usize() + l.size.size();
                    next = next.max((end - base) / PAGE_SIZE_4K);
                    steps.push(Step::Unmap(l));
                }
                (Some(l), Some(s)) if l.hpa == s.hpa => stats.pages_unchanged += 1,
                (Some(l), Some(s)) if l.size == LeafSize::Size4K => {
                    steps.push(Step::Copy(l, s.hpa))
                }
                _ => return stale(),
            }
        }
        // Apply.
        let mut flush = Flush::none();
        for step in &steps {
            match step {
                Step::Copy(l, src) => {
                    // Both are whole frames this space and the snapshot hold.
                    let _ = copy_frame(self.st.table.mapper(), l.hpa, *src);
                    if let Some((leaf, size)) = self.st.table.clear_write(l.leaf_gpa) {
                        flush.add_range(leaf, size.size());
                    }
                    stats.pages_copied += 1;
                }
                Step::Unmap(l) => {
                    let (table, mut meter) = self.st.parts();
                    if let Ok(f) = table.unmap_range(&mut meter, l.leaf_gpa, l.size.size()) {
                        flush = flush.merge(f);
                    }
                    stats.pages_unmapped += l.size.size() / PAGE_SIZE_4K;
                }
            }
        }
        self.st.finish(flush, true);
        if let Some(track) = self.st.track.snap.as_mut() {
            track.set.clear();
        }
        // The contents changed: a running dirty log sees the restored pages.
        if self.st.track.log.is_some() {
            for step in &steps {
                let (Step::Copy(l, _) | Step::Unmap(l)) = step;
                self.st
                    .track
                    .record_log(l.leaf_gpa.as_usize(), l.size.size());
            }
        }
        Ok(stats)
    }
}
