//! [`Stage2Table`]: a 4-level stage-2 table in either format.
//!
//! Invariants (checked by [`Stage2Table::validate`]):
//! * every table entry points at a frame this table allocated and owns exclusively;
//! * no table below the root is empty (unmap frees tables it empties);
//! * every leaf is allowed by the capabilities and encodes valid attributes;
//! * the counters (`table_frames`, per-size leaf counts) match the tree.
//!
//! The hardware may walk the table while it changes (other vCPUs running): new
//! tables are filled before they are linked (release stores), every intermediate
//! state is a valid table, and frames that leave the table are released only
//! through the returned [`Flush`](crate::flush::Flush), after the caller's invalidation.

mod cursor;
mod error;
mod hw;
mod map;
mod raw;
mod reserve;
mod shortcut;
#[cfg(test)]
mod tests;
mod unmap;
mod walk;

use core::marker::PhantomData;

use memory_set::{GuestPhysAddr, HostPhysAddr, MemoryAddr};

use crate::caps::Stage2Caps;
use crate::format::{ADDR_MASK, EntryKind, level_size};
use crate::format::{LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, LeafTable, MapSize};
use crate::validate::ValidationError;

use raw::{Tbl, take_frame};
use shortcut::Shortcuts;

pub use cursor::TranslateCursor;
pub use error::TableError;
pub use walk::LeafIter;

/// Entries per table.
pub const ENTRIES: usize = 512;

/// The result of [`Stage2Table::translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The host-physical address the GPA translates to.
    pub hpa: HostPhysAddr,
    /// The leaf's attributes.
    pub attr: LeafAttr,
    /// The leaf's size.
    pub size: LeafSize,
    /// The first GPA the leaf maps.
    pub leaf_gpa: GuestPhysAddr,
}

/// One leaf, as [`Stage2Table::leaves`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The first GPA the leaf maps.
    pub gpa: GuestPhysAddr,
    /// The first HPA it maps to.
    pub hpa: HostPhysAddr,
    /// Its attributes.
    pub attr: LeafAttr,
    /// Its size.
    pub size: LeafSize,
    /// The accessed flag (always false without A/D support).
    pub accessed: bool,
    /// The dirty flag (always false without A/D support).
    pub dirty: bool,
}

/// A stage-2 translation table in format `F`, reached through mapper `M`.
///
/// Frames come from the [`FrameAlloc`] passed to each operation (always the same
/// pool for one table) and leave only through [`Flush`](crate::flush::Flush) tokens.
pub struct Stage2Table<F: Stage2Format, M: PhysMapper> {
    root: HostPhysAddr,
    mapper: M,
    caps: Stage2Caps,
    tables: usize,
    leaves: [usize; 3],
    generation: u64,
    /// Views of the upper tables for `translate` (kept in step by
    /// [`Stage2Table::note_linked`] and [`Stage2Table::note_freed`]).
    shortcuts: Shortcuts,
    _format: PhantomData<F>,
}

impl<F: Stage2Format, M: PhysMapper> core::fmt::Debug for Stage2Table<F, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stage2Table")
            .field("format", &F::NAME)
            .field("root", &self.root)
            .field("tables", &self.tables)
            .field("leaves", &self.leaves)
            .finish()
    }
}

/// The index of `gpa`'s entry in a table at `level`.
#[inline]
pub(crate) const fn index(gpa: usize, level: u8) -> usize {
    (gpa >> (12 + 9 * (level as u32 - 1))) & (ENTRIES - 1)
}

/// Bytes covered by one entry at `level`.
#[inline]
pub(crate) const fn lsize(level: u8) -> usize {
    level_size(level) as usize
}

/// The GPA width a 4-level walk can reach.
const WALK_BITS: u8 = 48;

impl<F: Stage2Format, M: PhysMapper> Stage2Table<F, M> {
    /// An empty table: allocates and zeroes the root.
    pub fn new(
        mapper: M,
        alloc: &mut (impl FrameAlloc + ?Sized),
        caps: Stage2Caps,
    ) -> Result<Self, TableError> {
        let root = take_frame(alloc, &mapper, 4)?;
        Tbl::of(&mapper, root).zero();
        Ok(Self {
            root,
            mapper,
            caps,
            tables: 1,
            leaves: [0; 3],
            generation: 0,
            shortcuts: Shortcuts::new(caps.max_phys_bits.min(WALK_BITS)),
            _format: PhantomData,
        })
    }

    /// Records that the table `child` was just linked into entry `i` of `parent`
    /// (at `parent_level`).
    #[inline]
    pub(crate) fn note_linked(
        &mut self,
        parent: Tbl,
        parent_level: u8,
        i: usize,
        child: HostPhysAddr,
    ) {
        self.tables += 1;
        if Shortcuts::watches(parent_level) {
            let (root, child) = (self.tbl(self.root), self.tbl(child));
            self.shortcuts.linked(root, parent, parent_level, i, child);
        }
    }

    /// Records that the table under entry `i` of `parent` (at `parent_level`) was
    /// unlinked; it is freed with the flush.
    #[inline]
    pub(crate) fn note_freed(&mut self, parent: Tbl, parent_level: u8, i: usize) {
        self.tables -= 1;
        if Shortcuts::watches(parent_level) {
            let root = self.tbl(self.root);
            self.shortcuts.freed(root, parent, parent_level, i);
        }
    }

    /// Whether the shortcuts of `translate` show the tables of the tree (for the
    /// validator).
    pub(crate) fn shortcuts_agree(&self) -> bool {
        let table_at = |t: Tbl, i: usize, level: u8| match F::decode(t.load(i), level) {
            EntryKind::Table(c) => Some(self.tbl(c)),
            _ => None,
        };
        let low = table_at(self.tbl(self.root), 0, 4);
        self.shortcuts
            .agrees(low, |k| low.and_then(|v| table_at(v, k, 3)))
    }

    /// The root table's frame.
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// The hardware root pointer (EPTP or nCR3).
    pub fn root_pointer(&self) -> u64 {
        F::root_pointer(self.root, &self.caps)
    }

    /// The capabilities the table was built for.
    pub fn caps(&self) -> &Stage2Caps {
        &self.caps
    }

    /// The mapper.
    pub fn mapper(&self) -> &M {
        &self.mapper
    }

    /// Table frames in use, root included.
    pub fn table_frames(&self) -> usize {
        self.tables
    }

    /// The number of leaves of `size`.
    pub fn leaf_count(&self, size: LeafSize) -> usize {
        self.leaves[size.index()]
    }

    /// GPAs must be below `2^gpa_bits()`.
    pub fn gpa_bits(&self) -> u8 {
        self.caps.max_phys_bits.min(WALK_BITS)
    }

    #[inline]
    pub(crate) fn tbl(&self, frame: HostPhysAddr) -> Tbl {
        Tbl::of(&self.mapper, frame)
    }

    /// Checks `[gpa, gpa + size)` lies in the stage-2 space.
    pub(crate) fn check_gpa(&self, gpa: GuestPhysAddr, size: usize) -> Result<(), TableError> {
        let bits = self.gpa_bits();
        let limit = 1usize << bits;
        if gpa.as_usize() >= limit {
            return Err(TableError::OutOfRange {
                gpa,
                max_bits: bits,
            });
        }
        if size > limit - gpa.as_usize() {
            return Err(TableError::OutOfRange {
                gpa: GuestPhysAddr::new(limit),
                max_bits: bits,
            });
        }
        Ok(())
    }

    /// Checks `[hpa, hpa + size)` fits the entry address field.
    pub(crate) fn check_hpa(&self, hpa: HostPhysAddr, size: usize) -> Result<(), TableError> {
        let bits = self
            .caps
            .host_phys_bits
            .min(Stage2Caps::ARCH_HOST_PHYS_BITS);
        let limit = 1u64 << bits;
        let ok = hpa.as_u64() < limit && (size as u64) <= limit - hpa.as_u64();
        if ok {
            Ok(())
        } else {
            Err(TableError::HostOutOfRange { hpa })
        }
    }

    pub(crate) fn check_aligned(value: usize, align: usize) -> Result<(), TableError> {
        if value & (align - 1) == 0 {
            Ok(())
        } else {
            Err(TableError::Unaligned { value, align })
        }
    }

    /// Walks from the root towards `g` down to the table at `level` (4 is the root),
    /// reading only: `Ok` with that table's frame when every table on the way exists,
    /// else the level and kind (absent or leaf) of the entry that stopped the walk.
    #[inline]
    pub(crate) fn descend(&self, g: usize, level: u8) -> Result<HostPhysAddr, (u8, EntryKind)> {
        let mut frame = self.root;
        let mut at = 4u8;
        while at > level {
            match F::decode(self.tbl(frame).load(index(g, at)), at) {
                EntryKind::Table(t) => {
                    frame = t;
                    at -= 1;
                }
                stop => return Err((at, stop)),
            }
        }
        Ok(frame)
    }

    /// [`MapSize::ensure_chain_for`]: plan, reserve, then build.
    pub(crate) fn ensure_chain<S: MapSize>(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        gpa: GuestPhysAddr,
    ) -> Result<LeafTable<S>, TableError> {
        self.check_gpa(gpa, 1)?;
        let g = gpa.as_usize();
        let mut counts = [0usize; 4];
        // A missing table, or a leaf to split: one new table per level below.
        if let Err((level, _)) = self.descend(g, S::LEVEL) {
            for l in S::LEVEL..level {
                counts[l as usize] = 1;
            }
        }
        let mut reserve = reserve::Reserve::fill(alloc, &self.mapper, counts)?;
        let result = S::build_chain(self, &mut reserve, gpa);
        debug_assert!(result.is_ok() && reserve.is_empty());
        reserve.release(alloc);
        result
    }

    /// The table one level below `parent`'s entry for `gpa`, creating it (zeroed)
    /// or splitting a leaf in the way. See [`MapSize::ensure_chain_for`].
    pub(crate) fn next_table<S: MapSize>(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        parent: HostPhysAddr,
        parent_level: u8,
        gpa: GuestPhysAddr,
    ) -> Result<LeafTable<S>, TableError> {
        debug_assert_eq!(parent_level, S::LEVEL + 1);
        let pt = self.tbl(parent);
        let i = index(gpa.as_usize(), parent_level);
        let e = pt.load(i);
        let frame = match F::decode(e, parent_level) {
            EntryKind::Table(t) => t,
            EntryKind::Absent => {
                let t = take_frame(alloc, &self.mapper, S::LEVEL)?;
                self.tbl(t).zero();
                pt.store_release(i, F::table_entry(t));
                self.note_linked(pt, parent_level, i, t);
                t
            }
            EntryKind::Leaf(h) => self.split_leaf(alloc, pt, i, parent_level, e, h)?,
        };
        Ok(LeafTable {
            frame,
            span_start: GuestPhysAddr::new(gpa.as_usize() & !(lsize(parent_level) - 1)),
            generation: self.generation,
            root: self.root,
            _size: PhantomData,
        })
    }

    /// Replaces the leaf `e` (mapping `h`) in entry `i` of `pt` (at `level`) by a
    /// full table of the next smaller leaves with the same attributes and A/D flags.
    pub(crate) fn split_leaf(
        &mut self,
        alloc: &mut (impl FrameAlloc + ?Sized),
        pt: Tbl,
        i: usize,
        level: u8,
        e: u64,
        h: HostPhysAddr,
    ) -> Result<HostPhysAddr, TableError> {
        let child_level = level - 1;
        let attr = F::leaf_attr(e, level);
        let bits = F::leaf_bits(attr, child_level, &self.caps)? | (e & (F::ACCESSED | F::DIRTY));
        let t = take_frame(alloc, &self.mapper, child_level)?;
        let ct = self.tbl(t);
        let step = lsize(child_level) as u64;
        let base = h.as_u64();
        for k in 0..ENTRIES {
            ct.store(k, bits | (base + k as u64 * step));
        }
        pt.store_release(i, F::table_entry(t));
        self.note_linked(pt, level, i, t);
        self.leaves[level as usize - 1] -= 1;
        self.leaves[child_level as usize - 1] += ENTRIES;
        Ok(t)
    }

    /// Writes one leaf into a table returned by `ensure_chain_for`.
    pub(crate) fn write_leaf<S: MapSize>(
        &mut self,
        leaf_table: &LeafTable<S>,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        attr: LeafAttr,
    ) -> Result<(), TableError> {
        let in_span = gpa
            .checked_offset_from(leaf_table.span_start)
            .is_some_and(|off| off < S::SIZE * ENTRIES);
        if leaf_table.generation != self.generation || leaf_table.root != self.root || !in_span {
            return Err(TableError::StaleLeafTable);
        }
        let entry = self.checked_leaf::<S>(gpa, hpa, attr)?;
        let t = self.tbl(leaf_table.frame);
        let i = index(gpa.as_usize(), S::LEVEL);
        if F::is_present(t.load(i)) {
            return Err(TableError::AlreadyMapped { gpa });
        }
        t.store(i, entry);
        self.leaves[S::LEVEL as usize - 1] += 1;
        Ok(())
    }

    /// The leaf entry of size `S` mapping `gpa` to `hpa` with `attr`, after checking
    /// that the hardware has such leaves, both addresses are aligned to `S::SIZE`
    /// and in range, and `attr` is valid for the format.
    #[inline]
    pub(crate) fn checked_leaf<S: MapSize>(
        &self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        attr: LeafAttr,
    ) -> Result<u64, TableError> {
        if !self.caps.allows(S::LEAF_SIZE) {
            return Err(TableError::UnsupportedLeaf { size: S::LEAF_SIZE });
        }
        Self::check_aligned(gpa.as_usize(), S::SIZE)?;
        Self::check_aligned(hpa.as_usize(), S::SIZE)?;
        self.check_gpa(gpa, S::SIZE)?;
        self.check_hpa(hpa, S::SIZE)?;
        let bits = F::leaf_bits(attr, S::LEVEL, &self.caps)?;
        Ok(bits | hpa.as_u64())
    }

    /// Where `gpa` translates to, if mapped.
    ///
    /// The walk is unrolled (each level's decoding is known at compile time) and the
    /// leaf's attributes are decoded once, at the end; always inlined, so a caller that
    /// needs only some fields of the answer does not pay for the others. For many
    /// lookups of nearby addresses, [`Stage2Table::translate_cursor`] is faster.
    #[inline(always)]
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<Translation> {
        let g = gpa.as_usize();
        if g >= self.shortcuts.pd_limit {
            return self.translate_from_top(g);
        }
        // Below `PD_SLOTS` GiB (every guest of a few GiB), the page directory is kept:
        // two dependent loads less. No directory (none yet, or a 1 GiB leaf) shows as
        // a table of absent entries, and the full walk decides.
        let e2 = self.shortcuts.pd_view(g).load(index(g, 2));
        if !F::is_present(e2) {
            return self.translate_from_top(g);
        }
        self.translate_from_2(e2, g)
    }

    /// [`Stage2Table::translate`] from the root (from the kept level-3 table below
    /// 512 GiB).
    #[inline]
    fn translate_from_top(&self, g: usize) -> Option<Translation> {
        let e3 = if g < self.shortcuts.low_limit {
            // An absent entry 0 shows as a table of absent entries.
            self.shortcuts.low_view().load(index(g, 3))
        } else {
            if g >> self.gpa_bits() != 0 {
                return None;
            }
            // Level 4 (PML4) entries are never leaves.
            let e4 = self.tbl(self.root).load(index(g, 4));
            if !F::is_present(e4) {
                return None;
            }
            self.next_entry(e4, g, 3)
        };
        if !F::is_present(e3) {
            return None;
        }
        if e3 & F::HUGE_BIT != 0 {
            return Self::leaf_translation(e3, 3, g);
        }
        let e2 = self.next_entry(e3, g, 2);
        if !F::is_present(e2) {
            return None;
        }
        self.translate_from_2(e2, g)
    }

    /// The rest of the walk from the present level-2 entry `e2`.
    #[inline(always)]
    fn translate_from_2(&self, e2: u64, g: usize) -> Option<Translation> {
        if e2 & F::HUGE_BIT != 0 {
            return Self::leaf_translation(e2, 2, g);
        }
        let e1 = self.next_entry(e2, g, 1);
        if !F::is_present(e1) {
            return None;
        }
        Self::leaf_translation(e1, 1, g)
    }

    /// The entry for `g` at `level` in the table that the present non-leaf entry `e`
    /// (one level up) points at.
    #[inline(always)]
    fn next_entry(&self, e: u64, g: usize, level: u8) -> u64 {
        self.tbl(HostPhysAddr::new((e & ADDR_MASK) as usize))
            .load(index(g, level))
    }

    /// The translation of `g` through the present leaf `e` at `level`.
    #[inline(always)]
    fn leaf_translation(e: u64, level: u8, g: usize) -> Option<Translation> {
        let sz = lsize(level);
        let base = (e & ADDR_MASK) as usize & !(sz - 1);
        Some(Translation {
            hpa: HostPhysAddr::new(base + (g & (sz - 1))),
            attr: F::leaf_attr(e, level),
            size: LeafSize::from_level(level)?,
            leaf_gpa: GuestPhysAddr::new(g & !(sz - 1)),
        })
    }

    /// Checks the table the way the hardware would, plus this type's invariants
    /// (see [`crate::validate`]).
    pub fn validate(&self) -> Result<(), ValidationError> {
        crate::validate::validate(self).map(|_| ())
    }

    pub(crate) fn counters(&self) -> (usize, [usize; 3]) {
        (self.tables, self.leaves)
    }
}
