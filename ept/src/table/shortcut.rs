//! Views of the upper tables kept between operations, so that
//! [`Stage2Table::translate`](super::Stage2Table::translate) of a GPA below
//! [`PD_SLOTS`] GiB starts at the page directory (level 2) instead of the root.
//!
//! A random lookup is bound by how many walks the CPU keeps in flight: each is a
//! chain of dependent loads ending in a cache miss at the leaf level, and the length
//! of the loop body decides how many fit in the reorder window. Starting two levels
//! down takes two dependent loads and their checks off every lookup.
//!
//! The views follow the table: every operation that links a table under the root's
//! entry 0 or under the entries `0..PD_SLOTS` of that level-3 table, or frees one,
//! reports it ([`Shortcuts::linked`], [`Shortcuts::freed`]); the validator compares
//! them with the tree ([`Shortcuts::agrees`]). A slot without a page directory (absent,
//! or a 1 GiB leaf) shows a static table of absent entries, so the fast path takes no
//! extra branch and falls back to the full walk when it finds nothing.

use super::raw::{HeldTbl, Tbl};

/// GiB of guest-physical space whose page directories are kept (a slot each).
pub(crate) const PD_SLOTS: usize = 64;

/// The GPA width one root entry covers (512 GiB).
const LOW_BITS: u8 = 39;

/// The views (see the module).
pub(crate) struct Shortcuts {
    /// The level-3 table under the root's entry 0, or no table.
    low_view: HeldTbl,
    /// The page directory under entry `k` of that table, or no table.
    pd: [HeldTbl; PD_SLOTS],
    /// GPAs below this start at `low_view`: `min(2^39, 2^gpa_bits)`.
    pub(crate) low_limit: usize,
    /// GPAs below this start at `pd`: `min(PD_SLOTS GiB, 2^gpa_bits)`.
    pub(crate) pd_limit: usize,
}

impl Shortcuts {
    /// No tables below the root yet, for a table of `gpa_bits`.
    pub(crate) fn new(gpa_bits: u8) -> Self {
        let limit = 1usize << gpa_bits;
        Shortcuts {
            low_view: HeldTbl::empty(),
            pd: [HeldTbl::empty(); PD_SLOTS],
            low_limit: limit.min(1 << LOW_BITS),
            pd_limit: limit.min(PD_SLOTS << 30),
        }
    }

    /// The view to start a GPA below `low_limit` at (level 3).
    #[inline(always)]
    pub(crate) fn low_view(&self) -> &HeldTbl {
        &self.low_view
    }

    /// The view to start a GPA below `pd_limit` at (level 2).
    #[inline(always)]
    pub(crate) fn pd_view(&self, g: usize) -> &HeldTbl {
        &self.pd[(g >> 30) & (PD_SLOTS - 1)]
    }

    /// Whether a table linked or freed under a table at `parent_level` can change a
    /// view (only those under the root and under a level-3 table): checked inline, so
    /// the page tables of a range cost no call.
    #[inline(always)]
    pub(crate) fn watches(parent_level: u8) -> bool {
        parent_level >= 3
    }

    /// The table `child` was linked into entry `i` of `parent` at `parent_level`;
    /// `root` is the table's root. Out of line: inlined, it weighed on the register
    /// allocation of the loops around it (unmap's leaf loop).
    #[inline(never)]
    pub(crate) fn linked(
        &mut self,
        root: Tbl,
        parent: Tbl,
        parent_level: u8,
        i: usize,
        child: Tbl,
    ) {
        match parent_level {
            4 if i == 0 && parent.same(root) => self.low_view = HeldTbl::of(child),
            3 if i < PD_SLOTS && self.low_view.shows(Some(parent)) => {
                self.pd[i] = HeldTbl::of(child);
            }
            _ => {}
        }
    }

    /// The table under entry `i` of `parent` at `parent_level` was unlinked (out of
    /// line, as `linked`).
    #[inline(never)]
    pub(crate) fn freed(&mut self, root: Tbl, parent: Tbl, parent_level: u8, i: usize) {
        match parent_level {
            4 if i == 0 && parent.same(root) => {
                self.low_view = HeldTbl::empty();
                // A level-3 table is freed only once empty: no directory is left.
                self.pd = [HeldTbl::empty(); PD_SLOTS];
            }
            3 if i < PD_SLOTS && self.low_view.shows(Some(parent)) => {
                self.pd[i] = HeldTbl::empty();
            }
            _ => {}
        }
    }

    /// Whether the views show the tables the tree holds: `low` is the table under the
    /// root's entry 0, and slot `k` shows `pd_of(k)`.
    pub(crate) fn agrees(
        &self,
        low: Option<Tbl>,
        mut pd_of: impl FnMut(usize) -> Option<Tbl>,
    ) -> bool {
        self.low_view.shows(low) && (0..PD_SLOTS).all(|k| self.pd[k].shows(pd_of(k)))
    }
}
