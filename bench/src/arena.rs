//! Host memory for the anchors' page tables and for the floors: one big 2 MiB-aligned heap
//! block, pre-faulted, handed out as 4 KiB frames and 2 MiB blocks. A "physical" address
//! here is the host virtual address itself (offset 0), which is what `OffsetPageTable`
//! and `page_table_multiarch`'s `phys_to_virt` need.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::rc::Rc;

/// 4 KiB.
pub const SIZE_4K: usize = 0x1000;
/// 2 MiB.
pub const SIZE_2M: usize = 0x20_0000;

struct Block {
    base: *mut u8,
    layout: Layout,
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed(layout)` in `Arena::new` and is freed once,
        // here, when the last handle goes away.
        unsafe { dealloc(self.base, self.layout) }
    }
}

struct State {
    free_4k: Vec<usize>,
    free_2m: Vec<usize>,
    in_use_4k: usize,
    in_use_2m: usize,
    blocks: usize,
}

/// A cheap `Clone` handle on one arena.
#[derive(Clone)]
pub struct Arena {
    block: Rc<Block>,
    state: Rc<RefCell<State>>,
}

impl Arena {
    /// An arena of `blocks_2m` 2 MiB blocks, every byte already touched (so page faults of
    /// the host do not land inside measurements).
    pub fn new(blocks_2m: usize) -> Self {
        let layout =
            Layout::from_size_align(blocks_2m.max(1) * SIZE_2M, SIZE_2M).expect("arena layout");
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(
            !base.is_null(),
            "arena allocation of {} bytes failed",
            layout.size()
        );
        let block = Block { base, layout };
        // Touch every page once: `alloc_zeroed` of a large block is lazily mapped.
        for i in (0..layout.size()).step_by(SIZE_4K) {
            // SAFETY: `i < layout.size()`, inside the block just allocated.
            unsafe { base.wrapping_add(i).write_volatile(0) };
        }
        let free_2m = Self::all_blocks(base as usize, blocks_2m);
        Arena {
            block: Rc::new(block),
            state: Rc::new(RefCell::new(State {
                free_2m,
                free_4k: Vec::new(),
                in_use_4k: 0,
                in_use_2m: 0,
                blocks: blocks_2m,
            })),
        }
    }

    fn all_blocks(base: usize, blocks: usize) -> Vec<usize> {
        (0..blocks).rev().map(|i| base + i * SIZE_2M).collect()
    }

    /// Puts every block back in one piece (undoes carving blocks into 4 KiB frames).
    ///
    /// # Panics
    /// If anything is still handed out.
    pub fn reset(&self) {
        let mut s = self.state.borrow_mut();
        assert_eq!(
            (s.in_use_4k, s.in_use_2m),
            (0, 0),
            "arena reset while in use"
        );
        s.free_4k.clear();
        s.free_2m = Self::all_blocks(self.block.base as usize, s.blocks);
    }

    /// A 4 KiB frame (contents unspecified), or `None` when the arena is exhausted.
    pub fn alloc_4k(&self) -> Option<usize> {
        let mut s = self.state.borrow_mut();
        if s.free_4k.is_empty() {
            let block = s.free_2m.pop()?;
            s.free_4k
                .extend((0..512).rev().map(|i| block + i * SIZE_4K));
        }
        s.in_use_4k += 1;
        s.free_4k.pop()
    }

    /// Returns a 4 KiB frame.
    pub fn free_4k(&self, pa: usize) {
        self.check(pa, SIZE_4K);
        let mut s = self.state.borrow_mut();
        s.in_use_4k -= 1;
        s.free_4k.push(pa);
    }

    /// A 2 MiB-aligned 2 MiB block, or `None`.
    pub fn alloc_2m(&self) -> Option<usize> {
        let mut s = self.state.borrow_mut();
        let block = s.free_2m.pop()?;
        s.in_use_2m += 1;
        Some(block)
    }

    /// Returns a 2 MiB block.
    pub fn free_2m(&self, pa: usize) {
        self.check(pa, SIZE_2M);
        let mut s = self.state.borrow_mut();
        s.in_use_2m -= 1;
        s.free_2m.push(pa);
    }

    /// 4 KiB frames currently handed out.
    pub fn in_use_4k(&self) -> usize {
        self.state.borrow().in_use_4k
    }

    /// 2 MiB blocks currently handed out.
    pub fn in_use_2m(&self) -> usize {
        self.state.borrow().in_use_2m
    }

    fn check(&self, pa: usize, size: usize) {
        let base = self.block.base as usize;
        assert!(
            pa >= base && pa + size <= base + self.block.layout.size() && pa.is_multiple_of(size),
            "address {pa:#x} is not a {size:#x} piece of this arena"
        );
    }

    /// Zeroes `size` bytes (4 KiB or 2 MiB) at `pa`.
    pub fn zero(&self, pa: usize, size: usize) {
        self.check(pa, size);
        // SAFETY: `check` proved `[pa, pa + size)` lies inside the live block.
        unsafe { std::ptr::write_bytes(pa as *mut u8, 0, size) }
    }

    /// Writes `entries` at the start of the 4 KiB frame `pa` (at most 512).
    pub fn write_entries(&self, pa: usize, entries: impl Iterator<Item = u64>) {
        self.check(pa, SIZE_4K);
        let table = pa as *mut u64;
        for (i, e) in entries.take(512).enumerate() {
            // SAFETY: `i < 512` and `check` proved the 4 KiB frame at `pa` is inside the
            // block; `pa` is 4 KiB-aligned, so `u64` accesses are aligned.
            unsafe { table.wrapping_add(i).write(e) }
        }
    }

    /// Writes entry `i` (< 512) of the 4 KiB frame `pa`.
    pub fn write_entry(&self, pa: usize, i: usize, value: u64) {
        self.check(pa, SIZE_4K);
        assert!(i < 512);
        // SAFETY: as in `write_entries`.
        unsafe { (pa as *mut u64).wrapping_add(i).write(value) }
    }

    /// Reads entry `i` (< 512) of the 4 KiB frame `pa`.
    #[cfg(test)]
    pub fn read_entry(&self, pa: usize, i: usize) -> u64 {
        self.check(pa, SIZE_4K);
        assert!(i < 512);
        // SAFETY: as in `write_entries`.
        unsafe { (pa as *const u64).wrapping_add(i).read() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_distinct_aligned_and_returned() {
        let a = Arena::new(2);
        let mut got: Vec<usize> = (0..600).map(|_| a.alloc_4k().unwrap()).collect();
        assert_eq!(a.in_use_4k(), 600);
        assert!(got.iter().all(|p| p % SIZE_4K == 0));
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 600);
        assert!(
            a.alloc_2m().is_none(),
            "both blocks were carved into frames"
        );
        for p in got {
            a.free_4k(p);
        }
        assert_eq!(a.in_use_4k(), 0);
    }

    #[test]
    fn zero_and_entries_round_trip() {
        let a = Arena::new(1);
        let f = a.alloc_4k().unwrap();
        a.write_entries(f, [7u64, 9].into_iter());
        assert_eq!(a.read_entry(f, 1), 9);
        a.write_entry(f, 511, 5);
        assert_eq!(a.read_entry(f, 511), 5);
        a.zero(f, SIZE_4K);
        assert_eq!(a.read_entry(f, 1), 0);
    }

    #[test]
    #[should_panic(expected = "not a")]
    fn foreign_address_is_refused() {
        Arena::new(1).free_4k(0x1000);
    }
}
