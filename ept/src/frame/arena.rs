//! [`HeapArena`]: a fixed pool of frames in heap memory, for host tests and benches.

use alloc::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ptr::NonNull;

use memory_set::{HostPhysAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

use super::{FrameAlloc, PhysMapper};

const FRAMES_PER_CHUNK: usize = PAGE_SIZE_2M / PAGE_SIZE_4K;
const WORDS_PER_CHUNK: usize = FRAMES_PER_CHUNK / 64;

/// A fixed-size pool of 4 KiB frames on the heap that pretends to be host-physical
/// memory starting at [`HeapArena::BASE`].
///
/// Cloning gives another handle to the same pool (it is both the allocator and the
/// [`PhysMapper`]). It counts frames in use ([`HeapArena::in_use`]) so tests can
/// check for leaks, injects allocation failures ([`HeapArena::fail_after`],
/// [`HeapArena::set_limit`]), and panics on double or foreign frees. 2 MiB blocks
/// come from wholly free 2 MiB-aligned chunks.
#[derive(Clone)]
pub struct HeapArena {
    shared: Rc<Shared>,
}

struct Shared {
    mem: NonNull<u8>,
    layout: Layout,
    frames: usize,
    state: RefCell<State>,
}

struct State {
    /// One bit per frame, 1 = in use (bits past `frames` are permanently set).
    used: Vec<u64>,
    /// Frames in use per 2 MiB chunk.
    chunk_used: Vec<u16>,
    /// Chunks handed out whole by `alloc_2m`.
    chunk_big: Vec<bool>,
    in_use: usize,
    allocations: usize,
    fail_after: Option<usize>,
    limit: Option<usize>,
    cursor: usize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: `mem` was allocated in `HeapArena::new` with exactly `layout`, and
        // this is the last handle (the `Rc` is being dropped).
        unsafe { dealloc(self.mem.as_ptr(), self.layout) };
    }
}

impl HeapArena {
    /// The pretend host-physical address of the first frame (1 GiB aligned, so
    /// offsets keep every alignment).
    pub const BASE: usize = 0x1_0000_0000;

    /// A pool of `frames` 4 KiB frames (at least one), zeroed.
    pub fn new(frames: usize) -> Self {
        let frames = frames.max(1);
        let chunks = frames.div_ceil(FRAMES_PER_CHUNK);
        let layout =
            Layout::from_size_align(chunks * PAGE_SIZE_2M, PAGE_SIZE_2M).expect("arena too large");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(mem) = NonNull::new(ptr) else {
            handle_alloc_error(layout)
        };
        let mut used = vec![0u64; chunks * WORDS_PER_CHUNK];
        for i in frames..chunks * FRAMES_PER_CHUNK {
            used[i / 64] |= 1 << (i % 64);
        }
        let mut chunk_used = vec![0u16; chunks];
        if let Some(last) = chunk_used.last_mut() {
            *last = (chunks * FRAMES_PER_CHUNK - frames) as u16;
        }
        Self {
            shared: Rc::new(Shared {
                mem,
                layout,
                frames,
                state: RefCell::new(State {
                    used,
                    chunk_used,
                    chunk_big: vec![false; chunks],
                    in_use: 0,
                    allocations: 0,
                    fail_after: None,
                    limit: None,
                    cursor: 0,
                }),
            }),
        }
    }

    /// The number of frames in the pool.
    pub fn capacity(&self) -> usize {
        self.shared.frames
    }

    /// 4 KiB frames currently handed out (a 2 MiB block counts 512).
    pub fn in_use(&self) -> usize {
        self.shared.state.borrow().in_use
    }

    /// Frames not handed out.
    pub fn free_frames(&self) -> usize {
        self.capacity() - self.in_use()
    }

    /// Successful allocations so far (4 KiB and 2 MiB), for tests.
    pub fn allocations(&self) -> usize {
        self.shared.state.borrow().allocations
    }

    /// After `n` more successful allocations, every allocation fails (until
    /// [`HeapArena::clear_failures`]).
    pub fn fail_after(&self, n: usize) {
        self.shared.state.borrow_mut().fail_after = Some(n);
    }

    /// Allocations fail while they would raise [`HeapArena::in_use`] above `limit`
    /// (`None`: no limit).
    pub fn set_limit(&self, limit: Option<usize>) {
        self.shared.state.borrow_mut().limit = limit;
    }

    /// Ends failure injection ([`HeapArena::fail_after`] and [`HeapArena::set_limit`]).
    pub fn clear_failures(&self) {
        let mut s = self.shared.state.borrow_mut();
        s.fail_after = None;
        s.limit = None;
    }

    /// Whether `hpa` lies in the pool.
    pub fn contains(&self, hpa: HostPhysAddr) -> bool {
        hpa.as_usize()
            .checked_sub(Self::BASE)
            .is_some_and(|off| off < self.shared.frames * PAGE_SIZE_4K)
    }

    /// Whether the frame holding `hpa` is handed out.
    pub fn is_allocated(&self, hpa: HostPhysAddr) -> bool {
        if !self.contains(hpa) {
            return false;
        }
        let i = (hpa.as_usize() - Self::BASE) / PAGE_SIZE_4K;
        self.shared.state.borrow().used[i / 64] & (1 << (i % 64)) != 0
    }

    fn frame_index(&self, hpa: HostPhysAddr, align: usize, what: &str) -> usize {
        assert!(
            self.contains(hpa) && hpa.as_usize().is_multiple_of(align),
            "{what}: {hpa:?} is not an arena frame"
        );
        (hpa.as_usize() - Self::BASE) / PAGE_SIZE_4K
    }

    fn admit(s: &mut State, frames: usize) -> bool {
        if s.fail_after == Some(0) {
            return false;
        }
        if s.limit.is_some_and(|l| s.in_use + frames > l) {
            return false;
        }
        true
    }

    fn account(s: &mut State, frames: usize) {
        if let Some(n) = s.fail_after.as_mut() {
            *n -= 1;
        }
        s.in_use += frames;
        s.allocations += 1;
    }

    /// Once every frame is back, the next 4 KiB allocation searches from the first
    /// chunk again: a pool that was emptied hands out the same frames in the same order
    /// whatever was allocated before (benchmarks give every contender the same memory).
    fn rewind_when_empty(s: &mut State) {
        if s.in_use == 0 {
            s.cursor = 0;
        }
    }

    #[cfg(debug_assertions)]
    fn poison(&self, hpa: HostPhysAddr, len: usize) {
        let p = self.phys_to_virt(hpa);
        // SAFETY: `hpa..hpa + len` lies in the arena allocation (checked by callers),
        // and no reference to arena memory exists outside the mapper contract.
        unsafe { core::ptr::write_bytes(p, 0xa5, len) };
    }

    #[cfg(not(debug_assertions))]
    fn poison(&self, _hpa: HostPhysAddr, _len: usize) {}
}

impl FrameAlloc for HeapArena {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        let hpa = {
            let mut s = self.shared.state.borrow_mut();
            if !Self::admit(&mut s, 1) {
                return None;
            }
            let chunks = s.chunk_used.len();
            let start = s.cursor;
            let chunk = (0..chunks)
                .map(|k| (start + k) % chunks)
                .find(|&c| !s.chunk_big[c] && (s.chunk_used[c] as usize) < FRAMES_PER_CHUNK)?;
            let w0 = chunk * WORDS_PER_CHUNK;
            let w = (w0..w0 + WORDS_PER_CHUNK).find(|&w| s.used[w] != u64::MAX)?;
            let bit = s.used[w].trailing_ones() as usize;
            s.used[w] |= 1 << bit;
            s.chunk_used[chunk] += 1;
            s.cursor = chunk;
            Self::account(&mut s, 1);
            HostPhysAddr::new(Self::BASE + (w * 64 + bit) * PAGE_SIZE_4K)
        };
        self.poison(hpa, PAGE_SIZE_4K);
        Some(hpa)
    }

    fn dealloc_frame(&mut self, frame: HostPhysAddr) {
        let i = self.frame_index(frame, PAGE_SIZE_4K, "dealloc_frame");
        {
            let mut s = self.shared.state.borrow_mut();
            let chunk = i / FRAMES_PER_CHUNK;
            assert!(
                !s.chunk_big[chunk],
                "dealloc_frame: {frame:?} is inside a 2 MiB block"
            );
            assert!(
                s.used[i / 64] & (1 << (i % 64)) != 0,
                "double free of {frame:?}"
            );
            s.used[i / 64] &= !(1 << (i % 64));
            s.chunk_used[chunk] -= 1;
            s.in_use -= 1;
            Self::rewind_when_empty(&mut s);
        }
        self.poison(frame, PAGE_SIZE_4K);
    }

    fn alloc_2m(&mut self) -> Option<HostPhysAddr> {
        let hpa = {
            let mut s = self.shared.state.borrow_mut();
            if !Self::admit(&mut s, FRAMES_PER_CHUNK) {
                return None;
            }
            // Take chunks from the top so 4 KiB allocations (from the bottom) leave
            // whole chunks free for as long as possible.
            let chunk = (0..s.chunk_used.len())
                .rev()
                .find(|&c| s.chunk_used[c] == 0 && !s.chunk_big[c])?;
            s.chunk_big[chunk] = true;
            s.chunk_used[chunk] = FRAMES_PER_CHUNK as u16;
            let w0 = chunk * WORDS_PER_CHUNK;
            s.used[w0..w0 + WORDS_PER_CHUNK].fill(u64::MAX);
            Self::account(&mut s, FRAMES_PER_CHUNK);
            HostPhysAddr::new(Self::BASE + chunk * PAGE_SIZE_2M)
        };
        self.poison(hpa, PAGE_SIZE_2M);
        Some(hpa)
    }

    fn dealloc_2m(&mut self, block: HostPhysAddr) {
        let i = self.frame_index(block, PAGE_SIZE_2M, "dealloc_2m");
        {
            let mut s = self.shared.state.borrow_mut();
            let chunk = i / FRAMES_PER_CHUNK;
            assert!(
                s.chunk_big[chunk],
                "dealloc_2m: {block:?} is not an allocated 2 MiB block"
            );
            s.chunk_big[chunk] = false;
            s.chunk_used[chunk] = 0;
            let w0 = chunk * WORDS_PER_CHUNK;
            s.used[w0..w0 + WORDS_PER_CHUNK].fill(0);
            s.in_use -= FRAMES_PER_CHUNK;
            Self::rewind_when_empty(&mut s);
        }
        self.poison(block, PAGE_SIZE_2M);
    }
}

// SAFETY: `phys_to_virt` maps every pool address (exactly those `is_mapped` accepts,
// and every frame this arena hands out) into the single heap allocation owned by the
// shared `Rc`, which lives as long as any handle; frame offsets keep 4 KiB alignment
// because the allocation is 2 MiB aligned. Clones share the allocation.
unsafe impl PhysMapper for HeapArena {
    #[inline]
    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        self.shared
            .mem
            .as_ptr()
            .wrapping_add(hpa.as_usize().wrapping_sub(Self::BASE))
    }

    #[inline]
    fn is_mapped(&self, hpa: HostPhysAddr) -> bool {
        self.contains(hpa)
    }
}

impl core::fmt::Debug for HeapArena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeapArena")
            .field("capacity", &self.capacity())
            .field("in_use", &self.in_use())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{PhysAccessError, copy_frame, read_phys, write_phys, zero_frame};

    #[test]
    fn alloc_free_counts() {
        let mut a = HeapArena::new(3);
        let f: Vec<_> = (0..3).map(|_| a.alloc_frame().unwrap()).collect();
        assert!(a.alloc_frame().is_none());
        assert_eq!(a.in_use(), 3);
        assert!(
            f.iter()
                .all(|h| h.as_usize() % PAGE_SIZE_4K == 0 && a.contains(*h))
        );
        let mut sorted = f.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 3);
        a.dealloc_frame(f[1]);
        assert!(!a.is_allocated(f[1]));
        assert_eq!(a.alloc_frame(), Some(f[1]));
        for h in f {
            a.dealloc_frame(h);
        }
        assert_eq!(a.in_use(), 0);
    }

    #[test]
    fn an_emptied_pool_hands_out_the_same_frames_again() {
        let mut a = HeapArena::new(3 * FRAMES_PER_CHUNK);
        let take = |a: &mut HeapArena, n: usize| -> Vec<_> {
            (0..n).map(|_| a.alloc_frame().unwrap()).collect()
        };
        let first = take(&mut a, 10);
        // Fill the first chunk and start the second: the search now starts there.
        let more = take(&mut a, FRAMES_PER_CHUNK);
        for h in first.iter().chain(&more) {
            a.dealloc_frame(*h);
        }
        assert_eq!(a.in_use(), 0);
        assert_eq!(
            take(&mut a, 10),
            first,
            "the same frames, in the same order"
        );
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut a = HeapArena::new(2);
        let f = a.alloc_frame().unwrap();
        a.dealloc_frame(f);
        a.dealloc_frame(f);
    }

    #[test]
    #[should_panic(expected = "not an arena frame")]
    fn foreign_free_panics() {
        let mut a = HeapArena::new(2);
        a.dealloc_frame(HostPhysAddr::new(0x1000));
    }

    #[test]
    fn two_mib_blocks() {
        let mut a = HeapArena::new(3 * 512);
        let b = a.alloc_2m().unwrap();
        assert_eq!(b.as_usize() % PAGE_SIZE_2M, 0);
        assert_eq!(a.in_use(), 512);
        let f = a.alloc_frame().unwrap();
        assert!(f.as_usize() < b.as_usize() || f.as_usize() >= b.as_usize() + PAGE_SIZE_2M);
        let b2 = a.alloc_2m().unwrap();
        assert_ne!(b, b2);
        // The chunk holding `f` is partly used: no third block.
        assert!(a.alloc_2m().is_none());
        a.dealloc_2m(b);
        a.dealloc_2m(b2);
        a.dealloc_frame(f);
        assert_eq!(a.in_use(), 0);
        // A partial last chunk never yields a block.
        let mut small = HeapArena::new(511);
        assert!(small.alloc_2m().is_none());
    }

    #[test]
    #[should_panic(expected = "inside a 2 MiB block")]
    fn free_4k_inside_block_panics() {
        let mut a = HeapArena::new(512);
        let b = a.alloc_2m().unwrap();
        a.dealloc_frame(HostPhysAddr::new(b.as_usize() + PAGE_SIZE_4K));
    }

    #[test]
    fn failure_injection() {
        let mut a = HeapArena::new(16);
        a.fail_after(2);
        assert!(a.alloc_frame().is_some());
        assert!(a.alloc_frame().is_some());
        assert!(a.alloc_frame().is_none());
        a.clear_failures();
        assert!(a.alloc_frame().is_some());
        a.set_limit(Some(4));
        assert!(a.alloc_frame().is_some());
        assert!(a.alloc_frame().is_none());
        assert_eq!(a.in_use(), 4);
        assert_eq!(a.allocations(), 4);
    }

    #[test]
    fn helpers_move_bytes_and_check_bounds() {
        let mut a = HeapArena::new(4);
        let f = a.alloc_frame().unwrap();
        let g = a.alloc_frame().unwrap();
        zero_frame(&a, f).unwrap();
        let mut buf = [1u8; 8];
        read_phys(&a, HostPhysAddr::new(f.as_usize() + 8), &mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
        write_phys(&a, HostPhysAddr::new(f.as_usize() + 4090), b"hello!").unwrap();
        copy_frame(&a, g, f).unwrap();
        let mut out = [0u8; 6];
        read_phys(&a, HostPhysAddr::new(g.as_usize() + 4090), &mut out).unwrap();
        assert_eq!(&out, b"hello!");
        assert_eq!(
            write_phys(&a, HostPhysAddr::new(f.as_usize() + 4091), b"hello!"),
            Err(PhysAccessError::CrossesFrame {
                hpa: HostPhysAddr::new(f.as_usize() + 4091),
                len: 6
            })
        );
        assert_eq!(
            zero_frame(&a, HostPhysAddr::new(0x1000)),
            Err(PhysAccessError::NotMapped {
                hpa: HostPhysAddr::new(0x1000)
            })
        );
        assert!(matches!(
            zero_frame(&a, HostPhysAddr::new(f.as_usize() + 1)),
            Err(PhysAccessError::Unaligned { .. })
        ));
        let top = HostPhysAddr::new(HeapArena::BASE + 4 * PAGE_SIZE_4K);
        assert!(read_phys(&a, top, &mut out).is_err());
    }
}
