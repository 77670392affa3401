//! Unmap and protect over ranges: split huge leaves that stick out, free tables
//! that become empty, record everything in the flush.

use memory_set::{GuestPhysAddr, HostPhysAddr};

use super::raw::Tbl;
use super::reserve::Reserve;
use super::{Stage2Table, TableError, index, lsize};
use crate::flush::Flush;
use crate::format::{EntryKind, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, PageSize, Size4K};

/// What a range walk does to the leaves it covers.
#[derive(Clone, Copy)]
enum Op {
    Unmap,
    /// New leaf bits per level (index 1..=3), without address or A/D.
    Protect([u64; 4]),
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
        let mut base = start & !(sz - 1);
        while base < end {
            let i = index(base, level);
            let e = t.load(i);
            let s = base.max(start);
            let en = end.min(base + sz);
            let full = s == base && en == base + sz;
            match F::decode(e, level) {
                EntryKind::Absent => {}
                EntryKind::Leaf(h) if full => {
                    self.apply_leaf(t, i, level, base, e, h, op, flush);
                    *changed = true;
                }
                EntryKind::Leaf(h) => {
                    let c = self.split_leaf(reserve, t, i, level, e, h)?;
                    let ct = self.tbl(c);
                    self.walk_range(reserve, ct, level - 1, s, en, op, flush, changed)?;
                    if matches!(op, Op::Unmap) && ct.is_empty() {
                        self.free_child(t, i, c, flush);
                    }
                }
                EntryKind::Table(c) => {
                    let ct = self.tbl(c);
                    self.walk_range(reserve, ct, level - 1, s, en, op, flush, changed)?;
                    if matches!(op, Op::Unmap) && (full || ct.is_empty()) {
                        debug_assert!(ct.is_empty());
                        self.free_child(t, i, c, flush);
                    }
                }
            }
            base += sz;
        }
        Ok(())
    }

    /// Unmaps or re-protects one whole leaf.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn apply_leaf(
        &mut self,
        t: Tbl,
        i: usize,
        level: u8,
        base: usize,
        e: u64,
        h: HostPhysAddr,
        op: Op,
        flush: &mut Flush,
    ) {
        match op {
            Op::Unmap => {
                t.store(i, 0);
                self.leaves[level as usize - 1] -= 1;
                let size = LeafSize::from_level(level).unwrap_or(LeafSize::Size4K);
                flush.add_unmapped(GuestPhysAddr::new(base), h, size, 1);
            }
            Op::Protect(bits) => {
                let keep = e & (F::ACCESSED | F::DIRTY);
                t.store(i, bits[level as usize] | keep | h.as_u64());
            }
        }
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
                let mut run: Option<(usize, u64, usize)> = None;
                for k in 0..n {
                    let e = t.load(i0 + k);
                    if !F::is_present(e) {
                        continue;
                    }
                    t.store(i0 + k, 0);
                    count += 1;
                    let g = start + k * Size4K::SIZE;
                    let h = e & crate::format::ADDR_MASK;
                    match &mut run {
                        Some((rg, rh, rn))
                            if *rg + *rn * Size4K::SIZE == g
                                && *rh + (*rn * Size4K::SIZE) as u64 == h =>
                        {
                            *rn += 1
                        }
                        _ => {
                            if let Some((rg, rh, rn)) = run.take() {
                                flush.add_unmapped(
                                    GuestPhysAddr::new(rg),
                                    HostPhysAddr::new(rh as usize),
                                    LeafSize::Size4K,
                                    rn,
                                );
                            }
                            run = Some((g, h, 1));
                        }
                    }
                }
                if let Some((rg, rh, rn)) = run {
                    flush.add_unmapped(
                        GuestPhysAddr::new(rg),
                        HostPhysAddr::new(rh as usize),
                        LeafSize::Size4K,
                        rn,
                    );
                }
                self.leaves[0] -= count;
            }
            Op::Protect(bits) => {
                let keep_mask = F::ACCESSED | F::DIRTY | crate::format::ADDR_MASK;
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

    /// Unlinks the (empty) child table `c` from entry `i` of `t`; it is freed when
    /// the flush completes.
    fn free_child(&mut self, t: Tbl, i: usize, c: HostPhysAddr, flush: &mut Flush) {
        t.store(i, 0);
        self.tables -= 1;
        self.generation += 1;
        flush.add_freed_table(c);
    }
}
