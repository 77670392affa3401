//! The host frame allocator: a bitmap over host-physical memory, grouped in 2 MiB
//! chunks so that whole aligned 2 MiB blocks can be handed out for huge stage-2 leaves.
//!
//! 4 KiB allocations prefer chunks that are already partly used, which keeps whole
//! chunks free for 2 MiB allocations; freed frames rejoin their chunk, so a chunk whose
//! 512 frames all come back is a 2 MiB block again.
//!
//! Costs: an allocation is O(1) while the current chunk has room, otherwise one scan of
//! the per-chunk counters (one `u16` per 2 MiB of memory).

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// Size of a frame.
pub const FRAME_SIZE: u64 = 4096;
/// Size of a chunk (and of a huge block).
pub const CHUNK_SIZE: u64 = 2 << 20;
const FRAMES_PER_CHUNK: usize = 512;
const WORDS_PER_CHUNK: usize = FRAMES_PER_CHUNK / 64;

/// A misuse of the allocator (always a hypervisor bug, never guest-triggered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The address is not inside managed memory or not aligned.
    NotManaged {
        /// The address.
        addr: u64,
    },
    /// The frame is already free.
    DoubleFree {
        /// The address.
        addr: u64,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotManaged { addr } => write!(f, "frame {addr:#x} is not managed memory"),
            Self::DoubleFree { addr } => write!(f, "frame {addr:#x} freed twice"),
        }
    }
}

/// Bitmap frame allocator over a set of host-physical ranges.
pub struct FrameAllocator {
    base: u64,
    /// One bit per frame, 1 = free.
    bits: Vec<u64>,
    /// Free frames per chunk.
    free_in_chunk: Vec<u16>,
    /// Chunk tried first for 4 KiB frames.
    hint: usize,
    free: usize,
    total: usize,
}

impl FrameAllocator {
    /// Manages the frames that lie entirely inside one of `ranges` (`[start, end)`).
    pub fn new(ranges: &[(u64, u64)]) -> Self {
        let base = ranges.iter().map(|r| r.0).min().unwrap_or(0) & !(CHUNK_SIZE - 1);
        let top = ranges.iter().map(|r| r.1).max().unwrap_or(0);
        let chunks = top.saturating_sub(base).div_ceil(CHUNK_SIZE) as usize;
        let mut this = Self {
            base,
            bits: vec![0; chunks * WORDS_PER_CHUNK],
            free_in_chunk: vec![0; chunks],
            hint: 0,
            free: 0,
            total: 0,
        };
        for &(start, end) in ranges {
            let mut frame = start.div_ceil(FRAME_SIZE) * FRAME_SIZE;
            while frame + FRAME_SIZE <= end {
                let index = ((frame - base) / FRAME_SIZE) as usize;
                if this.bits[index / 64] & (1 << (index % 64)) == 0 {
                    this.bits[index / 64] |= 1 << (index % 64);
                    this.free_in_chunk[index / FRAMES_PER_CHUNK] += 1;
                    this.free += 1;
                    this.total += 1;
                }
                frame += FRAME_SIZE;
            }
        }
        this
    }

    /// Frames managed in total.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Frames currently handed out.
    pub fn in_use(&self) -> usize {
        self.total - self.free
    }

    /// Frames currently free.
    pub fn free(&self) -> usize {
        self.free
    }

    fn chunk_with_room(&self) -> Option<usize> {
        let count = |c: &usize| self.free_in_chunk[*c];
        if self.free_in_chunk.get(self.hint).is_some_and(|&f| f > 0) {
            return Some(self.hint);
        }
        let chunks = 0..self.free_in_chunk.len();
        chunks
            .clone()
            .find(|c| (1..FRAMES_PER_CHUNK as u16).contains(&count(c)))
            .or_else(|| chunks.clone().find(|c| count(c) > 0))
    }

    /// Allocates one 4 KiB frame.
    pub fn alloc_frame(&mut self) -> Option<u64> {
        let chunk = self.chunk_with_room()?;
        self.hint = chunk;
        let words = &mut self.bits[chunk * WORDS_PER_CHUNK..(chunk + 1) * WORDS_PER_CHUNK];
        let (w, word) = words.iter_mut().enumerate().find(|(_, w)| **w != 0)?;
        let bit = word.trailing_zeros() as usize;
        *word &= !(1 << bit);
        self.free_in_chunk[chunk] -= 1;
        self.free -= 1;
        let index = chunk * FRAMES_PER_CHUNK + w * 64 + bit;
        Some(self.base + index as u64 * FRAME_SIZE)
    }

    /// Allocates a 2 MiB-aligned block of 512 contiguous frames.
    pub fn alloc_2m(&mut self) -> Option<u64> {
        let chunk = (0..self.free_in_chunk.len())
            .rev()
            .find(|&c| usize::from(self.free_in_chunk[c]) == FRAMES_PER_CHUNK)?;
        self.bits[chunk * WORDS_PER_CHUNK..(chunk + 1) * WORDS_PER_CHUNK].fill(0);
        self.free_in_chunk[chunk] = 0;
        self.free -= FRAMES_PER_CHUNK;
        Some(self.base + chunk as u64 * CHUNK_SIZE)
    }

    fn index_of(&self, addr: u64) -> Result<usize, FrameError> {
        let index = addr
            .checked_sub(self.base)
            .filter(|off| off % FRAME_SIZE == 0)
            .map(|off| (off / FRAME_SIZE) as usize)
            .filter(|&i| i < self.bits.len() * 64)
            .ok_or(FrameError::NotManaged { addr })?;
        Ok(index)
    }

    /// Returns a 4 KiB frame.
    pub fn dealloc_frame(&mut self, addr: u64) -> Result<(), FrameError> {
        let index = self.index_of(addr)?;
        let mask = 1u64 << (index % 64);
        if self.bits[index / 64] & mask != 0 {
            return Err(FrameError::DoubleFree { addr });
        }
        self.bits[index / 64] |= mask;
        self.free_in_chunk[index / FRAMES_PER_CHUNK] += 1;
        self.free += 1;
        Ok(())
    }

    /// Returns a 2 MiB block (all of whose frames must be allocated).
    pub fn dealloc_2m(&mut self, addr: u64) -> Result<(), FrameError> {
        if !addr.is_multiple_of(CHUNK_SIZE) {
            return Err(FrameError::NotManaged { addr });
        }
        let first = self.index_of(addr)?;
        let words = first / 64..first / 64 + WORDS_PER_CHUNK;
        if self.bits[words.clone()].iter().any(|&w| w != 0) {
            return Err(FrameError::DoubleFree { addr });
        }
        self.bits[words].fill(u64::MAX);
        self.free_in_chunk[first / FRAMES_PER_CHUNK] = FRAMES_PER_CHUNK as u16;
        self.free += FRAMES_PER_CHUNK;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn counts_only_whole_frames_inside_ranges() {
        let a = FrameAllocator::new(&[(0x1000 + 5, 0x5000), (4 * MB, 6 * MB)]);
        // [0x2000, 0x5000) = 3 frames, plus 512.
        assert_eq!(a.total(), 3 + 512);
        assert_eq!(a.in_use(), 0);
    }

    #[test]
    fn frames_are_unique_aligned_and_come_back() {
        let mut a = FrameAllocator::new(&[(2 * MB, 6 * MB)]);
        let mut got = Vec::new();
        while let Some(f) = a.alloc_frame() {
            assert_eq!(f % FRAME_SIZE, 0);
            assert!((2 * MB..6 * MB).contains(&f));
            got.push(f);
        }
        assert_eq!(got.len(), 1024);
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1024);
        assert_eq!(a.alloc_2m(), None);
        for f in got {
            a.dealloc_frame(f).unwrap();
        }
        assert_eq!(a.in_use(), 0);
        // Whole chunks are whole again.
        assert!(a.alloc_2m().is_some());
        assert!(a.alloc_2m().is_some());
        assert_eq!(a.alloc_2m(), None);
    }

    #[test]
    fn small_frames_prefer_partial_chunks() {
        let mut a = FrameAllocator::new(&[(0, 8 * MB)]);
        let f = a.alloc_frame().unwrap();
        for _ in 0..100 {
            let g = a.alloc_frame().unwrap();
            assert_eq!(g / CHUNK_SIZE, f / CHUNK_SIZE);
        }
        // Three whole chunks remain.
        assert!(a.alloc_2m().is_some());
        assert!(a.alloc_2m().is_some());
        assert!(a.alloc_2m().is_some());
        assert_eq!(a.alloc_2m(), None);
    }

    #[test]
    fn misuse_is_reported() {
        let mut a = FrameAllocator::new(&[(2 * MB, 4 * MB)]);
        let f = a.alloc_frame().unwrap();
        a.dealloc_frame(f).unwrap();
        assert_eq!(a.dealloc_frame(f), Err(FrameError::DoubleFree { addr: f }));
        assert_eq!(
            a.dealloc_frame(f + 1),
            Err(FrameError::NotManaged { addr: f + 1 })
        );
        assert_eq!(
            a.dealloc_frame(64 * MB),
            Err(FrameError::NotManaged { addr: 64 * MB })
        );
        let b = a.alloc_2m().unwrap();
        assert_eq!(a.in_use(), 512);
        a.dealloc_2m(b).unwrap();
        assert_eq!(a.dealloc_2m(b), Err(FrameError::DoubleFree { addr: b }));
        assert_eq!(a.in_use(), 0);
    }
}
