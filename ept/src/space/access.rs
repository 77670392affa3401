//! Guest memory access for the hypervisor: bytes and plain-data objects at any GPA.

use alloc::vec::Vec;
use core::mem::size_of;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, MemoryAddr, PAGE_SIZE_4K};

use super::backend::AreaFlags;
use super::error::{RangeProblem, SpaceError};
use super::pod::{Pod, bytes_of, bytes_of_mut, zeroed};
use super::state::Inner;
use super::{AddressSpace, Invalidate};
use crate::format::{Access, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper, read_phys, write_phys};
use crate::size::LeafSize;

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Reads `buf.len()` bytes at `gpa` (any alignment, across pages). All or nothing.
    ///
    /// Every byte must lie in a RAM area with `READ` ([`SpaceError::NotMapped`],
    /// [`SpaceError::PermissionDenied`], [`SpaceError::NotRam`] for linear windows,
    /// [`SpaceError::Owned`] for owned regions). Pages not faulted in yet read as zeros
    /// and stay unallocated.
    pub fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), SpaceError> {
        let inner = self.inner.lock();
        let Some(range) = byte_range(gpa, buf.len())? else {
            return Ok(());
        };
        inner.check_ram(range, Access::READ)?;
        inner.copy_out(gpa, buf);
        Ok(())
    }

    /// Writes `data` at `gpa` (any alignment, across pages). All or nothing.
    ///
    /// Every byte must lie in a RAM area with `WRITE` (errors as for
    /// [`AddressSpace::read`]). Pages are first made present and private exactly as a
    /// guest write would (populated, or copied when shared copy-on-write); if that runs
    /// out of frames, the pages it populated are unmapped again and no byte is written.
    pub fn write(&mut self, gpa: GuestPhysAddr, data: &[u8]) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        let Some(range) = byte_range(gpa, data.len())? else {
            return Ok(());
        };
        inner.check_ram(range, Access::WRITE)?;
        let made = inner.make_writable(range);
        inner.sync_metadata();
        made?;
        inner.copy_in(gpa, data);
        inner.note_written(range);
        Ok(())
    }

    /// Reads a plain-data value at `gpa` (see [`AddressSpace::read`]).
    pub fn read_obj<T: Pod>(&self, gpa: GuestPhysAddr) -> Result<T, SpaceError> {
        let mut v: T = zeroed();
        self.read(gpa, bytes_of_mut(&mut v))?;
        Ok(v)
    }

    /// Writes a plain-data value at `gpa` (see [`AddressSpace::write`]).
    pub fn write_obj<T: Pod>(&mut self, gpa: GuestPhysAddr, value: &T) -> Result<(), SpaceError> {
        debug_assert_eq!(bytes_of(value).len(), size_of::<T>());
        self.write(gpa, bytes_of(value))
    }
}

/// The byte range `[gpa, gpa + len)`, `None` when empty.
fn byte_range(
    gpa: GuestPhysAddr,
    len: usize,
) -> Result<Option<AddrRange<GuestPhysAddr>>, SpaceError> {
    if len == 0 {
        return Ok(None);
    }
    AddrRange::from_start_size(gpa, len)
        .map(Some)
        .ok_or(SpaceError::InvalidRange {
            start: gpa.as_usize(),
            size: len,
            problem: RangeProblem::Overflow,
        })
}

/// The 4 KiB pages touched by a non-empty byte range.
fn pages(range: AddrRange<GuestPhysAddr>) -> impl Iterator<Item = GuestPhysAddr> {
    let first = range.start().align_down(PAGE_SIZE_4K).as_usize();
    let last = range
        .last()
        .map_or(first, |l| l.align_down(PAGE_SIZE_4K).as_usize());
    (0..=(last - first) / PAGE_SIZE_4K).map(move |i| GuestPhysAddr::new(first + i * PAGE_SIZE_4K))
}

impl<F, M, A, I> Inner<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Checks that `range` lies in unowned RAM areas allowing `access`.
    pub(crate) fn check_ram(
        &self,
        range: AddrRange<GuestPhysAddr>,
        access: Access,
    ) -> Result<Vec<(AddrRange<GuestPhysAddr>, AreaFlags)>, SpaceError> {
        let pieces = self.check_access(range, access)?;
        let mut out = Vec::with_capacity(pieces.len());
        for (piece, flags, kind) in pieces {
            if !kind.is_ram() {
                return Err(SpaceError::NotRam { gpa: piece.start() });
            }
            if flags.owner != 0 {
                return Err(SpaceError::Owned { gpa: piece.start() });
            }
            out.push((piece, flags));
        }
        Ok(out)
    }

    /// The host address of `gpa` if mapped.
    fn host_of(&self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        self.st.table.translate(gpa).map(|t| t.hpa)
    }

    /// Copies guest bytes out (absent pages read as zeros). Ranges are checked.
    pub(crate) fn copy_out(&self, gpa: GuestPhysAddr, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let at = GuestPhysAddr::new(gpa.as_usize() + done);
            let n = (PAGE_SIZE_4K - at.align_offset(PAGE_SIZE_4K)).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match self.host_of(at) {
                Some(hpa) if read_phys(self.st.table.mapper(), hpa, chunk).is_ok() => {}
                _ => chunk.fill(0),
            }
            done += n;
        }
    }

    /// Copies bytes into guest pages made writable by [`Inner::make_writable`].
    pub(crate) fn copy_in(&self, gpa: GuestPhysAddr, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let at = GuestPhysAddr::new(gpa.as_usize() + done);
            let n = (PAGE_SIZE_4K - at.align_offset(PAGE_SIZE_4K)).min(data.len() - done);
            if let Some(hpa) = self.host_of(at) {
                let _ = write_phys(self.st.table.mapper(), hpa, &data[done..done + n]);
            }
            done += n;
        }
    }

    /// Makes every page of `range` present, private and writable, as guest writes
    /// would. All or nothing: copy-on-write frames are taken before anything changes,
    /// populated pages are unmapped again on failure.
    pub(crate) fn make_writable(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
    ) -> Result<(), SpaceError> {
        // Phase A: what each page needs.
        let mut absent = Vec::new();
        let mut copies = 0usize;
        let mut split_leaves = Vec::new();
        for page in pages(range) {
            match self.st.table.translate(page) {
                None => absent.push(page),
                Some(t) if t.attr.access.contains(Access::WRITE) => {}
                Some(t) if self.st.book.is_shared(t.hpa) => {
                    copies += 1;
                    if t.size != LeafSize::Size4K && !split_leaves.contains(&t.leaf_gpa) {
                        split_leaves.push(t.leaf_gpa);
                    }
                }
                Some(_) => {}
            }
        }
        // Phase B: frames for the copies, taken first; kept aside while populating.
        self.st
            .fill_reserve(copies + split_leaves.len(), range.start())?;
        let cow_frames = core::mem::take(&mut self.st.reserve);
        // Phase C: populate absent pages (4 KiB or 2 MiB as a fault would).
        let mut added = Vec::new();
        for page in absent {
            if self.st.table.translate(page).is_some() {
                continue;
            }
            let Some((area, flags, _)) = self.area_at(page) else {
                continue;
            };
            let attr = flags.attr;
            if let Err(e) = self
                .st
                .populate_one(page, attr, area)
                .map(|leaf| added.push(leaf))
            {
                self.st.rollback(&added);
                self.st.reserve = cow_frames;
                self.st.drain_reserve();
                return Err(e);
            }
        }
        // Phase D: copy shared pages and restore stale rights (cannot fail for lack of
        // frames now).
        self.st.reserve = cow_frames;
        let mut result = Ok(());
        for page in pages(range) {
            let (Some(t), Some((_, flags, _))) =
                (self.st.table.translate(page), self.area_at(page))
            else {
                continue;
            };
            let attr = flags.attr;
            if t.attr.access.contains(Access::WRITE) {
                continue;
            }
            let r = if self.st.book.is_shared(t.hpa) {
                self.st.cow_break(page, t, attr, true)
            } else {
                self.st.reprotect_leaf(t, attr, true)
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        self.st.drain_reserve();
        result
    }
}
