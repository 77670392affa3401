//! Dirty logging: which 4 KiB pages of a range were written (or faulted in) since the
//! last harvest.
//!
//! # Two mechanisms, one answer
//! * [`DirtyMode::AccessedDirty`]: the CPU sets the leaf's dirty flag on a write (EPT
//!   bit 9 with EPTP bit 6, SDM Vol. 3C §29.3.5; NPT bit 6, APM Vol. 2 §15.25.5). A
//!   harvest reads and clears the flags of the range's leaves atomically, then
//!   invalidates the leaves it cleared: a translation cached with the flag set would
//!   let later writes go unrecorded.
//! * [`DirtyMode::WriteProtect`] (no A/D, e.g. Sandy Bridge): logging write-protects
//!   the range's RAM leaves; the first write to a leaf faults, the fault handler
//!   records the leaf and gives the write access back. A harvest write-protects the
//!   leaves it reports again, and invalidates them.
//!
//! Both modes also record, in software, what they cannot see in the table: leaves
//! faulted in (a page that did not exist is new content, even if it is zeros), pages
//! copied on write, and writes by the hypervisor ([`AddressSpace::write`]). A harvest
//! reports pages that are mapped at that moment; a page unmapped since it was
//! written is not reported (its area changed, which the caller did). Both modes give
//! the same answers (`tests/dirty_model.rs` runs one against the other).
//!
//! # Huge leaves
//! The hardware tracks a leaf, not a page: a dirty 2 MiB leaf is 512 dirty pages.
//! [`HugeLeaves::Whole`] keeps huge leaves and reports each dirty one whole (cheap to
//! start, coarse). [`HugeLeaves::Split`] splits every huge RAM leaf of the range into
//! 4 KiB leaves when logging starts (the frames are charged to the quota; all or
//! nothing), as KVM does for migration: then each page is reported alone. Leaves
//! faulted in while logging may still be 2 MiB (reported whole). Stopping does not
//! merge split leaves back.
//!
//! # Stopping
//! [`AddressSpace::stop_dirty_log`] just forgets the log: write-protected leaves get
//! their write access back on their next write fault.
//!
//! # Area changes
//! Changing areas inside a write-protect log's range write-protects the new leaves,
//! so both modes keep agreeing.
//!
//! Owned regions are written through their views without faults: they are not
//! tracked.

use memory_set::{AddrRange, GuestPhysAddr, PAGE_SIZE_2M};

use super::bitmap::DirtyBitmap;
use super::error::{SpaceError, TrackingProblem};
use super::fault::FaultOutcome;
use super::state::{Inner, State};
use super::{AddressSpace, Invalidate, range_scope};
use crate::flush::Flush;
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, MapSize, Size4K};
use crate::table::Translation;

/// How a dirty log learns about writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyMode {
    /// The hardware's dirty flags (needs [`Stage2Caps::accessed_dirty`](crate::caps::Stage2Caps)).
    AccessedDirty,
    /// Write protection and write faults (any hardware).
    WriteProtect,
}

impl DirtyMode {
    /// The cheapest mode the capabilities allow.
    pub fn best(caps: &crate::caps::Stage2Caps) -> Self {
        if caps.accessed_dirty {
            Self::AccessedDirty
        } else {
            Self::WriteProtect
        }
    }
}

/// What a dirty log does with huge leaves (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HugeLeaves {
    /// Split huge RAM leaves into 4 KiB leaves when logging starts.
    Split,
    /// Keep them; a dirty huge leaf reports all its pages.
    Whole,
}

/// A running dirty log.
#[derive(Debug)]
pub(crate) struct Log {
    range: AddrRange<GuestPhysAddr>,
    mode: DirtyMode,
    /// Pages recorded in software since the last harvest.
    soft: DirtyBitmap,
}

/// What the space tracks for dirty logs and an attached snapshot.
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    pub(crate) log: Option<Log>,
    pub(crate) snap: Option<super::snapshot::SnapTrack>,
}

impl Tracking {
    /// Whether faults and writes must be recorded.
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        self.log.is_some() || self.snap.is_some()
    }

    /// Frames charged to the space besides its own (an attached snapshot's).
    #[inline]
    pub(crate) fn charged_frames(&self) -> usize {
        self.snap.as_ref().map_or(0, |s| s.charge)
    }

    /// Records `[start, start + size)` as written.
    pub(crate) fn record(&mut self, start: usize, size: usize) {
        if let Some(log) = &mut self.log {
            log.soft.set_span(start, size);
        }
        if let Some(snap) = &mut self.snap {
            snap.set.set_span(start, size);
        }
    }

    /// Records `[start, start + size)` in the dirty log only.
    pub(crate) fn record_log(&mut self, start: usize, size: usize) {
        if let Some(log) = &mut self.log {
            log.soft.set_span(start, size);
        }
    }

    /// The range a write-protect log covers, if one runs.
    fn write_protected(&self) -> Option<AddrRange<GuestPhysAddr>> {
        self.log
            .as_ref()
            .filter(|l| l.mode == DirtyMode::WriteProtect)
            .map(|l| l.range)
    }
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Starts logging writes to `[gpa, gpa + size)` in the best mode the hardware has
    /// ([`DirtyMode::best`]), which it returns. See [`AddressSpace::start_dirty_log_mode`].
    pub fn start_dirty_log(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        huge: HugeLeaves,
    ) -> Result<DirtyMode, SpaceError> {
        let mode = DirtyMode::best(&self.caps());
        self.start_dirty_log_mode(gpa, size, huge, mode)?;
        Ok(mode)
    }

    /// Starts logging writes to `[gpa, gpa + size)` in `mode`: clears the range's
    /// dirty flags or write-protects its RAM leaves (and invalidates), after splitting
    /// huge leaves if `huge` says so. Errors (one log at a time, A/D mode without the
    /// hardware, a bad range, no frames for the splits) change nothing.
    pub fn start_dirty_log_mode(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        huge: HugeLeaves,
        mode: DirtyMode,
    ) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        let range = inner.check_range(gpa, size)?;
        let refuse = |problem| Err(SpaceError::Tracking { problem });
        if inner.st.track.log.is_some() {
            return refuse(TrackingProblem::AlreadyLogging);
        }
        if mode == DirtyMode::AccessedDirty && !inner.st.caps.accessed_dirty {
            return refuse(TrackingProblem::NoAccessedDirty);
        }
        if huge == HugeLeaves::Split {
            inner.split_huge_ram(range)?;
        }
        let flush = match mode {
            DirtyMode::AccessedDirty => inner
                .st
                .table
                .harvest_dirty(range, |_, _| {})
                .map_err(SpaceError::Table)?,
            DirtyMode::WriteProtect => inner.write_protect_ram(range),
        };
        inner.st.finish(flush, false);
        // Page sizes may have changed, and cached translations may carry dirty flags.
        inner
            .st
            .invalidate_now(range_scope(range.start(), range.size()));
        inner.st.track.log = Some(Log {
            range,
            mode,
            soft: DirtyBitmap::for_range(range),
        });
        super::debug_validated(&inner, Ok(()))
    }

    /// The pages written or faulted in since logging started or since the last
    /// harvest, into `out` (which is reset to the log's range); clears them and
    /// invalidates what it must. Returns the number of dirty pages.
    /// [`TrackingProblem::NotLogging`] without a log.
    pub fn harvest_dirty(&mut self, out: &mut DirtyBitmap) -> Result<usize, SpaceError> {
        let mut inner = self.inner.lock();
        inner.harvest(out)
    }

    /// Stops the log (see the [module docs](self#stopping)).
    pub fn stop_dirty_log(&mut self) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        match inner.st.track.log.take() {
            Some(_) => Ok(()),
            None => Err(SpaceError::Tracking {
                problem: TrackingProblem::NotLogging,
            }),
        }
    }

    /// The mode of the running log, if any.
    pub fn dirty_log_mode(&self) -> Option<DirtyMode> {
        self.inner.lock().st.track.log.as_ref().map(|l| l.mode)
    }

    /// What the MMU would do for a guest `access` at `gpa` right now: the
    /// translation, with the leaf's accessed (and, for a write, dirty) flag set as the
    /// hardware sets it; or the fault it would raise, for
    /// [`AddressSpace::handle_fault`]. For instruction emulation, tests and
    /// benchmarks: it does not model the TLB.
    pub fn guest_access(
        &self,
        gpa: GuestPhysAddr,
        access: Access,
    ) -> Result<Translation, crate::fault::Stage2Fault> {
        let inner = self.inner.lock();
        let table = &inner.st.table;
        table.hardware_access(gpa, access).ok_or_else(|| {
            let kind = match table.translate(gpa) {
                Some(_) => crate::fault::FaultKind::Permission,
                None => crate::fault::FaultKind::NotPresent,
            };
            crate::fault::Stage2Fault {
                gpa,
                access,
                kind,
                in_guest_walk: false,
            }
        })
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc, I: Invalidate> State<F, M, A, I> {
    /// Records the leaf at `gpa` after a served fault: when it was faulted in, or the
    /// access was a write (copy-on-write, write access given back).
    #[inline]
    pub(crate) fn note_fault(&mut self, gpa: GuestPhysAddr, access: Access, outcome: FaultOutcome) {
        if !self.track.is_active() {
            return;
        }
        let populated = matches!(outcome, FaultOutcome::Populated { .. });
        if (populated || access.contains(Access::WRITE))
            && let Some(t) = self.table.translate(gpa)
        {
            self.track.record(t.leaf_gpa.as_usize(), t.size.size());
        }
    }
}

impl<F, M, A, I> Inner<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Records every leaf of `range` (written by the hypervisor, or populated).
    pub(crate) fn note_written(&mut self, range: AddrRange<GuestPhysAddr>) {
        if !self.st.track.is_active() {
            return;
        }
        let st = &mut self.st;
        for leaf in st.table.leaves_in(range) {
            st.track.record(leaf.gpa.as_usize(), leaf.size.size());
        }
    }

    /// After the areas in `range` changed: an attached snapshot can no longer be
    /// restored, and a write-protect log protects the range's new leaves.
    pub(crate) fn note_area_change(&mut self, range: AddrRange<GuestPhysAddr>) {
        if let Some(snap) = &mut self.st.track.snap {
            snap.stale = true;
        }
        if let Some(logged) = self.st.track.write_protected()
            && let Some(r) = logged.intersection(&range)
        {
            let flush = self.write_protect_ram(r);
            self.st.finish(flush, false);
        }
    }

    /// Write-protects every RAM leaf overlapping `range` (whole leaves: no split, no
    /// allocation).
    pub(crate) fn write_protect_ram(&mut self, range: AddrRange<GuestPhysAddr>) -> Flush {
        let pieces: alloc::vec::Vec<_> = self
            .set
            .iter_overlapping(range)
            .filter(|a| a.backend().kind.is_ram() && a.flags().attr.access.contains(Access::WRITE))
            .filter_map(|a| Some((a.va_range().intersection(&range)?, a.flags().attr)))
            .collect();
        let mut flush = Flush::none();
        for (piece, attr) in pieces {
            // Widen to whole leaves (leaves never straddle an area boundary).
            let start = self
                .st
                .table
                .translate(piece.start())
                .map_or(piece.start(), |t| t.leaf_gpa);
            let end = match piece.last().and_then(|l| self.st.table.translate(l)) {
                Some(t) => t.leaf_gpa.as_usize() + t.size.size(),
                None => piece.start().as_usize() + piece.size(),
            };
            let ro = LeafAttr {
                access: attr.access.difference(Access::WRITE),
                ..attr
            };
            let (table, mut meter) = self.st.parts();
            let size = end - start.as_usize();
            if let Ok(f) = table.protect_range(&mut meter, start, size, ro) {
                flush = flush.merge(f);
            }
        }
        flush
    }

    /// Splits every huge RAM leaf overlapping `range` into 4 KiB leaves, all or
    /// nothing (the frames are reserved first).
    fn split_huge_ram(&mut self, range: AddrRange<GuestPhysAddr>) -> Result<(), SpaceError> {
        let huge: alloc::vec::Vec<_> = self
            .st
            .table
            .leaves_in(range)
            .filter(|l| l.size != LeafSize::Size4K)
            .filter(|l| self.area_at(l.gpa).is_some_and(|(_, _, k)| k.is_ram()))
            .map(|l| (l.gpa, l.size))
            .collect();
        let blocks = |size: LeafSize| size.size() / PAGE_SIZE_2M;
        let need: usize = huge
            .iter()
            .map(|&(_, s)| blocks(s) + usize::from(s == LeafSize::Size1G))
            .sum();
        self.st.fill_reserve(need, range.start())?;
        let mut result = Ok(());
        for &(gpa, size) in &huge {
            for b in 0..blocks(size) {
                let at = GuestPhysAddr::new(gpa.as_usize() + b * PAGE_SIZE_2M);
                let r = self.st.metered(at, |table, meter| {
                    Size4K::ensure_chain_for(table, meter, at).map(|_| ())
                });
                if r.is_err() {
                    result = r;
                }
            }
        }
        debug_assert!(
            result.is_ok() && self.st.reserve.is_empty(),
            "split plan mismatch"
        );
        self.st.drain_reserve();
        result
    }

    /// See [`AddressSpace::harvest_dirty`].
    fn harvest(&mut self, out: &mut DirtyBitmap) -> Result<usize, SpaceError> {
        let st = &mut self.st;
        let Some(log) = st.track.log.as_mut() else {
            return Err(SpaceError::Tracking {
                problem: TrackingProblem::NotLogging,
            });
        };
        out.reset(log.range);
        let mode = log.mode;
        let mut soft = core::mem::take(&mut log.soft);
        let mut flush = match mode {
            DirtyMode::AccessedDirty => st
                .table
                .harvest_dirty(log.range, |g, size| out.set_span(g.as_usize(), size.size()))
                .map_err(SpaceError::Table)?,
            DirtyMode::WriteProtect => Flush::none(),
        };
        let base = soft.base().as_usize();
        let mut next = 0;
        while let Some(i) = soft.next_set(next) {
            next = i + 1;
            let Some(t) = st.table.translate(GuestPhysAddr::new(base + i * 4096)) else {
                continue;
            };
            out.set_span(t.leaf_gpa.as_usize(), t.size.size());
            let leaf_end = t.leaf_gpa.as_usize() + t.size.size();
            next = next.max(leaf_end.saturating_sub(base) / 4096);
            if mode == DirtyMode::WriteProtect
                && let Some((leaf, size)) = st.table.clear_write(t.leaf_gpa)
            {
                flush.add_range(leaf, size.size());
            }
        }
        soft.clear();
        if let Some(log) = st.track.log.as_mut() {
            log.soft = soft;
        }
        st.finish(flush, false);
        Ok(out.count())
    }
}
