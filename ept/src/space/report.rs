//! Frame accounting and the one-screen stage-2 report.

use alloc::vec::Vec;
use core::fmt;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, PAGE_SIZE_4K};

use super::backend::BackendKind;
use super::error::AccessName;
use super::{AddressSpace, Invalidate};
use crate::format::{Access, MemType, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::LeafSize;

/// Counters of one address space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpaceStats {
    /// 4 KiB frames held for RAM (a frame shared with a clone counts in both; a
    /// 2 MiB block counts 512 until its last piece is unmapped).
    pub ram_frames: usize,
    /// Table frames, root included.
    pub table_frames: usize,
    /// The quota on `ram_frames + table_frames`.
    pub quota_frames: usize,
    /// RAM frames currently shared copy-on-write with another space (4 KiB units).
    pub shared_frames: usize,
    /// Faults served successfully.
    pub faults_handled: u64,
    /// Copy-on-write copies made.
    pub cow_copies: u64,
    /// Leaves whose rights were restored (copy-on-write without copy, stale rights).
    pub write_restores: u64,
    /// Faults on translations that already allowed the access.
    pub spurious_faults: u64,
    /// Read faults served with the shared zero page instead of a new frame.
    pub zero_page_reads: u64,
    /// RAM frames given back with [`discard`](super::AddressSpace::discard) (balloon).
    pub balloon_frames: u64,
    /// 4 KiB leaves in the table.
    pub leaves_4k: usize,
    /// 2 MiB leaves.
    pub leaves_2m: usize,
    /// 1 GiB leaves.
    pub leaves_1g: usize,
    /// Areas.
    pub areas: usize,
    /// Host frames the space's family (it and its copy-on-write clones) holds, each
    /// shared frame once: what the quota bounds.
    pub family_frames: usize,
    /// Bookkeeping entries the family holds (areas, tracked frames).
    pub metadata_entries: usize,
    /// The family's bookkeeping budget.
    pub metadata_limit: usize,
}

impl SpaceStats {
    /// Frames the space holds in all (shared frames included).
    pub fn frames(&self) -> usize {
        self.ram_frames + self.table_frames
    }
}

/// What backs an area, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AreaKind {
    /// A linear window onto host memory starting at `hpa`.
    Linear {
        /// The host address of the area's first byte.
        hpa: HostPhysAddr,
    },
    /// Allocated RAM.
    Ram {
        /// Populated when mapped (rather than on demand).
        populate: bool,
        /// Held by an [`OwnedRegion`](super::OwnedRegion).
        owned: bool,
    },
    /// A shared window: frames of a [`FrameBundle`](super::FrameBundle) that other
    /// spaces may map too.
    Window,
}

/// One area, for reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AreaInfo {
    /// The guest range.
    pub range: AddrRange<GuestPhysAddr>,
    /// The guest's rights.
    pub access: Access,
    /// The memory type.
    pub mem_type: MemType,
    /// The backend.
    pub kind: AreaKind,
}

/// A snapshot of a space for display: `Display` prints one screen (areas, leaves per
/// size, frames, faults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceReport {
    /// "EPT" or "NPT".
    pub format: &'static str,
    /// The window.
    pub window: AddrRange<GuestPhysAddr>,
    /// The root table frame.
    pub root: HostPhysAddr,
    /// The counters.
    pub stats: SpaceStats,
    /// The first [`REPORT_AREAS`] areas in address order.
    pub areas: Vec<AreaInfo>,
    /// Areas after those, and the bytes they cover (summarised on one line).
    pub more_areas: (usize, usize),
}

/// Areas a [`SpaceReport`] lists one by one; the rest are summarised, so a report
/// stays one screen and its size does not grow with the guest's areas.
pub const REPORT_AREAS: usize = 8;

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// The frame counts and event counters.
    pub fn stats(&self) -> SpaceStats {
        let inner = self.inner.lock();
        let st = &inner.st;
        let shared_frames = st
            .book
            .chunks()
            .filter(|(_, c)| c.is_shared())
            .map(|(_, c)| c.frames())
            .sum();
        SpaceStats {
            ram_frames: st.book.ram_frames(),
            table_frames: st.table.table_frames(),
            quota_frames: st.quota(),
            shared_frames,
            faults_handled: st.counters.faults_handled,
            cow_copies: st.counters.cow_copies,
            write_restores: st.counters.write_restores,
            spurious_faults: st.counters.spurious,
            zero_page_reads: st.counters.zero_reads,
            balloon_frames: st.counters.balloon_frames,
            leaves_4k: st.table.leaf_count(LeafSize::Size4K),
            leaves_2m: st.table.leaf_count(LeafSize::Size2M),
            leaves_1g: st.table.leaf_count(LeafSize::Size1G),
            areas: inner.set.len(),
            family_frames: st.alloc.budget.held(),
            metadata_entries: st.alloc.budget.metadata().0,
            metadata_limit: st.alloc.budget.metadata().1,
        }
    }

    /// The areas in address order.
    pub fn areas(&self) -> Vec<AreaInfo> {
        self.areas_upto(usize::MAX)
    }

    /// The first `n` areas in address order.
    fn areas_upto(&self, n: usize) -> Vec<AreaInfo> {
        let inner = self.inner.lock();
        inner
            .set
            .iter()
            .take(n)
            .map(|a| AreaInfo {
                range: a.va_range(),
                access: a.flags().attr.access,
                mem_type: a.flags().attr.mem_type,
                kind: match a.backend().kind {
                    BackendKind::Linear { .. } => AreaKind::Linear {
                        hpa: a.backend().kind.linear_hpa(a.start()).unwrap_or_default(),
                    },
                    BackendKind::Window => AreaKind::Window,
                    BackendKind::Alloc { populate } => AreaKind::Ram {
                        populate,
                        owned: a.flags().owner != 0,
                    },
                },
            })
            .collect()
    }

    /// A printable report of the space: the first [`REPORT_AREAS`] areas, the rest
    /// summarised (no allocation that grows with the number of areas).
    pub fn report(&self) -> SpaceReport {
        let more_areas = {
            let inner = self.inner.lock();
            inner
                .set
                .iter()
                .skip(REPORT_AREAS)
                .fold((0, 0), |(n, b), a| (n + 1, b + a.size()))
        };
        SpaceReport {
            format: F::NAME,
            window: self.window,
            root: self.root,
            stats: self.stats(),
            areas: self.areas_upto(REPORT_AREAS),
            more_areas,
        }
    }
}

fn mib(frames: usize) -> (usize, usize) {
    let kib = frames * (PAGE_SIZE_4K / 1024);
    (kib / 1024, (kib % 1024) * 10 / 1024)
}

impl fmt::Display for SpaceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "stage-2 {} space {:?}, root {:#x}, {} area(s)",
            self.format, self.window, self.root, s.areas
        )?;
        for a in &self.areas {
            let end = a.range.end().map_or(usize::MAX, |e| e.as_usize());
            write!(
                f,
                "  [{:#012x}, {:#012x}) {:>9} KiB {} {:<14?} ",
                a.range.start().as_usize(),
                end,
                a.range.size() / 1024,
                AccessName(a.access),
                a.mem_type
            )?;
            match a.kind {
                AreaKind::Linear { hpa } => writeln!(f, "linear -> {hpa:#x}")?,
                AreaKind::Window => writeln!(f, "shared window")?,
                AreaKind::Ram { populate, owned } => writeln!(
                    f,
                    "ram ({}{})",
                    if populate { "populated" } else { "on demand" },
                    if owned { ", owned region" } else { "" }
                )?,
            }
        }
        if self.more_areas.0 > 0 {
            let (n, bytes) = self.more_areas;
            writeln!(
                f,
                "  ... and {n} more area(s) totalling {} KiB",
                bytes / 1024
            )?;
        }
        writeln!(
            f,
            "  leaves: {} x 4K, {} x 2M, {} x 1G",
            s.leaves_4k, s.leaves_2m, s.leaves_1g
        )?;
        let (rm, rf) = mib(s.ram_frames);
        writeln!(
            f,
            "  frames: {} RAM ({}.{} MiB, {} shared) + {} table = {} of quota {}",
            s.ram_frames,
            rm,
            rf,
            s.shared_frames,
            s.table_frames,
            s.frames(),
            s.quota_frames
        )?;
        writeln!(
            f,
            "  family: {} frames held (clones included); bookkeeping {} of {} entries",
            s.family_frames, s.metadata_entries, s.metadata_limit
        )?;
        write!(
            f,
            "  faults handled: {} ({} copy-on-write, {} rights restored, {} spurious)",
            s.faults_handled, s.cow_copies, s.write_restores, s.spurious_faults
        )?;
        if s.zero_page_reads > 0 || s.balloon_frames > 0 {
            write!(
                f,
                "\n  zero page: {} read faults served without a frame; balloon: {} frames given back",
                s.zero_page_reads, s.balloon_frames
            )?;
        }
        Ok(())
    }
}
