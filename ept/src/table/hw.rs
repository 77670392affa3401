//! What the MMU does to a table on a guest access: the software model of a hardware
//! walk that sets the accessed and dirty flags. Dirty-log tests, benchmarks and
//! instruction emulation use it to touch guest memory the way the CPU would.

use memory_set::{AddrRange, GuestPhysAddr};

use super::raw::Tbl;
use super::{ENTRIES, Stage2Table, Translation, index, lsize};
use crate::flush::Flush;
use crate::format::{Access, EntryKind, LeafAttr, Stage2Format};
use crate::frame::PhysMapper;
use crate::size::LeafSize;

impl<F: Stage2Format, M: PhysMapper> Stage2Table<F, M> {
    /// Walks `gpa` like the hardware for an `access`: when the leaf allows it, sets
    /// its accessed flag, and for a write its dirty flag (only with A/D support: EPT
    /// bits 8 and 9, SDM Vol. 3C §29.3.5; NPT bits 5 and 6, APM Vol. 2 §15.25.5 and
    /// §5.4.1), and returns the translation. `None` when the hardware would fault (no
    /// leaf, or a leaf without the rights).
    pub fn hardware_access(&self, gpa: GuestPhysAddr, access: Access) -> Option<Translation> {
        let g = gpa.as_usize();
        if g >> self.gpa_bits() != 0 {
            return None;
        }
        let mut frame = self.root;
        let mut level = 4u8;
        loop {
            let t = self.tbl(frame);
            let i = index(g, level);
            let e = t.load(i);
            match F::decode(e, level) {
                EntryKind::Absent => return None,
                EntryKind::Table(next) => {
                    frame = next;
                    level -= 1;
                }
                EntryKind::Leaf(h) => {
                    let attr = F::leaf_attr(e, level);
                    if !attr.access.contains(access) {
                        return None;
                    }
                    if self.caps.accessed_dirty {
                        let d = if access.contains(Access::WRITE) {
                            F::DIRTY
                        } else {
                            0
                        };
                        t.set_bits(i, F::ACCESSED | d);
                    }
                    let sz = lsize(level);
                    return Some(Translation {
                        hpa: memory_set::HostPhysAddr::new(h.as_usize() + (g & (sz - 1))),
                        attr,
                        size: LeafSize::from_level(level)?,
                        leaf_gpa: GuestPhysAddr::new(g & !(sz - 1)),
                    });
                }
            }
        }
    }

    /// Takes write access away from the leaf mapping `gpa` in place (one walk, one
    /// atomic update that keeps the A/D flags), returning the leaf's first GPA and
    /// size when it was writable. The caller invalidates the leaf (through its flush).
    /// Never splits, never allocates; the write bits are EPT bit 1 (SDM Vol. 3C
    /// §29.3.2) and NPT R/W (bit 1, APM Vol. 2 §5.4.1), as the format encodes them.
    pub(crate) fn clear_write(&mut self, gpa: GuestPhysAddr) -> Option<(GuestPhysAddr, LeafSize)> {
        let g = gpa.as_usize();
        if g >> self.gpa_bits() != 0 {
            return None;
        }
        let (t, i, level, e) = self.leaf_entry(g)?;
        let attr = F::leaf_attr(e, level);
        if !attr.access.contains(Access::WRITE) {
            return None;
        }
        let ro = LeafAttr {
            access: attr.access.difference(Access::WRITE),
            ..attr
        };
        let rw_bits = F::leaf_bits(attr, level, &self.caps).ok()?;
        let ro_bits = F::leaf_bits(ro, level, &self.caps).ok()?;
        // Read-only must be the writable encoding minus some bits.
        debug_assert_eq!(ro_bits & !rw_bits, 0);
        t.clear_bits(i, rw_bits ^ ro_bits);
        let sz = lsize(level);
        Some((
            GuestPhysAddr::new(g & !(sz - 1)),
            LeafSize::from_level(level)?,
        ))
    }

    /// The table, index, level and value of the leaf entry mapping `g`, if any.
    #[inline]
    fn leaf_entry(&self, g: usize) -> Option<(Tbl, usize, u8, u64)> {
        let mut frame = self.root;
        let mut level = 4u8;
        loop {
            let t = self.tbl(frame);
            let i = index(g, level);
            let e = t.load(i);
            match F::decode(e, level) {
                EntryKind::Absent => return None,
                EntryKind::Table(next) => {
                    frame = next;
                    level -= 1;
                }
                EntryKind::Leaf(_) => return Some((t, i, level, e)),
            }
        }
    }

    /// [`Stage2Table::harvest_dirty`] with a tight loop over 4 KiB leaf tables (the
    /// common case once a log splits huge leaves): calls `f(leaf_gpa, size)` for every
    /// dirty leaf overlapping `range` and clears its dirty flag atomically. Complete the
    /// returned flush before the next harvest.
    pub(crate) fn harvest_dirty_fast(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
        mut f: impl FnMut(usize, usize),
    ) -> Flush {
        let mut flush = Flush::none();
        let limit = 1usize << self.gpa_bits();
        let start = range.start().as_usize().min(limit);
        let end = range.end().map_or(limit, |e| e.as_usize().min(limit));
        if start >= end {
            return flush;
        }
        let (mut lo, mut hi) = (usize::MAX, 0);
        let mut note = |base: usize, size: usize| {
            f(base, size);
            lo = lo.min(base);
            hi = hi.max(base + size);
        };
        self.harvest_below(self.tbl(self.root), 4, start, end, &mut note);
        if lo < hi {
            flush.add_range(GuestPhysAddr::new(lo), hi - lo);
        }
        flush
    }

    fn harvest_below(
        &self,
        t: Tbl,
        level: u8,
        start: usize,
        end: usize,
        note: &mut impl FnMut(usize, usize),
    ) {
        let sz = lsize(level);
        if level == 1 {
            let base = start & !(lsize(2) - 1);
            let (i0, i1) = ((start - base) / sz, (end - base).div_ceil(sz).min(ENTRIES));
            for i in i0..i1 {
                let e = t.load(i);
                if e & F::DIRTY != 0 && F::is_present(e) {
                    t.clear_bits(i, F::DIRTY);
                    note(base + i * sz, sz);
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
                EntryKind::Leaf(_) => {
                    if e & F::DIRTY != 0 {
                        t.clear_bits(i, F::DIRTY);
                        note(base, sz);
                    }
                }
                EntryKind::Table(c) => self.harvest_below(
                    self.tbl(c),
                    level - 1,
                    base.max(start),
                    end.min(base + sz),
                    note,
                ),
            }
            base += sz;
        }
    }
}
