//! Mapping: one page through `MapSize`, or a range in leaf-table runs.
//!
//! Both first plan (read-only): find conflicts and count the tables to create; then
//! reserve exactly those frames; only then write. So a failure changes nothing.

use memory_set::{GuestPhysAddr, HostPhysAddr};

use super::raw::take_frame;
use super::reserve::Reserve;
use super::{ENTRIES, Stage2Table, TableError, index, lsize};
use crate::flush::Flush;
use crate::format::{EntryKind, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, MapSize, PageSize, Size1G, Size2M, Size4K};

/// The leaf entry for one address, found by [`Stage2Table::leaf_slot`]: valid
/// until a table frame of the table is freed (the generation changes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeafSlot {
    frame: HostPhysAddr,
    index: usize,
    generation: u64,
    level: u8,
    gpa: GuestPhysAddr,
}

/// Parameters of one `map_range` plan.
struct RangePlan {
    /// `hpa - gpa`, wrapping.
    delta: usize,
    /// The largest leaf level allowed (1..=3).
    max_level: u8,
}

impl RangePlan {
    /// Whether the slot `[base, base + lsize(level))`, entirely inside the range,
    /// becomes one leaf.
    #[inline]
    fn leaf_here(&self, level: u8, base: usize) -> bool {
        level <= self.max_level && base.wrapping_add(self.delta) & (lsize(level) - 1) == 0
    }
}

impl<F: Stage2Format, M: PhysMapper> Stage2Table<F, M> {
    /// Maps one page of size `S`: `gpa` to `hpa` (both aligned to `S::SIZE`).
    /// [`TableError::AlreadyMapped`] if any part of the page is mapped. On error
    /// nothing changed. Mapping never needs an invalidation: the flush is empty.
    pub fn map_page<S: MapSize>(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        attr: LeafAttr,
    ) -> Result<Flush, TableError> {
        let entry = self.checked_leaf::<S>(gpa, hpa, attr)?;
        match self.write_leaf_in_place::<S>(gpa, entry)? {
            None => Ok(Flush::none()),
            Some(absent_level) => {
                self.map_page_new_tables::<S>(alloc, gpa, hpa, attr, absent_level)
            }
        }
    }

    /// The entry that would hold a leaf of size `S` at `gpa`, if `gpa` is a valid,
    /// aligned address and every table on its path exists (read-only). The entry
    /// itself is only prefetched, not read: this is for callers that prepare the page
    /// (allocate, zero) before filling it with [`Stage2Table::fill_leaf_slot`], and
    /// so overlap the cache miss on the leaf table with that work.
    #[inline]
    pub(crate) fn leaf_slot<S: MapSize>(&self, gpa: GuestPhysAddr) -> Option<LeafSlot> {
        let g = gpa.as_usize();
        if g & (S::SIZE - 1) != 0 || self.check_gpa(gpa, S::SIZE).is_err() {
            return None;
        }
        let frame = self.descend(g, S::LEVEL).ok()?;
        let i = index(g, S::LEVEL);
        self.tbl(frame).prefetch(i);
        Some(LeafSlot {
            frame,
            index: i,
            generation: self.generation,
            level: S::LEVEL,
            gpa,
        })
    }

    /// Writes the leaf `hpa` with `attr` into `slot` (from
    /// [`Stage2Table::leaf_slot`] for size `S`). Refuses a stale slot (a table was
    /// freed since: [`TableError::StaleLeafTable`]), a present entry
    /// ([`TableError::AlreadyMapped`]), and what [`Stage2Table::map_page`] refuses
    /// for `hpa` and `attr`. On error nothing changed.
    #[inline]
    pub(crate) fn fill_leaf_slot<S: MapSize>(
        &mut self,
        slot: &LeafSlot,
        hpa: HostPhysAddr,
        attr: LeafAttr,
    ) -> Result<(), TableError> {
        if slot.generation != self.generation || slot.level != S::LEVEL {
            return Err(TableError::StaleLeafTable);
        }
        if !self.caps.allows(S::LEAF_SIZE) {
            return Err(TableError::UnsupportedLeaf { size: S::LEAF_SIZE });
        }
        Self::check_aligned(hpa.as_usize(), S::SIZE)?;
        self.check_hpa(hpa, S::SIZE)?;
        let bits = F::leaf_bits(attr, S::LEVEL, &self.caps)?;
        let t = self.tbl(slot.frame);
        if F::is_present(t.load(slot.index)) {
            return Err(TableError::AlreadyMapped { gpa: slot.gpa });
        }
        t.store(slot.index, bits | hpa.as_u64());
        self.leaves[S::LEVEL as usize - 1] += 1;
        Ok(())
    }

    /// One walk down to `gpa`'s entry at the leaf level of `S`, writing the (checked)
    /// leaf `entry` there when every table on the path exists: `Ok(None)`. When the
    /// walk meets an absent entry above the leaf level, nothing is written and its
    /// level is returned.
    #[inline]
    fn write_leaf_in_place<S: MapSize>(
        &mut self,
        gpa: GuestPhysAddr,
        entry: u64,
    ) -> Result<Option<u8>, TableError> {
        let g = gpa.as_usize();
        let frame = match self.descend(g, S::LEVEL) {
            Ok(frame) => frame,
            Err((level, EntryKind::Absent)) => return Ok(Some(level)),
            Err(_) => return Err(self.already_mapped(g, S::SIZE)),
        };
        // At the leaf level, a present entry (a leaf, or a table: tables below the
        // root are never empty) means something is mapped.
        let t = self.tbl(frame);
        let i = index(g, S::LEVEL);
        if F::is_present(t.load(i)) {
            return Err(self.already_mapped(g, S::SIZE));
        }
        t.store(i, entry);
        self.leaves[S::LEVEL as usize - 1] += 1;
        Ok(None)
    }

    /// [`Stage2Table::map_page`] when the walk met an absent entry at `absent_level`
    /// (above the leaf level): reserve one table per level below it, then build the
    /// chain and write the leaf. The arguments are already checked.
    #[inline(never)]
    fn map_page_new_tables<S: MapSize>(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        attr: LeafAttr,
        absent_level: u8,
    ) -> Result<Flush, TableError> {
        let mut counts = [0usize; 4];
        for l in S::LEVEL..absent_level {
            counts[l as usize] = 1;
        }
        let mut reserve = Reserve::fill(alloc, &self.mapper, counts)?;
        let result = S::build_chain(self, &mut reserve, gpa)
            .and_then(|lt| S::set_leaf(self, &lt, gpa, hpa, attr));
        debug_assert!(result.is_ok() && reserve.is_empty());
        reserve.release(alloc);
        result.map(|()| Flush::none())
    }

    /// Maps `[gpa, gpa + size)` to `[hpa, hpa + size)` with the largest leaves that
    /// alignment, the capabilities and `max` allow, writing each leaf table's run in
    /// one pass after one walk. All addresses and `size` must be 4 KiB aligned;
    /// nothing in the range may be mapped ([`TableError::AlreadyMapped`]). On error
    /// nothing changed. Mapping never needs an invalidation: the flush is empty.
    pub fn map_range(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: usize,
        attr: LeafAttr,
        max: LeafSize,
    ) -> Result<Flush, TableError> {
        Self::check_aligned(gpa.as_usize(), Size4K::SIZE)?;
        Self::check_aligned(hpa.as_usize(), Size4K::SIZE)?;
        Self::check_aligned(size, Size4K::SIZE)?;
        self.check_gpa(gpa, size)?;
        self.check_hpa(hpa, size)?;
        let bits4k = F::leaf_bits(attr, 1, &self.caps)?;
        if size == 0 {
            return Ok(Flush::none());
        }
        let max_level = match max {
            LeafSize::Size1G if self.caps.leaf_1g => 3,
            LeafSize::Size1G | LeafSize::Size2M if self.caps.leaf_2m => 2,
            _ => 1,
        };
        let plan = RangePlan {
            delta: hpa.as_usize().wrapping_sub(gpa.as_usize()),
            max_level,
        };
        let start = gpa.as_usize();
        let end = start + size;

        let mut counts = [0usize; 4];
        self.plan_map(&plan, 4, Some(self.root), start, end, &mut counts)?;
        let mut reserve = Reserve::fill(alloc, &self.mapper, counts)?;

        let bits2m = if max_level >= 2 {
            F::leaf_bits(attr, 2, &self.caps)?
        } else {
            0
        };
        let bits1g = if max_level >= 3 {
            F::leaf_bits(attr, 3, &self.caps)?
        } else {
            0
        };
        let bits = [0, bits4k, bits2m, bits1g];
        let mut cur = start;
        let mut result = Ok(());
        while cur < end {
            match self.map_step(&mut reserve, &plan, cur, end, &bits) {
                Ok(n) => cur += n,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        debug_assert!(
            result.is_ok() && reserve.is_empty(),
            "map_range plan mismatch"
        );
        reserve.release(alloc);
        result.map(|()| Flush::none())
    }

    /// Read-only pass of `map_range` over the table at `level` (`frame`, or a table
    /// still to be created when `None`) for `[start, end)`: conflicts and counts.
    fn plan_map(
        &self,
        plan: &RangePlan,
        level: u8,
        frame: Option<HostPhysAddr>,
        start: usize,
        end: usize,
        counts: &mut [usize; 4],
    ) -> Result<(), TableError> {
        let Some(frame) = frame else {
            Self::plan_absent(plan, level, start, end, counts);
            return Ok(());
        };
        let sz = lsize(level);
        let t = self.tbl(frame);
        let mut base = start & !(sz - 1);
        while base < end {
            let i = index(base, level);
            let e = t.load(i);
            let s = base.max(start);
            let en = end.min(base + sz);
            let full = s == base && en == base + sz;
            if level == 1 || (full && plan.leaf_here(level, base)) {
                if F::is_present(e) {
                    return Err(self.already_mapped(s, en - s));
                }
            } else {
                match F::decode(e, level) {
                    EntryKind::Absent => {
                        counts[level as usize - 1] += 1;
                        Self::plan_absent(plan, level - 1, s, en, counts);
                    }
                    EntryKind::Leaf(_) => return Err(self.already_mapped(s, en - s)),
                    EntryKind::Table(c) => {
                        self.plan_map(plan, level - 1, Some(c), s, en, counts)?
                    }
                }
            }
            base += sz;
        }
        Ok(())
    }

    /// [`Self::plan_map`] under a table at `level` that does not exist yet: nothing
    /// there can conflict, only the tables to create are counted. Every whole slot of
    /// a level becomes a leaf, or none does (the alignment of `base + delta` is the
    /// same for all of them), so a run of leaf slots is skipped at once.
    fn plan_absent(plan: &RangePlan, level: u8, start: usize, end: usize, counts: &mut [usize; 4]) {
        if level == 1 || start >= end {
            return;
        }
        let sz = lsize(level);
        let whole_slots_are_leaves = plan.leaf_here(level, 0);
        let mut base = start & !(sz - 1);
        while base < end {
            let s = base.max(start);
            let en = end.min(base + sz);
            if s == base && en == base + sz && whole_slots_are_leaves {
                // Every whole slot up to the last one in the range: leaves.
                base = (end & !(sz - 1)).max(base + sz);
                continue;
            }
            counts[level as usize - 1] += 1;
            Self::plan_absent(plan, level - 1, s, en, counts);
            base += sz;
        }
    }

    /// The error for a conflict in `[start, start + len)`: names the first mapped
    /// address there.
    fn already_mapped(&self, start: usize, len: usize) -> TableError {
        let first = memory_set::AddrRange::from_start_size(GuestPhysAddr::new(start), len)
            .and_then(|r| self.leaves_in(r).next())
            .map_or(start, |l| l.gpa.as_usize().max(start));
        TableError::AlreadyMapped {
            gpa: GuestPhysAddr::new(first),
        }
    }

    /// Maps the next run at `cur`: the largest leaf size allowed there, as many
    /// leaves as fit in one leaf table and in `[cur, end)`. Returns the bytes mapped.
    #[inline]
    fn map_step(
        &mut self,
        reserve: &mut Reserve,
        plan: &RangePlan,
        cur: usize,
        end: usize,
        bits: &[u64; 4],
    ) -> Result<usize, TableError> {
        let h = cur.wrapping_add(plan.delta);
        let rem = end - cur;
        let fits = |size: usize| (cur | h) & (size - 1) == 0 && rem >= size;
        if plan.max_level >= 3 && fits(Size1G::SIZE) {
            let root = self.root;
            self.fill_run::<Size1G>(reserve, root, cur, h, end, bits[3])
        } else if plan.max_level >= 2 && fits(Size2M::SIZE) {
            let pdpt = Size1G::build_chain(self, reserve, GuestPhysAddr::new(cur))?.frame;
            self.fill_run::<Size2M>(reserve, pdpt, cur, h, end, bits[2])
        } else {
            let pd = Size2M::build_chain(self, reserve, GuestPhysAddr::new(cur))?.frame;
            self.fill_run::<Size4K>(reserve, pd, cur, h, end, bits[1])
        }
    }

    /// Writes the run of `S` leaves starting at `cur` (to `h`) into the table under
    /// `parent`'s entry for `cur`, creating that table filled (then linking it) when
    /// it does not exist. Returns the bytes mapped.
    #[inline]
    fn fill_run<S: MapSize>(
        &mut self,
        reserve: &mut Reserve,
        parent: HostPhysAddr,
        cur: usize,
        h: usize,
        end: usize,
        bits: u64,
    ) -> Result<usize, TableError> {
        let parent_level = S::LEVEL + 1;
        let pt = self.tbl(parent);
        let pi = index(cur, parent_level);
        let i0 = index(cur, S::LEVEL);
        let n = (ENTRIES - i0).min((end - cur) / S::SIZE);
        let first = bits | h as u64;
        match F::decode(pt.load(pi), parent_level) {
            EntryKind::Absent => {
                let f = take_frame(reserve, &self.mapper, S::LEVEL)?;
                self.tbl(f).fill_fresh(i0, n, first, S::SIZE as u64);
                pt.store_release(pi, F::table_entry(f));
                self.note_linked(pt, parent_level, pi, f);
            }
            EntryKind::Table(f) => {
                let t = self.tbl(f);
                let mut e = first;
                for i in i0..i0 + n {
                    debug_assert!(!F::is_present(t.load(i)));
                    t.store(i, e);
                    e += S::SIZE as u64;
                }
            }
            // The plan found no leaf in the way.
            EntryKind::Leaf(_) => return Err(self.already_mapped(cur, end - cur)),
        }
        self.leaves[S::LEVEL as usize - 1] += n;
        Ok(n * S::SIZE)
    }
}
