//! Unmap and protect over ranges: split huge leaves that stick out, free tables
//! that become empty, record everything in the flush.

use memory_set::{GuestPhysAddr, HostPhysAddr};

use super::raw::Tbl;
use super::reserve::Reserve;
use super::{ENTRIES, Stage2Table, TableError, index, lsize};
use crate::flush::Flush;
use crate::format::{ADDR_MASK, EntryKind, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, PageSize, Size4K};

/// What a range walk does to the leaves it covers.
#[derive(Clone, Copy)]
enum Op {
    Unmap,
    /// New leaf bits per level (index 1..=3), without address or A/D.
    Protect([u64; 4]),
}

/// Leaves of one size unmapped back to back (contiguous in GPA and HPA), not yet
/// recorded in the flush, and how many leaves were removed since the last
/// [`Run::emit`].
#[derive(Default)]
struct Run {
    gpa: usize,
    hpa: u64,
    count: usize,
    /// The GPA and HPA just past the run (where a continuing leaf starts).
    end_gpa: usize,
    end_hpa: u64,
    removed: usize,
}

impl Run {
    /// Adds the removed leaf `gpa -> hpa` of `sz` bytes, recording the pending run
    /// first when the leaf does not continue it.
    #[inline]
    fn add(&mut self, gpa: usize, hpa: u64, sz: usize, flush: &mut Flush, size: LeafSize) {
        self.removed += 1;
        if self.count != 0 && gpa == self.end_gpa && hpa == self.end_hpa {
            self.count += 1;
        } else {
            self.record(flush, size);
            self.gpa = gpa;
            self.hpa = hpa;
            self.count = 1;
        }
        self.end_gpa = gpa.wrapping_add(sz);
        self.end_hpa = hpa.wrapping_add(sz as u64);
    }

    /// Adds `count` removed leaves of `sz` bytes, contiguous from `gpa -> hpa`.
    #[inline]
    fn add_many(
        &mut self,
        gpa: usize,
        hpa: u64,
        count: usize,
        sz: usize,
        flush: &mut Flush,
        size: LeafSize,
    ) {
        self.add(gpa, hpa, sz, flush, size);
        self.count += count - 1;
        self.removed += count - 1;
        self.end_gpa = gpa.wrapping_add(count * sz);
        self.end_hpa = hpa.wrapping_add((count * sz) as u64);
    }

    /// Records the pending run (if any) in `flush`.
    #[inline]
    fn record(&mut self, flush: &mut Flush, size: LeafSize) {
        if self.count != 0 {
            flush.add_unmapped(
                GuestPhysAddr::new(self.gpa),
                HostPhysAddr::new(self.hpa as usize),
                size,
                self.count,
            );
            self.count = 0;
        }
    }

    /// Records the pending run (if any) and restarts the removal count.
    #[inline]
    fn emit(&mut self, flush: &mut Flush, size: LeafSize) {
        self.record(flush, size);
        self.removed = 0;
    }
}

impl<F: Stage2Format, M: PhysMapper> Stage2Table<F, M> {
    /// Unmaps everything in `[gpa, gpa + size)` (holes are fine), splitting huge
    /// leaves that stick out of the range (the parts outside stay mapped) and freeing
    /// tables that become empty. `gpa` and `size` must be 4 KiB aligned. On error (no
    /// frame for a split) nothing changed.
    pub fn unmap_range(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        size: usize,
    ) -> Result<Flush, TableError> {
        self.range_op(alloc, gpa, size, Op::Unmap)
    }

    /// Gives every mapped page of `[gpa, gpa + size)` the attributes `attr` (holes
    /// stay holes; A/D flags are kept), splitting huge leaves that stick out of the
    /// range. On error nothing changed.
    pub fn protect_range(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        size: usize,
        attr: LeafAttr,
    ) -> Result<Flush, TableError> {
        let mut bits = [0u64; 4];
        for level in 1..=3u8 {
            bits[level as usize] = F::leaf_bits(attr, level, &self.caps)?;
        }
        self.range_op(alloc, gpa, size, Op::Protect(bits))
    }

    fn range_op(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        size: usize,
        op: Op,
    ) -> Result<Flush, TableError> {
        Self::check_aligned(gpa.as_usize(), Size4K::SIZE)?;
        Self::check_aligned(size, Size4K::SIZE)?;
        self.check_gpa(gpa, size)?;
        let mut flush = Flush::none();
        if size == 0 {
            return Ok(flush);
        }
        let start = gpa.as_usize();
        let end = start + size;
        let splits = self.count_splits(start, end);
        let mut reserve = Reserve::fill(alloc, &self.mapper, [0, splits, 0, 0])?;
        let mut changed = false;
        let root = self.tbl(self.root);
        let result = self.walk_range(
            &mut reserve,
            root,
            4,
            start,
            end,
            op,
            &mut flush,
            &mut changed,
        );
        debug_assert!(result.is_ok() && reserve.is_empty(), "split plan mismatch");
        reserve.release(alloc);
        result?;
        if changed {
            flush.add_range(gpa, size);
        }
        Ok(flush)
    }

    /// The number of leaf splits a range operation on `[start, end)` performs: only
    /// the leaves holding the two ends can stick out, each split at most twice.
    fn count_splits(&self, start: usize, end: usize) -> usize {
        let mut keys = [(0u8, 0usize); 4];
        let mut n = 0;
        for (boundary, probe, is_start) in [(start, start, true), (end, end - 1, false)] {
            let Some((level, leaf_base)) = self.leaf_at(probe) else {
                continue;
            };
            let sticks_out = if is_start {
                leaf_base < start
            } else {
                leaf_base + lsize(level) > end
            };
            if !sticks_out {
                continue;
            }
            for lvl in (2..=level).rev() {
                let key = (lvl, probe & !(lsize(lvl) - 1));
                if !keys[..n].contains(&key) {
                    keys[n] = key;
                    n += 1;
                }
                if boundary & (lsize(lvl - 1) - 1) == 0 {
                    break;
                }
            }
        }
        n
    }

    /// The level and first GPA of the leaf mapping `g`, if any.
    pub(crate) fn leaf_at(&self, g: usize) -> Option<(u8, usize)> {
        let mut frame = self.root;
        let mut level = 4u8;
        loop {
            match F::decode(self.tbl(frame).load(index(g, level)), level) {
                EntryKind::Absent => return None,
                EntryKind::Leaf(_) => return Some((level, g & !(lsize(level) - 1))),
                EntryKind::Table(t) => {
                    frame = t;
                    level -= 1;
                }
            }
        }
    }

    /// Applies `op` to `[start, end)` inside table `t` at `level`.
    #[allow(clippy::too_many_arguments)]
    fn walk_range(
        &mut self,
        reserve: &mut Reserve,
        t: Tbl,
        level: u8,
        start: usize,
        end: usize,
        op: Op,
        flush: &mut Flush,
        changed: &mut bool,
    ) -> Result<(), TableError> {
        if level == 1 {
            self.leaf_run(t, start, end, op, flush, changed);
            return Ok(());
        }
        let sz = lsize(level);
        let size = LeafSize::from_level(level).unwrap_or(LeafSize::Size4K);
        // Whole leaves unmapped at this level, coalesced locally; recorded (and
        // counted) before any recursion, so the flush lists leaves in GPA order.
        let mut run = Run::default();
        let mut touched = false;
        let mut base = start & !(sz - 1);
        while base < end {
            let i = index(base, level);
            let e = t.load(i);
            let next = base + sz;
            if !F::is_present(e) {
                base = next;
                continue;
            }
            // Level 4 entries are never leaves (see `Stage2Format::decode`).
            let is_leaf = level < 4 && e & F::HUGE_BIT != 0;
            let full = base >= start && next <= end;
            if is_leaf && full {
                let h = e & ADDR_MASK & !(sz as u64 - 1);
                touched = true;
                match op {
                    Op::Unmap => {
                        // A run of whole leaves (the common case): a tight loop.
                        let (mut i, mut h) = (i, h);
                        loop {
                            t.store(i, 0);
                            run.add(base, h, sz, flush, size);
                            base += sz;
                            i += 1;
                            if base + sz > end || i == ENTRIES {
                                break;
                            }
                            let e = t.load(i);
                            if !F::is_present(e) || e & F::HUGE_BIT == 0 {
                                break;
                            }
                            h = e & ADDR_MASK & !(sz as u64 - 1);
                        }
                        continue;
                    }
                    Op::Protect(bits) => {
                        let keep = e & (F::ACCESSED | F::DIRTY);
                        t.store(i, bits[level as usize] | keep | h);
                    }
                }
                base = next;
                continue;
            }
            self.uncount(level, run.removed);
            run.emit(flush, size);
            let s = base.max(start);
            let en = end.min(next);
            match F::decode(e, level) {
                EntryKind::Absent => {}
                EntryKind::Leaf(h) => {
                    let c = self.split_leaf(reserve, t, i, level, e, h)?;
                    let ct = self.tbl(c);
                    self.walk_range(reserve, ct, level - 1, s, en, op, flush, changed)?;
                    if matches!(op, Op::Unmap) && ct.is_empty() {
                        self.free_child(t, level, i, c, flush);
                    }
                }
                EntryKind::Table(c) if full && level == 2 && matches!(op, Op::Unmap) => {
                    // A whole page table goes: record its leaves, unlink it, free it
                    // after the flush; its entries need not be cleared one by one.
                    let ct = self.tbl(c);
                    if self.drain_leaf_table(ct, base, flush) > 0 {
                        *changed = true;
                    }
                    self.free_child(t, level, i, c, flush);
                }
                EntryKind::Table(c) => {
                    let ct = self.tbl(c);
                    self.walk_range(reserve, ct, level - 1, s, en, op, flush, changed)?;
                    if matches!(op, Op::Unmap) && (full || ct.is_empty()) {
                        debug_assert!(ct.is_empty());
                        self.free_child(t, level, i, c, flush);
                    }
                }
            }
            base = next;
        }
        if touched {
            *changed = true;
        }
        self.uncount(level, run.removed);
        run.emit(flush, size);
        Ok(())
    }

    /// The level-1 part of a range walk: a tight loop over one page table.
    fn leaf_run(
        &mut self,
        t: Tbl,
        start: usize,
        end: usize,
        op: Op,
        flush: &mut Flush,
        changed: &mut bool,
    ) {
        let i0 = index(start, 1);
        let n = (end - start) / Size4K::SIZE;
        let mut count = 0usize;
        match op {
            Op::Unmap => {
                // Coalesce contiguous leaves locally before recording them.
                let mut run = Run::default();
                for k in 0..n {
                    let e = t.load(i0 + k);
                    if !F::is_present(e) {
                        continue;
                    }
                    t.store(i0 + k, 0);
                    let g = start + k * Size4K::SIZE;
                    let h = e & ADDR_MASK;
                    run.add(g, h, Size4K::SIZE, flush, LeafSize::Size4K);
                }
                count = run.removed;
                self.leaves[0] -= count;
                run.emit(flush, LeafSize::Size4K);
            }
            Op::Protect(bits) => {
                let keep_mask = F::ACCESSED | F::DIRTY | ADDR_MASK;
                for k in 0..n {
                    let e = t.load(i0 + k);
                    if F::is_present(e) {
                        t.store(i0 + k, bits[1] | (e & keep_mask));
                        count += 1;
                    }
                }
            }
        }
        if count > 0 {
            *changed = true;
        }
    }

    /// Records every leaf of the page table `t` (mapping from `base`), which the caller
    /// unlinks and frees after the flush, as unmapped, and takes them off the counters;
    /// the entries themselves stay as they are (nothing reads the frame once it is
    /// unlinked and invalidated). Returns the number of leaves.
    fn drain_leaf_table(&mut self, t: Tbl, base: usize, flush: &mut Flush) -> usize {
        const SZ: usize = Size4K::SIZE;
        let mut run = Run::default();
        let mut k = 0;
        while k < ENTRIES {
            let e = t.load(k);
            if !F::is_present(e) {
                k += 1;
                continue;
            }
            // The longest run of present, physically contiguous leaves from `k`.
            let h = e & ADDR_MASK;
            let mut n = 1;
            while k + n < ENTRIES {
                let next = t.load(k + n);
                if !F::is_present(next) || next & ADDR_MASK != h + (n * SZ) as u64 {
                    break;
                }
                n += 1;
            }
            run.add_many(base + k * SZ, h, n, SZ, flush, LeafSize::Size4K);
            k += n;
        }
        let removed = run.removed;
        self.leaves[0] -= removed;
        run.emit(flush, LeafSize::Size4K);
        removed
    }

    /// Takes `n` removed leaves at `level` off the counters (level 4 holds none).
    #[inline]
    fn uncount(&mut self, level: u8, n: usize) {
        if let Some(c) = self.leaves.get_mut((level as usize).wrapping_sub(1)) {
            *c -= n;
        }
    }

    /// Unlinks the (empty) child table `c` from entry `i` of `t` (at `level`); it is freed when
    /// the flush completes.
    fn free_child(&mut self, t: Tbl, level: u8, i: usize, c: HostPhysAddr, flush: &mut Flush) {
        t.store(i, 0);
        self.note_freed(t, level, i);
        self.generation += 1;
        flush.add_freed_table(c);
    }
}
