//! W1 and W2: 1 GiB of guest-physical space mapped in 4 KiB leaves (W1) or 2 MiB leaves
//! (W2): map, translate every 4 KiB page, unmap with empty-table reclamation.
//!
//! * `page_table_multiarch` has no reclamation besides dropping the table: its unmap phase is
//!   `unmap_region` + drop (which frees every table frame).
//! * the `x86_64` crate: per-page `unmap` + `clean_up_addr_range` (frees empty tables).
//! * floor (map only): take and zero the table frames of the leaf level and write every
//!   entry (W1: 513 frames, 262,144 + 512 entries; W2: 1 frame, 512 entries).

use arceos_memory_addr::{PhysAddr as APhys, VirtAddr as AVirt};
use page_table_multiarch::MappingFlags;
use x86_64::structures::paging::mapper::{CleanUp, TranslateResult};
use x86_64::structures::paging::{
    Mapper, OffsetPageTable, Page, PageTableFlags, PhysFrame, Size2MiB, Size4KiB, Translate,
};

use crate::anchors::ptm::{self, PtmTable};
use crate::anchors::x86::{X86Frames, X86Table};
use crate::arena::{Arena, SIZE_2M, SIZE_4K};
use crate::harness::{Recorder, Who};

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

/// Ids of the three phases.
pub fn ids(leaf: Leaf) -> [String; 3] {
    let w = leaf.name();
    [
        format!("{w}/map"),
        format!("{w}/translate"),
        format!("{w}/unmap"),
    ]
}

/// One round of W1 or W2: every contender, in an order rotated by `round`.
pub fn round(rec: &mut Recorder, arena: &Arena, leaf: Leaf, round: usize) {
    type Contender = fn(&mut Recorder, &Arena, Leaf);
    let contenders: [(Who, Contender); 4] = [
        (Who::Ours, ours_round),
        (PTM, ptm_round),
        (X86, x86_round),
        (Who::Floor, floor_round),
    ];
    for k in 0..contenders.len() {
        let (who, run) = contenders[(k + round) % contenders.len()];
        if rec.runs(who) {
            run(rec, arena, leaf);
        }
        assert_eq!(arena.in_use(), 0, "{leaf:?}: a contender leaked frames");
    }
}

fn ours_round(rec: &mut Recorder, arena: &Arena, leaf: Leaf) {
    crate::ours::w1(rec, arena, leaf, &ids(leaf));
}

fn ptm_round(rec: &mut Recorder, arena: &Arena, leaf: Leaf) {
    let [map, translate, unmap] = ids(leaf);
    ptm::install(arena);
    let mut pt = PtmTable::try_new().expect("root");
    let flags = MappingFlags::READ | MappingFlags::WRITE;
    rec.time(&map, PTM, leaf.leaves(), || {
        let mut c = pt.cursor();
        match leaf {
            Leaf::Small => c
                .map_region(
                    AVirt::from(GPA),
                    |va| APhys::from(HPA + (va.as_usize() - GPA)),
                    SIZE,
                    flags,
                    false,
                )
                .expect("map"),
            Leaf::Huge => c
                .map_region(
                    AVirt::from(GPA),
                    |va| APhys::from(HPA + (va.as_usize() - GPA)),
                    SIZE,
                    flags,
                    true,
                )
                .expect("map"),
        }
    });
    let got = rec.time(&translate, PTM, PAGES, || {
        let mut acc = 0;
        for i in 0..PAGES {
            let (pa, _, _) = pt.query(AVirt::from(GPA + i * SIZE_4K)).expect("mapped");
            acc ^= pa.as_usize();
        }
        acc
    });
    assert_eq!(got, expected_translation_xor());
    let (_, _, size) = pt.query(AVirt::from(GPA)).expect("mapped");
    assert_eq!(
        size as usize,
        leaf.bytes(),
        "page_table_multiarch chose another leaf size"
    );
    rec.time(&unmap, PTM, leaf.leaves(), move || {
        pt.cursor()
            .unmap_region(AVirt::from(GPA), SIZE)
            .expect("unmap");
        drop(pt);
    });
}

fn x86_round(rec: &mut Recorder, arena: &Arena, leaf: Leaf) {
    let [map, translate, unmap] = ids(leaf);
    let mut table = X86Table::new(arena);
    let mut frames = X86Frames(arena.clone());
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    let va = |i: usize| x86_64::VirtAddr::new((GPA + i) as u64);
    let pa = |i: usize| x86_64::PhysAddr::new((HPA + i) as u64);
    rec.time(&map, X86, leaf.leaves(), || {
        table.with_mapper(|m| {
            for i in 0..leaf.leaves() {
                let off = i * leaf.bytes();
                match leaf {
                    Leaf::Small => x86_map::<Size4KiB>(m, va(off), pa(off), flags, &mut frames),
                    Leaf::Huge => x86_map::<Size2MiB>(m, va(off), pa(off), flags, &mut frames),
                }
            }
        })
    });
    let got = rec.time(&translate, X86, PAGES, || {
        table.with_mapper(|m| {
            let mut acc = 0;
            for i in 0..PAGES {
                match m.translate(va(i * SIZE_4K)) {
                    TranslateResult::Mapped { frame, offset, .. } => {
                        acc ^= (frame.start_address().as_u64() + offset) as usize
                    }
                    other => panic!("x86_64: page {i} not mapped: {other:?}"),
                }
            }
            acc
        })
    });
    assert_eq!(got, expected_translation_xor());
    rec.time(&unmap, X86, leaf.leaves(), || {
        table.with_mapper(|m| {
            for i in 0..leaf.leaves() {
                let off = i * leaf.bytes();
                match leaf {
                    Leaf::Small => m
                        .unmap(Page::<Size4KiB>::containing_address(va(off)))
                        .expect("unmap")
                        .1
                        .ignore(),
                    Leaf::Huge => m
                        .unmap(Page::<Size2MiB>::containing_address(va(off)))
                        .expect("unmap")
                        .1
                        .ignore(),
                }
            }
            let range = Page::range_inclusive(
                Page::containing_address(va(0)),
                Page::containing_address(va(SIZE - 1)),
            );
            // SAFETY: every table frame of this mapper is used once, by this table only.
            unsafe { m.clean_up_addr_range(range, &mut frames) };
        })
    });
    drop(table);
}

/// One `map_to` of the `x86_64` crate (target frames are never accessed).
fn x86_map<S: x86_64::structures::paging::PageSize + std::fmt::Debug>(
    m: &mut OffsetPageTable<'_>,
    va: x86_64::VirtAddr,
    pa: x86_64::PhysAddr,
    flags: PageTableFlags,
    frames: &mut X86Frames,
) where
    for<'a> OffsetPageTable<'a>: Mapper<S>,
{
    // SAFETY: the table is never loaded into a CPU, so mapping any frame cannot break
    // memory safety; the target frames are never accessed through it.
    unsafe {
        m.map_to(
            Page::<S>::containing_address(va),
            PhysFrame::<S>::containing_address(pa),
            flags,
            frames,
        )
    }
    .expect("map")
    .ignore();
}

fn floor_round(rec: &mut Recorder, arena: &Arena, leaf: Leaf) {
    // The floor is short: several samples per round (W1), or many repetitions in one
    // sample (W2, whose floor is a single table), steady its median.
    match leaf {
        Leaf::Small => {
            for _ in 0..5 {
                floor_small(rec, arena);
            }
        }
        Leaf::Huge => floor_huge(rec, arena, 64),
    }
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

fn floor_huge(rec: &mut Recorder, arena: &Arena, reps: usize) {
    let mut taken = Vec::with_capacity(reps);
    rec.time("W2/map", Who::Floor, reps * LEAVES_2M, || {
        for _ in 0..reps {
            let pd = arena.alloc_4k().expect("frame");
            arena.zero(pd, SIZE_4K);
            arena.write_entries(
                pd,
                (0..512).map(|k| (HPA + k * SIZE_2M) as u64 | RWX | 1 << 7),
            );
            taken.push(pd);
        }
    });
    for t in taken {
        arena.free_4k(t);
    }
}

/// Units per phase, for the table.
pub fn unit(id: &str) -> Option<&'static str> {
    Some(match id {
        "W1/map" | "W1/translate" | "W1/unmap" => "4K page",
        "W2/map" | "W2/unmap" => "2M leaf",
        "W2/translate" => "4K lookup",
        _ => return None,
    })
}
