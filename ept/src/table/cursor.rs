//! [`TranslateCursor`]: many translations that resume the walk at the last tables
//! reached, so consecutive pages cost one entry read each instead of a walk from the root.

use memory_set::{GuestPhysAddr, HostPhysAddr};

use super::raw::Tbl;
use super::{Stage2Table, Translation, index};
use crate::format::{ADDR_MASK, Stage2Format};
use crate::frame::PhysMapper;

/// Translates addresses one after the other like [`Stage2Table::translate`], remembering
/// the last page table (level 1) and page directory (level 2) its walks passed through:
/// a lookup inside the remembered page table's 2 MiB costs one entry read, one inside the
/// remembered directory's 1 GiB two, any other a walk from the root.
/// Made by [`Stage2Table::translate_cursor`]; it borrows the table, so no table frame
/// can be freed while it lives. Entries are read afresh on every lookup.
pub struct TranslateCursor<'a, F: Stage2Format, M: PhysMapper> {
    table: &'a Stage2Table<F, M>,
    /// GPAs must be below `1 << gpa_bits`.
    gpa_bits: u8,
    /// `gpa >> 21` of the addresses the remembered page table maps (`usize::MAX`: none).
    pt_tag: usize,
    pt: Tbl,
    /// `gpa >> 30` of the addresses the remembered directory maps (`usize::MAX`: none).
    pd_tag: usize,
    pd: Tbl,
}

/// `log2` of the bytes a page table (level 1) maps.
const PT_SHIFT: u32 = 21;
/// `log2` of the bytes a page directory (level 2) maps.
const PD_SHIFT: u32 = 30;
/// A tag no address has (GPAs have at most 48 bits).
const NONE: usize = usize::MAX;

impl<F: Stage2Format, M: PhysMapper> Stage2Table<F, M> {
    /// A cursor for many translations in a row (see [`TranslateCursor`]).
    #[inline]
    pub fn translate_cursor(&self) -> TranslateCursor<'_, F, M> {
        let root = self.tbl(self.root);
        TranslateCursor {
            table: self,
            gpa_bits: self.gpa_bits(),
            pt_tag: NONE,
            pt: root,
            pd_tag: NONE,
            pd: root,
        }
    }
}

impl<F: Stage2Format, M: PhysMapper> TranslateCursor<'_, F, M> {
    /// Where `gpa` translates to, if mapped: the same answer as
    /// [`Stage2Table::translate`].
    #[inline(always)]
    pub fn translate(&mut self, gpa: GuestPhysAddr) -> Option<Translation> {
        let g = gpa.as_usize();
        // A remembered table was reached by a walk for an address below the limit with
        // the same bits above its span (tags are only kept when the limit is above the
        // span), so `g` is below the limit too.
        if g >> PT_SHIFT == self.pt_tag {
            let e = self.pt.load(index(g, 1));
            if F::is_present(e) {
                return Stage2Table::<F, M>::leaf_translation(e, 1, g);
            }
        }
        self.walk(g)
    }

    /// The rest of [`TranslateCursor::translate`]: from the remembered directory or
    /// from the root, remembering the tables passed.
    #[inline]
    fn walk(&mut self, g: usize) -> Option<Translation> {
        if g >> self.gpa_bits != 0 {
            return None;
        }
        let keep = u32::from(self.gpa_bits) > PD_SHIFT;
        if g >> PD_SHIFT != self.pd_tag {
            let table = self.table;
            // Level 4 (PML4) entries are never leaves.
            let e4 = table.tbl(table.root).load(index(g, 4));
            if !F::is_present(e4) {
                return None;
            }
            let e3 = table.next_entry(e4, g, 3);
            if !F::is_present(e3) {
                return None;
            }
            if e3 & F::HUGE_BIT != 0 {
                return Stage2Table::<F, M>::leaf_translation(e3, 3, g);
            }
            self.pd = table.tbl(HostPhysAddr::new((e3 & ADDR_MASK) as usize));
            self.pd_tag = if keep { g >> PD_SHIFT } else { NONE };
        }
        let e2 = self.pd.load(index(g, 2));
        if !F::is_present(e2) {
            return None;
        }
        if e2 & F::HUGE_BIT != 0 {
            return Stage2Table::<F, M>::leaf_translation(e2, 2, g);
        }
        self.pt = self.table.tbl(HostPhysAddr::new((e2 & ADDR_MASK) as usize));
        self.pt_tag = if keep { g >> PT_SHIFT } else { NONE };
        let e1 = self.pt.load(index(g, 1));
        if !F::is_present(e1) {
            return None;
        }
        Stage2Table::<F, M>::leaf_translation(e1, 1, g)
    }
}

#[cfg(test)]
mod tests {
    use memory_set::{GuestPhysAddr, HostPhysAddr, PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4K};

    use crate::caps::Stage2Caps;
    use crate::format::{Access, Ept, LeafAttr, Npt, Stage2Format};
    use crate::frame::HeapArena;
    use crate::size::{LeafSize, Size1G, Size2M, Size4K};
    use crate::table::Stage2Table;

    /// Pretend target memory (never accessed).
    const T: usize = 0x80_0000_0000;

    /// Every lookup of a cursor, in an order that hits, misses and leaves its span in
    /// every way, answers what `translate` answers.
    fn agrees_with_translate<F: Stage2Format>(caps: Stage2Caps) {
        let mut a = HeapArena::new(64);
        let mut t = Stage2Table::<F, _>::new(a.clone(), &mut a, caps).unwrap();
        let g = GuestPhysAddr::new;
        let h = HostPhysAddr::new;
        let ram = LeafAttr::ram(Access::RWX);
        // Pages 0..8 and 10 of the first 2 MiB (a hole at 8, 9), a 2 MiB leaf at 4 MiB
        // next to a 4 KiB table at 6 MiB, a 1 GiB leaf at 2 GiB, nothing at 1 GiB.
        for p in (0..8).chain([10]) {
            let off = p * PAGE_SIZE_4K;
            let f = t
                .map_page::<Size4K>(&mut a, g(off), h(T + off), ram)
                .unwrap();
            assert!(f.is_empty());
        }
        let ro = LeafAttr::ram(Access::READ);
        // Every leaf maps somewhere else, so a lookup through the wrong table shows.
        let f = t.map_page::<Size2M>(&mut a, g(2 * PAGE_SIZE_2M), h(T + 8 * PAGE_SIZE_2M), ro);
        assert!(f.unwrap().is_empty());
        for p in 0..12 {
            let off = p * PAGE_SIZE_4K;
            let f = t.map_page::<Size4K>(
                &mut a,
                g(3 * PAGE_SIZE_2M + off),
                h(T + PAGE_SIZE_1G + off),
                ram,
            );
            assert!(f.unwrap().is_empty());
        }
        let f = t.map_page::<Size1G>(&mut a, g(2 * PAGE_SIZE_1G), h(T + 2 * PAGE_SIZE_1G), ram);
        assert!(f.unwrap().is_empty());
        let top = 1usize << t.gpa_bits();
        let mut gpas: alloc::vec::Vec<usize> = (0..12).map(|p| p * PAGE_SIZE_4K + 0x123).collect();
        gpas.extend([
            2 * PAGE_SIZE_2M + 0x4567,
            0x5000,
            3 * PAGE_SIZE_2M,
            3 * PAGE_SIZE_2M + 12 * PAGE_SIZE_4K,
            3 * PAGE_SIZE_2M + 5 * PAGE_SIZE_4K,
            0x5000,
            2 * PAGE_SIZE_2M + PAGE_SIZE_2M - 1,
            2 * PAGE_SIZE_1G + 0x3456_7890,
            2 * PAGE_SIZE_1G + 0x3456_7890 + PAGE_SIZE_2M,
            PAGE_SIZE_1G + 0x1000,
            PAGE_SIZE_1G + 0x2000,
            0x9000,
            top - 1,
            top,
            usize::MAX,
            0,
            3 * PAGE_SIZE_1G - 1,
            3 * PAGE_SIZE_1G,
            0x7fff,
        ]);
        let mut c = t.translate_cursor();
        let mut hits = 0;
        for &x in &gpas {
            let want = t.translate(g(x));
            assert_eq!(c.translate(g(x)), want, "gpa {x:#x}");
            hits += usize::from(want.is_some());
        }
        assert_eq!(hits, 20, "the order covers mapped and unmapped addresses");
        let tr = c.translate(g(2 * PAGE_SIZE_2M + 5)).unwrap();
        assert_eq!((tr.size, tr.attr), (LeafSize::Size2M, ro));
        let f = t.destroy();
        let _ = f.complete(|_| {}, &mut a);
        assert_eq!(a.in_use(), 0);
    }

    #[test]
    fn ept_cursor_agrees_with_translate() {
        agrees_with_translate::<Ept>(Stage2Caps::all());
    }

    #[test]
    fn npt_cursor_agrees_with_translate() {
        agrees_with_translate::<Npt>(Stage2Caps::npt(true));
    }
}
