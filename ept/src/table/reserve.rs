//! Frames taken before a change starts, so a change either has every frame it needs
//! or does not begin ("on error nothing changed").

use alloc::vec::Vec;

use memory_set::HostPhysAddr;

use super::raw::take_frame;
use crate::frame::{FrameAlloc, PhysMapper};
use crate::table::TableError;

/// The frames reserved for one operation, handed out in the order they were taken
/// (so a range's tables lie in ascending addresses, as the allocator gave them, and
/// a walk in GPA order streams through memory forwards). Small reservations (the
/// common single-page case) do not touch the heap.
pub(crate) struct Reserve {
    small: [HostPhysAddr; 4],
    small_len: usize,
    large: Vec<HostPhysAddr>,
    /// How many of the frames (small ones first) were handed out.
    taken: usize,
}

impl Reserve {
    pub(crate) const fn empty() -> Self {
        Self {
            small: [HostPhysAddr::new(0); 4],
            small_len: 0,
            large: Vec::new(),
            taken: 0,
        }
    }

    fn push(&mut self, f: HostPhysAddr) {
        if self.small_len < self.small.len() && self.large.is_empty() {
            self.small[self.small_len] = f;
            self.small_len += 1;
        } else {
            self.large.push(f);
        }
    }

    /// The next frame in the order taken.
    fn pop(&mut self) -> Option<HostPhysAddr> {
        let i = self.taken;
        let f = if i < self.small_len {
            self.small[i]
        } else {
            *self.large.get(i - self.small_len)?
        };
        self.taken += 1;
        Some(f)
    }

    /// Reserves `counts[l]` frames for tables at level `l` (1..=3), highest level
    /// first; on failure returns everything taken and names the level.
    pub(crate) fn fill(
        alloc: &mut (impl FrameAlloc + ?Sized),
        mapper: &impl PhysMapper,
        counts: [usize; 4],
    ) -> Result<Self, TableError> {
        let mut r = Self::empty();
        let total: usize = counts.iter().sum();
        if total > r.small.len() {
            r.large.reserve(total - r.small.len());
        }
        for level in (1..=3u8).rev() {
            for _ in 0..counts[level as usize] {
                match take_frame(alloc, mapper, level) {
                    Ok(f) => r.push(f),
                    Err(e) => {
                        r.release(alloc);
                        return Err(e);
                    }
                }
            }
        }
        Ok(r)
    }

    /// Gives back whatever was not used (never linked into a table).
    pub(crate) fn release(mut self, alloc: &mut (impl FrameAlloc + ?Sized)) {
        while let Some(f) = self.pop() {
            alloc.dealloc_frame(f);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.taken == self.small_len + self.large.len()
    }
}

impl FrameAlloc for Reserve {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        self.pop()
    }

    fn dealloc_frame(&mut self, frame: HostPhysAddr) {
        self.push(frame);
    }
}
