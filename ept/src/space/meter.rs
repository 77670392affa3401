//! The allocator an address space hands to its table: quota enforcement, a reserve of
//! frames taken up front, and a record of why an allocation was refused.

use alloc::vec::Vec;

use memory_set::HostPhysAddr;

use super::error::OomReason;
use crate::frame::FrameAlloc;

/// Wraps the space's allocator for one operation.
///
/// Frames come from `reserve` first (frames taken before the operation started, so
/// the operation cannot run out half way), then from the real allocator while the
/// guest stays within `budget` more frames. A refusal is remembered in `refused` so
/// the caller can tell a quota refusal from an empty host allocator.
pub(crate) struct Meter<'a, A: FrameAlloc> {
    pub(crate) alloc: &'a mut A,
    pub(crate) reserve: &'a mut Vec<HostPhysAddr>,
    /// Frames that may still be taken from `alloc` without passing the quota.
    pub(crate) budget: usize,
    /// 4 KiB frames taken from `alloc` (not from the reserve) during the operation.
    pub(crate) taken: usize,
    /// Why the last allocation failed, if one did.
    pub(crate) refused: Option<OomReason>,
    /// The quota and usage at the start, to describe a quota refusal.
    pub(crate) quota: (usize, usize),
}

impl<'a, A: FrameAlloc> Meter<'a, A> {
    /// A meter allowing `quota - used` more frames.
    pub(crate) fn new(
        alloc: &'a mut A,
        reserve: &'a mut Vec<HostPhysAddr>,
        quota: usize,
        used: usize,
    ) -> Self {
        Self {
            alloc,
            reserve,
            budget: quota.saturating_sub(used),
            taken: 0,
            refused: None,
            quota: (quota, used),
        }
    }

    fn quota_reason(&self) -> OomReason {
        OomReason::Quota {
            quota_frames: self.quota.0,
            used_frames: self.quota.1 + self.taken,
        }
    }

    /// Why the last allocation failed (quota or host), defaulting to the host.
    pub(crate) fn reason(&self) -> OomReason {
        self.refused.unwrap_or(OomReason::HostFrames)
    }

    /// Takes `n` frames from the allocator into the reserve, all or nothing.
    pub(crate) fn fill_reserve(&mut self, n: usize) -> Result<(), OomReason> {
        if n > self.budget {
            return Err(self.quota_reason());
        }
        let mark = self.reserve.len();
        for _ in 0..n {
            match self.alloc.alloc_frame() {
                Some(f) => self.reserve.push(f),
                None => {
                    for f in self.reserve.drain(mark..) {
                        self.alloc.dealloc_frame(f);
                    }
                    return Err(OomReason::HostFrames);
                }
            }
        }
        self.budget -= n;
        self.taken += n;
        Ok(())
    }
}

impl<A: FrameAlloc> FrameAlloc for Meter<'_, A> {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        if let Some(f) = self.reserve.pop() {
            return Some(f);
        }
        if self.budget == 0 {
            self.refused = Some(self.quota_reason());
            return None;
        }
        match self.alloc.alloc_frame() {
            Some(f) => {
                self.budget -= 1;
                self.taken += 1;
                Some(f)
            }
            None => {
                self.refused = Some(OomReason::HostFrames);
                None
            }
        }
    }

    fn dealloc_frame(&mut self, frame: HostPhysAddr) {
        self.alloc.dealloc_frame(frame);
        self.budget += 1;
        self.taken = self.taken.saturating_sub(1);
    }

    fn alloc_2m(&mut self) -> Option<HostPhysAddr> {
        const N: usize = memory_set::PAGE_SIZE_2M / memory_set::PAGE_SIZE_4K;
        if self.budget < N {
            self.refused = Some(self.quota_reason());
            return None;
        }
        match self.alloc.alloc_2m() {
            Some(f) => {
                self.budget -= N;
                self.taken += N;
                Some(f)
            }
            None => {
                self.refused = Some(OomReason::HostFrames);
                None
            }
        }
    }

    fn dealloc_2m(&mut self, frame: HostPhysAddr) {
        const N: usize = memory_set::PAGE_SIZE_2M / memory_set::PAGE_SIZE_4K;
        self.alloc.dealloc_2m(frame);
        self.budget += N;
        self.taken = self.taken.saturating_sub(N);
    }
}

/// An allocator over the reserve alone: frames freed into it stay reserved for the
/// rest of the operation (used to rebuild a table path that an unmap just freed,
/// without asking the real allocator again).
pub(crate) struct ReserveSink<'a>(pub(crate) &'a mut Vec<HostPhysAddr>);

impl FrameAlloc for ReserveSink<'_> {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        self.0.pop()
    }

    fn dealloc_frame(&mut self, frame: HostPhysAddr) {
        self.0.push(frame);
    }
}
