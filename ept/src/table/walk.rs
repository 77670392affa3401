//! Read-mostly walks: leaf iteration, dirty harvesting, collapse and teardown.

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr};

use super::raw::Tbl;
use super::{ENTRIES, Leaf, Stage2Table, TableError, index, lsize};
use crate::flush::Flush;
use crate::format::{EntryKind, Stage2Format};
use crate::frame::PhysMapper;
use crate::size::LeafSize;

/// Iterator over leaves in GPA order (see [`Stage2Table::leaves`]).
pub struct LeafIter<'a, F: Stage2Format, M: PhysMapper> {
    table: &'a Stage2Table<F, M>,
    next: usize,
    end: usize,
}

impl<F: Stage2Format, M: PhysMapper> Iterator for LeafIter<'_, F, M> {
    type Item = Leaf;

    fn next(&mut self) -> Option<Leaf> {
        'outer: while self.next < self.end {
            let g = self.next;
            let mut frame = self.table.root;
            let mut level = 4u8;
            loop {
                let e = self.table.tbl(frame).load(index(g, level));
                let sz = lsize(level);
                match F::decode(e, level) {
                    EntryKind::Absent => {
                        self.next = (g & !(sz - 1)) + sz;
                        continue 'outer;
                    }
                    EntryKind::Table(t) => {
                        frame = t;
                        level -= 1;
                    }
                    EntryKind::Leaf(h) => {
                        let base = g & !(sz - 1);
                        self.next = base + sz;
                        return Some(Leaf {
                            gpa: GuestPhysAddr::new(base),
                            hpa: h,
                            attr: F::leaf_attr(e, level),
                            size: LeafSize::from_level(level)?,
                            accessed: self.table.caps.accessed_dirty && e & F::ACCESSED != 0,
                            dirty: self.table.caps.accessed_dirty && e & F::DIRTY != 0,
                        });
                    }
                }
            }
        }
        None
    }
}

impl<F: Stage2Format, M: PhysMapper> Stage2Table<F, M> {
    /// Every leaf, in GPA order.
    pub fn leaves(&self) -> LeafIter<'_, F, M> {
        LeafIter {
            table: self,
            next: 0,
            end: 1usize << self.gpa_bits(),
        }
    }

    /// The leaves overlapping `range`, in GPA order (a leaf that starts before the
    /// range is reported with its own start).
    pub fn leaves_in(&self, range: AddrRange<GuestPhysAddr>) -> LeafIter<'_, F, M> {
        let limit = 1usize << self.gpa_bits();
        let start = range.start().as_usize().min(limit);
        let end = range.end().map_or(limit, |e| e.as_usize().min(limit));
        LeafIter {
            table: self,
            next: start,
            end: if range.is_empty() { start } else { end },
        }
    }

    /// Calls `f(leaf_gpa, size)` for every dirty leaf overlapping `range` and clears
    /// its dirty flag atomically (a dirty-page log). Complete the flush before the
    /// next harvest: a cached translation would let writes go unrecorded.
    /// [`TableError::NoAccessedDirty`] without A/D support.
    pub fn harvest_dirty(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
        mut f: impl FnMut(GuestPhysAddr, LeafSize),
    ) -> Result<Flush, TableError> {
        if !self.caps.accessed_dirty {
            return Err(TableError::NoAccessedDirty);
        }
        let mut flush = Flush::none();
        let limit = 1usize << self.gpa_bits();
        let start = range.start().as_usize();
        let end = range.end().map_or(limit, |e| e.as_usize().min(limit));
        if range.is_empty() || start >= end {
            return Ok(flush);
        }
        let mut lo = usize::MAX;
        let mut hi = 0;
        self.visit_leaves(
            self.tbl(self.root),
            4,
            (start, end),
            F::DIRTY,
            &mut |t, i, level, base| {
                t.clear_bits(i, F::DIRTY);
                let size = LeafSize::from_level(level).unwrap_or(LeafSize::Size4K);
                f(GuestPhysAddr::new(base), size);
                lo = lo.min(base);
                hi = hi.max(base + lsize(level));
            },
        );
        if lo < hi {
            flush.add_range(GuestPhysAddr::new(lo), hi - lo);
        }
        Ok(flush)
    }

    /// Calls `f(table, index, level, leaf_gpa)` for each leaf overlapping
    /// `[start, end)` below table `t` at `level` whose entry has every bit of `must`.
    fn visit_leaves(
        &self,
        t: Tbl,
        level: u8,
        (start, end): (usize, usize),
        must: u64,
        f: &mut impl FnMut(Tbl, usize, u8, usize),
    ) {
        let sz = lsize(level);
        if level == 1 {
            // Every present entry of a 4 KiB table is a leaf: no decoding, and the
            // filter first (the loop a dirty-log pass over split RAM spends its time in).
            let span = start & !(lsize(2) - 1);
            for i in (start - span) / sz..(end - span).div_ceil(sz).min(ENTRIES) {
                let e = t.load(i);
                if e & must == must && F::is_present(e) {
                    f(t, i, 1, span + i * sz);
                }
            }
            return;
        }
        let mut base = start & !(sz - 1);
        while base < end {
            let i = index(base, level);
            let e = t.load(i);
            match F::decode(e, level) {
                EntryKind::Absent => {}
                EntryKind::Leaf(_) if e & must == must => f(t, i, level, base),
                EntryKind::Leaf(_) => {}
                EntryKind::Table(c) => self.visit_leaves(
                    self.tbl(c),
                    level - 1,
                    (base.max(start), end.min(base + sz)),
                    must,
                    f,
                ),
            }
            base += sz;
        }
    }

    /// Replaces the 4 KiB table holding `gpa` by one 2 MiB leaf if its 512 leaves
    /// are contiguous, 2 MiB aligned and alike, then the 2 MiB table holding `gpa` by
    /// a 1 GiB leaf likewise (as the capabilities allow). A/D flags are merged. An
    /// empty flush means nothing changed.
    pub fn collapse(&mut self, gpa: GuestPhysAddr) -> Result<Flush, TableError> {
        self.check_gpa(gpa, 1)?;
        let mut flush = Flush::none();
        let g = gpa.as_usize();
        for (leaf_level, allowed) in [(2u8, self.caps.leaf_2m), (3u8, self.caps.leaf_1g)] {
            if !allowed {
                continue;
            }
            // Find the table at `leaf_level` holding `gpa`.
            let Ok(frame) = self.descend(g, leaf_level) else {
                continue;
            };
            let parent = self.tbl(frame);
            let i = index(g, leaf_level);
            let e = parent.load(i);
            let EntryKind::Table(child) = F::decode(e, leaf_level) else {
                continue;
            };
            if let Some(entry) = self.uniform_leaf(child, leaf_level - 1) {
                parent.store(i, entry);
                self.note_freed(parent, leaf_level, i);
                self.generation += 1;
                self.leaves[leaf_level as usize - 2] -= ENTRIES;
                self.leaves[leaf_level as usize - 1] += 1;
                let sz = lsize(leaf_level);
                flush.add_range(GuestPhysAddr::new(g & !(sz - 1)), sz);
                flush.add_freed_table(child);
            }
        }
        Ok(flush)
    }

    /// If the table `child` (at `level`) holds 512 leaves that one leaf of the level
    /// above can replace, that leaf's entry.
    fn uniform_leaf(&self, child: HostPhysAddr, level: u8) -> Option<u64> {
        let ct = self.tbl(child);
        let first = ct.load(0);
        let EntryKind::Leaf(h0) = F::decode(first, level) else {
            return None;
        };
        let big = lsize(level + 1);
        if h0.as_usize() & (big - 1) != 0 {
            return None;
        }
        let attr = F::leaf_attr(first, level);
        let mut ad = 0;
        for k in 0..ENTRIES {
            let e = ct.load(k);
            match F::decode(e, level) {
                EntryKind::Leaf(h)
                    if h.as_usize() == h0.as_usize() + k * lsize(level)
                        && F::leaf_attr(e, level) == attr => {}
                _ => return None,
            }
            ad |= e & (F::ACCESSED | F::DIRTY);
        }
        let bits = F::leaf_bits(attr, level + 1, &self.caps).ok()?;
        Some(bits | ad | h0.as_u64())
    }

    /// Tears the table down: every leaf is reported as unmapped and every table
    /// frame (root included) is freed when the returned flush completes (which
    /// invalidates everything first).
    pub fn destroy(self) -> Flush {
        let mut flush = Flush::none();
        flush.add_all();
        self.destroy_below(self.tbl(self.root), 4, 0, &mut flush);
        flush.add_freed_table(self.root);
        flush
    }

    fn destroy_below(&self, t: Tbl, level: u8, span_base: usize, flush: &mut Flush) {
        let sz = lsize(level);
        for i in 0..ENTRIES {
            let e = t.load(i);
            let base = span_base + i * sz;
            match F::decode(e, level) {
                EntryKind::Absent => {}
                EntryKind::Leaf(h) => {
                    let size = LeafSize::from_level(level).unwrap_or(LeafSize::Size4K);
                    flush.add_unmapped(GuestPhysAddr::new(base), h, size, 1);
                }
                EntryKind::Table(c) => {
                    self.destroy_below(self.tbl(c), level - 1, base, flush);
                    flush.add_freed_table(c);
                }
            }
        }
    }
}
