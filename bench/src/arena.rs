//! Host memory for every contender: one `ept::HeapArena` (the pool our tables use in host
//! tests), pre-faulted, shared by ours, the anchors and the floors, so that allocation and
//! zeroing cost the same for all. Addresses are the arena's pretend host-physical ones;
//! the anchors reach them with the arena's constant physical-to-virtual offset.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use ept::{FrameAlloc, HeapArena, PhysMapper};
use memory_set::HostPhysAddr;

/// 4 KiB.
pub const SIZE_4K: usize = 0x1000;
/// 2 MiB.
pub const SIZE_2M: usize = 0x20_0000;

static ARENA_KIB: AtomicUsize = AtomicUsize::new(0);
static ARENA_HUGE_KIB: AtomicUsize = AtomicUsize::new(0);

/// KiB of the arenas made so far, and how much of it the kernel backed with 2 MiB pages
/// (transparent huge pages: with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, as
/// `cargo xtask bench` runs it, glibc asks for them on every block it maps).
pub fn huge_page_share() -> (usize, usize) {
    (
        ARENA_KIB.load(Ordering::Relaxed),
        ARENA_HUGE_KIB.load(Ordering::Relaxed),
    )
}

/// This process's anonymous memory on transparent huge pages, in KiB (0 where Linux
/// does not say).
fn anon_huge_kib() -> usize {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A cheap `Clone` handle on one pool.
#[derive(Clone)]
pub struct Arena {
    heap: RefCell<HeapArena>,
}

impl Arena {
    /// A pool of `blocks_2m` 2 MiB blocks, every page already touched (so page faults of
    /// the host do not land inside measurements).
    /// Counts toward [`huge_page_share`].
    pub fn new(blocks_2m: usize) -> Self {
        let before = anon_huge_kib();
        let heap = HeapArena::new(blocks_2m.max(1) * 512);
        let arena = Arena {
            heap: RefCell::new(heap),
        };
        for i in 0..arena.capacity() {
            arena.zero(HeapArena::BASE + i * SIZE_4K, SIZE_4K);
        }
        let huge = anon_huge_kib().saturating_sub(before);
        ARENA_KIB.fetch_add(arena.capacity() * 4, Ordering::Relaxed);
        ARENA_HUGE_KIB.fetch_add(huge.min(arena.capacity() * 4), Ordering::Relaxed);
        arena
    }

    /// Another handle on the same pool, as our code takes it.
    pub fn heap(&self) -> HeapArena {
        self.heap.borrow().clone()
    }

    /// 4 KiB frames in the pool.
    pub fn capacity(&self) -> usize {
        self.heap.borrow().capacity()
    }

    /// `virtual = physical + offset` for every pool address (wrapping arithmetic).
    pub fn virt_offset(&self) -> usize {
        let base = self.ptr(HeapArena::BASE, 1) as usize;
        base.wrapping_sub(HeapArena::BASE)
    }

    /// A 4 KiB frame (contents unspecified), or `None` when the pool is exhausted.
    pub fn alloc_4k(&self) -> Option<usize> {
        self.heap
            .borrow_mut()
            .alloc_frame()
            .map(HostPhysAddr::as_usize)
    }

    /// Returns a 4 KiB frame.
    pub fn free_4k(&self, pa: usize) {
        self.heap.borrow_mut().dealloc_frame(HostPhysAddr::new(pa));
    }

    /// A 2 MiB-aligned 2 MiB block, or `None`.
    pub fn alloc_2m(&self) -> Option<usize> {
        self.heap
            .borrow_mut()
            .alloc_2m()
            .map(HostPhysAddr::as_usize)
    }

    /// Returns a 2 MiB block.
    pub fn free_2m(&self, pa: usize) {
        self.heap.borrow_mut().dealloc_2m(HostPhysAddr::new(pa));
    }

    /// 4 KiB frames currently handed out (a 2 MiB block counts 512).
    pub fn in_use(&self) -> usize {
        self.heap.borrow().in_use()
    }

    /// The host pointer of `[pa, pa + len)`, which must lie inside the pool.
    fn ptr(&self, pa: usize, len: usize) -> *mut u8 {
        let heap = self.heap.borrow();
        assert!(
            len > 0
                && heap.contains(HostPhysAddr::new(pa))
                && heap.contains(HostPhysAddr::new(pa + (len - 1))),
            "[{pa:#x}, +{len:#x}) is not inside the arena"
        );
        heap.phys_to_virt(HostPhysAddr::new(pa))
    }

    /// Zeroes `size` bytes at `pa`.
    pub fn zero(&self, pa: usize, size: usize) {
        let p = self.ptr(pa, size);
        // SAFETY: `ptr` checked that `[pa, pa + size)` lies in the pool, which the
        // `PhysMapper` contract of `HeapArena` maps to one live heap allocation; nothing
        // holds Rust references into it.
        unsafe { std::ptr::write_bytes(p, 0, size) }
    }

    /// Writes `entries` at the start of the 4 KiB frame `pa` (at most 512).
    pub fn write_entries(&self, pa: usize, entries: impl Iterator<Item = u64>) {
        assert!(pa.is_multiple_of(SIZE_4K));
        let table = self.ptr(pa, SIZE_4K).cast::<u64>();
        for (i, e) in entries.take(512).enumerate() {
            // SAFETY: `i < 512` and the 4 KiB frame at `pa` lies in the pool (see `zero`);
            // the pointer is 4 KiB aligned, so `u64` accesses are aligned.
            unsafe { table.wrapping_add(i).write(e) }
        }
    }

    /// Writes entry `i` (< 512) of the 4 KiB frame `pa`.
    pub fn write_entry(&self, pa: usize, i: usize, value: u64) {
        assert!(i < 512 && pa.is_multiple_of(SIZE_4K));
        let table = self.ptr(pa, SIZE_4K).cast::<u64>();
        // SAFETY: as in `write_entries`.
        unsafe { table.wrapping_add(i).write(value) }
    }

    /// Reads entry `i` (< 512) of the 4 KiB frame `pa`.
    #[cfg(test)]
    pub fn read_entry(&self, pa: usize, i: usize) -> u64 {
        assert!(i < 512 && pa.is_multiple_of(SIZE_4K));
        let table = self.ptr(pa, SIZE_4K).cast::<u64>();
        // SAFETY: as in `write_entries`.
        unsafe { table.wrapping_add(i).read() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_distinct_aligned_and_returned() {
        let a = Arena::new(2);
        let mut got: Vec<usize> = (0..600).map(|_| a.alloc_4k().unwrap()).collect();
        assert_eq!(a.in_use(), 600);
        assert!(got.iter().all(|p| p % SIZE_4K == 0));
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 600);
        assert!(a.alloc_2m().is_none(), "both blocks hold 4 KiB frames");
        for p in got {
            a.free_4k(p);
        }
        assert_eq!(a.in_use(), 0);
        let blocks = [a.alloc_2m().unwrap(), a.alloc_2m().unwrap()];
        assert!(blocks.iter().all(|b| b % SIZE_2M == 0) && blocks[0] != blocks[1]);
        assert_eq!(a.in_use(), 1024);
    }

    #[test]
    fn zero_and_entries_round_trip_and_offset_is_consistent() {
        let a = Arena::new(1);
        let f = a.alloc_4k().unwrap();
        a.write_entries(f, [7u64, 9].into_iter());
        assert_eq!(a.read_entry(f, 1), 9);
        a.write_entry(f, 511, 5);
        assert_eq!(a.read_entry(f, 511), 5);
        a.zero(f, SIZE_4K);
        assert_eq!(a.read_entry(f, 1), 0);
        assert_eq!(
            a.ptr(f, 8) as usize,
            f.wrapping_add(a.virt_offset()),
            "one constant offset maps the pool"
        );
    }

    #[test]
    #[should_panic(expected = "not inside the arena")]
    fn foreign_address_is_refused() {
        Arena::new(1).zero(0x1000, SIZE_4K);
    }
}
