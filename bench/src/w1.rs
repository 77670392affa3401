//! W1 and W2: 1 GiB of guest-physical space mapped in 4 KiB leaves (W1) or 2 MiB leaves
//! (W2): map, translate every 4 KiB page in GPA order, (W1) translate every page in a
//! random order, unmap with empty-table reclamation.
//!
//! Every contender implements [`Contender`] (one method per phase) and the driver times
//! the phases alike for all: W1 repeats map, translate, translate_random, unmap as one
//! pass; W2 repeats map + unmap and, separately, translate (its map and unmap are a
//! microsecond, its translate a millisecond).
//!
//! * `translate` is each contender's fastest way to look up consecutive pages: ours a
//!   [`ept::table::TranslateCursor`] (it resumes at the last leaf table), the anchors
//!   their only lookup (`query`, `translate`); `translate_random` is one independent
//!   lookup per page for everyone (ours: `Stage2Table::translate`).
//! * `page_table_multiarch` has no reclamation besides dropping the table: its unmap phase is
//!   `unmap_region` + drop (which frees every table frame).
//! * the `x86_64` crate: per-page `unmap` + `clean_up_addr_range` (frees empty tables).
//! * floor (map only): take and zero the table frames of the leaf level and write every
//!   entry (W1: 513 frames, 262,144 + 512 entries; W2: 1 frame, 512 entries).

use arceos_memory_addr::{PhysAddr as APhys, VirtAddr as AVirt};
use page_table_multiarch::MappingFlags;
use x86_64::structures::paging::mapper::{CleanUp, TranslateResult};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageSize, PageTableFlags, PhysFrame, Size2MiB, Size4KiB,
    Translate,
};

use crate::anchors::ptm::{self, PtmTable};
use crate::anchors::x86::{X86Frames, X86Table};
use crate::arena::{Arena, SIZE_2M, SIZE_4K};
use crate::harness::{Recorder, Who};
use crate::ours::OursW1;

/// Guest-physical start of the mapped gigabyte.
pub const GPA: usize = 0x4000_0000;
/// Host-physical start of the target (2 MiB- but not 1 GiB-aligned, so every contender
/// picks 2 MiB leaves at most). The target frames are never touched.
pub const HPA: usize = 0x1_0020_0000;
/// Bytes mapped.
pub const SIZE: usize = 1 << 30;
/// 4 KiB pages in [`SIZE`].
pub const PAGES: usize = SIZE / SIZE_4K;
/// 2 MiB leaves in [`SIZE`].
pub const LEAVES_2M: usize = SIZE / SIZE_2M;

/// `page_table_multiarch`.
pub const PTM: Who = Who::Anchor("page_table_multiarch");
/// `x86_64::OffsetPageTable`.
pub const X86: Who = Who::Anchor("x86_64");

/// Leaf size of a W1/W2 round.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Leaf {
    /// W1.
    Small,
    /// W2.
    Huge,
}

impl Leaf {
    fn name(self) -> &'static str {
        match self {
            Leaf::Small => "W1",
            Leaf::Huge => "W2",
        }
    }

    /// Pages mapped (units of the map and unmap phases).
    pub fn leaves(self) -> usize {
        match self {
            Leaf::Small => PAGES,
            Leaf::Huge => LEAVES_2M,
        }
    }

    fn bytes(self) -> usize {
        match self {
            Leaf::Small => SIZE_4K,
            Leaf::Huge => SIZE_2M,
        }
    }
}

/// XOR of the host address of every 4 KiB page: what a correct translate loop returns.
pub fn expected_translation_xor() -> usize {
    (0..PAGES).fold(0, |acc, i| acc ^ (HPA + i * SIZE_4K))
}

/// The host address page `i` (a 4 KiB page index) translates to.
#[inline(always)]
pub fn gpa_of(i: usize) -> usize {
    GPA + i * SIZE_4K
}

/// One contender's table for W1 and W2, driven phase by phase (each method is timed).
pub trait Contender {
    /// Who this is.
    const WHO: Who;
    /// Maps `[GPA, GPA + SIZE)` to `[HPA, ..)` with `leaf` leaves (the table is empty).
    fn map(&mut self, leaf: Leaf);
    /// XOR of the host address of every 4 KiB page, looked up in GPA order (the
    /// contender's fastest way to look up consecutive pages).
    fn translate_all(&mut self) -> usize;
    /// XOR of the host address of the pages `order` (indices), one lookup each.
    fn translate_each(&mut self, order: &[u32]) -> usize;
    /// Unmaps the gigabyte, freeing the tables it empties.
    fn unmap(&mut self, leaf: Leaf);
    /// Untimed, after `map`: the size of the leaf mapping `GPA`, in bytes.
    fn leaf_bytes(&mut self) -> usize;
    /// Untimed, after `unmap`: checks the table is empty and makes it ready to map again.
    fn reset(&mut self);
}

/// Ids of the phases of W1 or W2.
pub struct Ids {
    map: String,
    translate: String,
    translate_random: String,
    unmap: String,
}

impl Ids {
    fn of(leaf: Leaf) -> Self {
        let w = leaf.name();
        Ids {
            map: format!("{w}/map"),
            translate: format!("{w}/translate"),
            translate_random: format!("{w}/translate_random"),
            unmap: format!("{w}/unmap"),
        }
    }
}

/// One round of W1 or W2: every contender, in an order rotated by `round`; `order` is
/// the page order of `translate_random`.
pub fn round(rec: &mut Recorder, arena: &Arena, leaf: Leaf, order: &[u32], round: usize) {
    type Run = fn(&mut Recorder, &Arena, Leaf, &[u32]);
    let contenders: [(Who, Run); 4] = [
        (Who::Ours, |r, a, l, o| drive(r, &mut OursW1::new(a), l, o)),
        (PTM, |r, a, l, o| drive(r, &mut PtmW1::new(a), l, o)),
        (X86, |r, a, l, o| drive(r, &mut X86W1::new(a), l, o)),
        (Who::Floor, |r, a, l, _| floor_round(r, a, l)),
    ];
    for k in 0..contenders.len() {
        let (who, run) = contenders[(k + round) % contenders.len()];
        if rec.runs(who) {
            run(rec, arena, leaf, order);
        }
        assert_eq!(arena.in_use(), 0, "{leaf:?}: a contender leaked frames");
    }
}

/// Times the phases of `c`, each checked.
fn drive<C: Contender>(rec: &mut Recorder, c: &mut C, leaf: Leaf, order: &[u32]) {
    let ids = Ids::of(leaf);
    let n = leaf.leaves();
    let xor = expected_translation_xor();
    let map = |rec: &mut Recorder, c: &mut C, timed: bool| {
        if timed {
            rec.time(&ids.map, C::WHO, n, || c.map(leaf));
        } else {
            c.map(leaf);
        }
        assert_eq!(
            c.leaf_bytes(),
            leaf.bytes(),
            "{:?} chose another leaf size",
            C::WHO
        );
    };
    let unmap = |rec: &mut Recorder, c: &mut C, timed: bool| {
        if timed {
            rec.time(&ids.unmap, C::WHO, n, || c.unmap(leaf));
        } else {
            c.unmap(leaf);
        }
        c.reset();
    };
    // Map and unmap back to back (as the floor runs), then the lookups over a mapped
    // table: W2's map and unmap take a microsecond, its lookups a millisecond.
    rec.repeat(|rec| {
        map(rec, c, true);
        unmap(rec, c, true);
    });
    rec.repeat(|rec| {
        map(rec, c, false);
        let got = rec.time(&ids.translate, C::WHO, PAGES, || c.translate_all());
        assert_eq!(got, xor, "{:?}: translate", C::WHO);
        if leaf == Leaf::Small {
            let got = rec.time(&ids.translate_random, C::WHO, PAGES, || {
                c.translate_each(order)
            });
            assert_eq!(got, xor, "{:?}: translate_random", C::WHO);
        }
        unmap(rec, c, false);
    });
}

/// `page_table_multiarch`: `map_region`, `query`, `unmap_region` + drop (its only
/// reclamation: dropping the table frees every table frame).
struct PtmW1 {
    pt: Option<PtmTable>,
}

impl PtmW1 {
    fn new(arena: &Arena) -> Self {
        ptm::install(arena);
        PtmW1 {
            pt: Some(PtmTable::try_new().expect("root")),
        }
    }

    fn pt(&self) -> &PtmTable {
        self.pt.as_ref().expect("a table between reset and unmap")
    }

    #[inline(always)]
    fn query(&self, i: usize) -> usize {
        let (pa, _, _) = self.pt().query(AVirt::from(gpa_of(i))).expect("mapped");
        pa.as_usize()
    }
}

impl Contender for PtmW1 {
    const WHO: Who = PTM;

    fn map(&mut self, leaf: Leaf) {
        let flags = MappingFlags::READ | MappingFlags::WRITE;
        let pt = self.pt.as_mut().expect("a table");
        pt.cursor()
            .map_region(
                AVirt::from(GPA),
                |va| APhys::from(HPA + (va.as_usize() - GPA)),
                SIZE,
                flags,
                leaf == Leaf::Huge,
            )
            .expect("map");
    }

    fn translate_all(&mut self) -> usize {
        (0..PAGES).fold(0, |acc, i| acc ^ self.query(i))
    }

    fn translate_each(&mut self, order: &[u32]) -> usize {
        order.iter().fold(0, |acc, &i| acc ^ self.query(i as usize))
    }

    fn unmap(&mut self, _: Leaf) {
        let mut pt = self.pt.take().expect("a table");
        pt.cursor()
            .unmap_region(AVirt::from(GPA), SIZE)
            .expect("unmap");
        drop(pt);
    }

    fn leaf_bytes(&mut self) -> usize {
        self.pt().query(AVirt::from(GPA)).expect("mapped").2 as usize
    }

    fn reset(&mut self) {
        self.pt = Some(PtmTable::try_new().expect("root"));
    }
}

/// The `x86_64` crate: `map_to`, `translate`, `unmap` + `clean_up_addr_range`.
struct X86W1 {
    table: X86Table,
    frames: X86Frames,
}

impl X86W1 {
    fn new(arena: &Arena) -> Self {
        X86W1 {
            table: X86Table::new(arena),
            frames: X86Frames(arena.clone()),
        }
    }
}

/// `x86_64::VirtAddr` of `GPA + off`.
#[inline(always)]
fn x86_va(off: usize) -> x86_64::VirtAddr {
    x86_64::VirtAddr::new((GPA + off) as u64)
}

/// The host address `va` translates to in `m`.
#[inline(always)]
fn x86_translate(m: &OffsetPageTable<'_>, va: x86_64::VirtAddr) -> usize {
    match m.translate(va) {
        TranslateResult::Mapped { frame, offset, .. } => {
            (frame.start_address().as_u64() + offset) as usize
        }
        other => panic!("x86_64: {va:?} not mapped: {other:?}"),
    }
}

/// `map_to` of every `S` page of the gigabyte (the target frames are never accessed).
fn x86_map_all<S: PageSize + std::fmt::Debug>(m: &mut OffsetPageTable<'_>, frames: &mut X86Frames)
where
    for<'a> OffsetPageTable<'a>: Mapper<S>,
{
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    for off in (0..SIZE).step_by(S::SIZE as usize) {
        let pa = x86_64::PhysAddr::new((HPA + off) as u64);
        // SAFETY: the table is never loaded into a CPU, so mapping any frame cannot break
        // memory safety; the target frames are never accessed through it.
        unsafe {
            m.map_to(
                Page::<S>::containing_address(x86_va(off)),
                PhysFrame::<S>::containing_address(pa),
                flags,
                frames,
            )
        }
        .expect("map")
        .ignore();
    }
}

/// `unmap` of every `S` page of the gigabyte, then `clean_up_addr_range`.
fn x86_unmap_all<S: PageSize + std::fmt::Debug>(m: &mut OffsetPageTable<'_>, frames: &mut X86Frames)
where
    for<'a> OffsetPageTable<'a>: Mapper<S>,
{
    for off in (0..SIZE).step_by(S::SIZE as usize) {
        m.unmap(Page::<S>::containing_address(x86_va(off)))
            .expect("unmap")
            .1
            .ignore();
    }
    let range = Page::range_inclusive(
        Page::<Size4KiB>::containing_address(x86_va(0)),
        Page::containing_address(x86_va(SIZE - 1)),
    );
    // SAFETY: every table frame of this mapper is used once, by this table only.
    unsafe { m.clean_up_addr_range(range, frames) };
}

impl Contender for X86W1 {
    const WHO: Who = X86;

    fn map(&mut self, leaf: Leaf) {
        let frames = &mut self.frames;
        self.table.with_mapper(|m| match leaf {
            Leaf::Small => x86_map_all::<Size4KiB>(m, frames),
            Leaf::Huge => x86_map_all::<Size2MiB>(m, frames),
        })
    }

    fn translate_all(&mut self) -> usize {
        self.table.with_mapper(|m| {
            (0..PAGES).fold(0, |acc, i| acc ^ x86_translate(m, x86_va(i * SIZE_4K)))
        })
    }

    fn translate_each(&mut self, order: &[u32]) -> usize {
        self.table.with_mapper(|m| {
            order.iter().fold(0, |acc, &i| {
                acc ^ x86_translate(m, x86_va(i as usize * SIZE_4K))
            })
        })
    }

    fn unmap(&mut self, leaf: Leaf) {
        let frames = &mut self.frames;
        self.table.with_mapper(|m| match leaf {
            Leaf::Small => x86_unmap_all::<Size4KiB>(m, frames),
            Leaf::Huge => x86_unmap_all::<Size2MiB>(m, frames),
        })
    }

    fn leaf_bytes(&mut self) -> usize {
        self.table.with_mapper(|m| match m.translate(x86_va(0)) {
            TranslateResult::Mapped { frame, .. } => frame.size() as usize,
            other => panic!("x86_64: GPA not mapped: {other:?}"),
        })
    }

    fn reset(&mut self) {}
}

fn floor_round(rec: &mut Recorder, arena: &Arena, leaf: Leaf) {
    rec.repeat(|rec| match leaf {
        Leaf::Small => floor_small(rec, arena),
        Leaf::Huge => floor_huge(rec, arena),
    });
}

const RWX: u64 = 0b111;

fn floor_small(rec: &mut Recorder, arena: &Arena) {
    let mut taken = Vec::with_capacity(513);
    rec.time("W1/map", Who::Floor, PAGES, || {
        let pd = arena.alloc_4k().expect("frame");
        arena.zero(pd, SIZE_4K);
        taken.push(pd);
        for j in 0..512 {
            let pt = arena.alloc_4k().expect("frame");
            arena.zero(pt, SIZE_4K);
            taken.push(pt);
            let first = HPA + j * SIZE_2M;
            arena.write_entries(pt, (0..512).map(|k| (first + k * SIZE_4K) as u64 | RWX));
        }
        arena.write_entries(pd, taken[1..].iter().map(|&t| t as u64 | RWX));
    });
    for t in taken {
        arena.free_4k(t);
    }
}

fn floor_huge(rec: &mut Recorder, arena: &Arena) {
    let pd = rec.time("W2/map", Who::Floor, LEAVES_2M, || {
        let pd = arena.alloc_4k().expect("frame");
        arena.zero(pd, SIZE_4K);
        arena.write_entries(
            pd,
            (0..512).map(|k| (HPA + k * SIZE_2M) as u64 | RWX | 1 << 7),
        );
        pd
    });
    arena.free_4k(pd);
}

/// Units per phase, for the table.
pub fn unit(id: &str) -> Option<&'static str> {
    Some(match id {
        "W1/map" | "W1/translate" | "W1/translate_random" | "W1/unmap" => "4K page",
        "W2/map" | "W2/unmap" => "2M leaf",
        "W2/translate" => "4K lookup",
        _ => return None,
    })
}
