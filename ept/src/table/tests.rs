//! Unit tests of the table engine, run for both formats.

use alloc::vec::Vec;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, PAGE_SIZE_1G, PAGE_SIZE_2M};

use super::*;
use crate::caps::Stage2Caps;
use crate::flush::{Flush, FlushScope};
use crate::format::{Access, Ept, LeafAttr, MemType, Npt};
use crate::frame::{HeapArena, read_phys, write_phys};
use crate::size::{Size1G, Size2M, Size4K};
use crate::validate::Problem;

const K4: usize = 0x1000;
const M2: usize = PAGE_SIZE_2M;
const G1: usize = PAGE_SIZE_1G;
const RAM: LeafAttr = LeafAttr::ram(Access::RWX);
/// Pretend target memory (not in the arena: leaves are never freed by the table).
const T: usize = 0x80_0000_0000;

fn g(x: usize) -> GuestPhysAddr {
    GuestPhysAddr::new(x)
}
fn h(x: usize) -> HostPhysAddr {
    HostPhysAddr::new(x)
}

fn setup<F: Stage2Format>(caps: Stage2Caps) -> (HeapArena, Stage2Table<F, HeapArena>) {
    let mut arena = HeapArena::new(4096);
    let t = Stage2Table::new(arena.clone(), &mut arena, caps).unwrap();
    (arena, t)
}

/// Mapping never needs a flush: check that and consume the token.
trait Mapped {
    fn mapped(self);
}

impl Mapped for Result<Flush, TableError> {
    #[track_caller]
    fn mapped(self) {
        let f = self.unwrap();
        assert!(f.is_empty());
        let _ = f;
    }
}

fn finish(f: Flush, arena: &mut HeapArena) -> crate::flush::UnmappedLeaves {
    f.complete(|_| {}, arena)
}

/// Completes a flush; the leaves point at pretend memory, nothing to release.
fn done(f: Flush, arena: &mut HeapArena) {
    let _ = finish(f, arena);
}

/// The host address of the entry for `gpa` at `level` (walking by hand).
fn entry_addr<F: Stage2Format>(
    t: &Stage2Table<F, HeapArena>,
    gpa: usize,
    level: u8,
) -> HostPhysAddr {
    let mut frame = t.root();
    let mut l = 4;
    loop {
        let at = h(frame.as_usize() + index(gpa, l) * 8);
        if l == level {
            return at;
        }
        let mut b = [0u8; 8];
        read_phys(t.mapper(), at, &mut b).unwrap();
        frame = h((u64::from_le_bytes(b) & crate::format::ADDR_MASK) as usize);
        l -= 1;
    }
}

fn poke<F: Stage2Format>(
    t: &Stage2Table<F, HeapArena>,
    gpa: usize,
    level: u8,
    f: impl FnOnce(u64) -> u64,
) {
    let at = entry_addr(t, gpa, level);
    let mut b = [0u8; 8];
    read_phys(t.mapper(), at, &mut b).unwrap();
    let v = f(u64::from_le_bytes(b));
    write_phys(t.mapper(), at, &v.to_le_bytes()).unwrap();
}

fn snapshot<F: Stage2Format>(t: &Stage2Table<F, HeapArena>) -> Vec<Leaf> {
    t.leaves().collect()
}

fn map_page_all_sizes<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    assert_eq!(t.table_frames(), 1);
    assert!(t.translate(g(0)).is_none());
    assert!(
        t.map_page::<Size4K>(&mut a, g(0x5000), h(T + 0x9000), RAM)
            .unwrap()
            .is_empty()
    );
    assert!(
        t.map_page::<Size2M>(
            &mut a,
            g(M2 * 3),
            h(T + M2 * 7),
            LeafAttr::device(Access::RW)
        )
        .unwrap()
        .is_empty()
    );
    assert!(
        t.map_page::<Size1G>(&mut a, g(G1 * 5), h(T), LeafAttr::ram(Access::RX))
            .unwrap()
            .is_empty()
    );
    let tr = t.translate(g(0x5123)).unwrap();
    assert_eq!(
        (tr.hpa, tr.size, tr.leaf_gpa, tr.attr),
        (h(T + 0x9123), LeafSize::Size4K, g(0x5000), RAM)
    );
    let tr = t.translate(g(M2 * 3 + 0x1234)).unwrap();
    assert_eq!(tr.hpa, h(T + M2 * 7 + 0x1234));
    assert_eq!(tr.size, LeafSize::Size2M);
    assert_eq!(tr.attr, LeafAttr::device(Access::RW));
    let tr = t.translate(g(G1 * 5 + 0x3456_7890)).unwrap();
    assert_eq!((tr.hpa, tr.size), (h(T + 0x3456_7890), LeafSize::Size1G));
    assert!(t.translate(g(0x4fff)).is_none());
    assert!(t.translate(g(0x6000)).is_none());
    assert_eq!(t.leaf_count(LeafSize::Size4K), 1);
    assert_eq!(t.leaf_count(LeafSize::Size2M), 1);
    assert_eq!(t.leaf_count(LeafSize::Size1G), 1);
    // root + PDPT + PD + PT (0) ; PD for 3*2M shares the PDPT and the PD of GPA 0.
    assert_eq!(t.table_frames(), 4);
    assert_eq!(a.in_use(), 4);
    t.validate().unwrap();
    assert_eq!(
        crate::validate::walk(&t, g(0x5123)).unwrap(),
        t.translate(g(0x5123)).unwrap()
    );
}

fn map_page_errors<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_page::<Size2M>(&mut a, g(M2), h(T), RAM).mapped();
    t.map_page::<Size4K>(&mut a, g(G1 + K4), h(T), RAM).mapped();
    let before = (a.in_use(), snapshot(&t));
    let e = |r: Result<Flush, TableError>| r.unwrap_err();
    assert_eq!(
        e(t.map_page::<Size4K>(&mut a, g(M2 + K4 * 3), h(T), RAM)),
        TableError::AlreadyMapped {
            gpa: g(M2 + K4 * 3)
        }
    );
    assert_eq!(
        e(t.map_page::<Size2M>(&mut a, g(G1), h(T), RAM)),
        TableError::AlreadyMapped { gpa: g(G1 + K4) }
    );
    assert_eq!(
        e(t.map_page::<Size1G>(&mut a, g(0), h(0), RAM)),
        TableError::AlreadyMapped { gpa: g(M2) }
    );
    assert_eq!(
        e(t.map_page::<Size4K>(&mut a, g(0x1800), h(T), RAM)),
        TableError::Unaligned {
            value: 0x1800,
            align: K4
        }
    );
    assert_eq!(
        e(t.map_page::<Size2M>(&mut a, g(M2 * 9), h(T + K4), RAM)),
        TableError::Unaligned {
            value: T + K4,
            align: M2
        }
    );
    assert_eq!(
        e(t.map_page::<Size4K>(&mut a, g(1 << 48), h(T), RAM)),
        TableError::OutOfRange {
            gpa: g(1 << 48),
            max_bits: 48
        }
    );
    assert_eq!(
        e(t.map_page::<Size4K>(&mut a, g(0x7000), h(1 << 52), RAM)),
        TableError::HostOutOfRange { hpa: h(1 << 52) }
    );
    assert!(matches!(
        e(t.map_page::<Size4K>(&mut a, g(0x7000), h(T), LeafAttr::ram(Access::WRITE))),
        TableError::BadAttr(_)
    ));
    assert!(matches!(
        e(t.map_page::<Size4K>(&mut a, g(0x7000), h(T), LeafAttr::ram(Access::empty()))),
        TableError::BadAttr(_)
    ));
    let mut no1g = caps;
    no1g.leaf_1g = false;
    let (mut a2, mut t2) = setup::<F>(no1g);
    assert_eq!(
        e(t2.map_page::<Size1G>(&mut a2, g(0), h(0), RAM)),
        TableError::UnsupportedLeaf {
            size: LeafSize::Size1G
        }
    );
    // Out of frames: the level is named and nothing changed.
    a.fail_after(1);
    assert_eq!(
        e(t.map_page::<Size4K>(&mut a, g(G1 * 7), h(T), RAM)),
        TableError::NoMemory { level: 1 }
    );
    a.clear_failures();
    assert_eq!((a.in_use(), snapshot(&t)), before);
    t.validate().unwrap();
    // Top of the space works.
    t.map_page::<Size4K>(&mut a, g((1 << 48) - K4), h(T), RAM)
        .mapped();
    assert_eq!(t.translate(g((1 << 48) - 1)).unwrap().hpa, h(T + K4 - 1));
    t.validate().unwrap();
}

fn map_range_sizes<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    // Head of 4K up to a 2M boundary, 2M leaves up to 1G, one 1G leaf, 2M, 4K tail.
    let start = G1 - M2 - 3 * K4;
    let size = 3 * K4 + M2 + G1 + M2 + 5 * K4;
    t.map_range(&mut a, g(start), h(T + start), size, RAM, LeafSize::Size1G)
        .mapped();
    assert_eq!(t.leaf_count(LeafSize::Size4K), 8);
    assert_eq!(t.leaf_count(LeafSize::Size2M), 2);
    assert_eq!(t.leaf_count(LeafSize::Size1G), 1);
    for off in [0, 3 * K4 - 1, 3 * K4, 3 * K4 + M2, size - 1] {
        assert_eq!(
            t.translate(g(start + off)).unwrap().hpa,
            h(T + start + off),
            "{off:#x}"
        );
    }
    assert!(t.translate(g(start - 1)).is_none());
    assert!(t.translate(g(start + size)).is_none());
    t.validate().unwrap();
    // max limits the size; misaligned hpa forces 4K.
    let (mut a, mut t) = setup::<F>(caps);
    t.map_range(&mut a, g(0), h(T), G1, RAM, LeafSize::Size2M)
        .mapped();
    assert_eq!(
        (
            t.leaf_count(LeafSize::Size2M),
            t.leaf_count(LeafSize::Size1G)
        ),
        (512, 0)
    );
    t.map_range(&mut a, g(G1), h(T + K4), M2 * 2, RAM, LeafSize::Size1G)
        .mapped();
    assert_eq!(t.leaf_count(LeafSize::Size4K), 1024);
    assert_eq!(
        t.translate(g(G1 + M2 + 0x10)).unwrap().hpa,
        h(T + K4 + M2 + 0x10)
    );
    t.validate().unwrap();
    // Without 2M/1G capability everything is 4K.
    let mut c4 = caps;
    c4.leaf_1g = false;
    c4.leaf_2m = false;
    let (mut a, mut t) = setup::<F>(c4);
    t.map_range(&mut a, g(0), h(T), 4 * M2, RAM, LeafSize::Size1G)
        .mapped();
    assert_eq!(t.leaf_count(LeafSize::Size4K), 2048);
    assert_eq!(t.table_frames(), 1 + 1 + 1 + 4);
    t.validate().unwrap();
    // Zero size: nothing.
    assert!(
        t.map_range(&mut a, g(0), h(0), 0, RAM, LeafSize::Size4K)
            .unwrap()
            .is_empty()
    );
}

fn map_range_fails_cleanly<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_page::<Size4K>(&mut a, g(M2 * 5 + K4 * 7), h(T), RAM)
        .mapped();
    let before = (a.in_use(), snapshot(&t), t.table_frames());
    // Conflict in the middle.
    assert_eq!(
        t.map_range(&mut a, g(0), h(T), G1, RAM, LeafSize::Size4K)
            .unwrap_err(),
        TableError::AlreadyMapped {
            gpa: g(M2 * 5 + K4 * 7)
        }
    );
    assert_eq!((a.in_use(), snapshot(&t), t.table_frames()), before);
    // Conflict with an existing table where a 2M leaf would go.
    assert_eq!(
        t.map_range(&mut a, g(0), h(0), G1, RAM, LeafSize::Size2M)
            .unwrap_err(),
        TableError::AlreadyMapped {
            gpa: g(M2 * 5 + K4 * 7)
        }
    );
    assert_eq!(
        t.map_page::<Size2M>(&mut a, g(M2 * 5), h(0), RAM)
            .unwrap_err(),
        TableError::AlreadyMapped {
            gpa: g(M2 * 5 + K4 * 7)
        }
    );
    // Allocation failures at every point.
    for n in 0..4 {
        a.fail_after(n);
        let r = t.map_range(&mut a, g(G1 * 3 + K4), h(T), 3 * M2, RAM, LeafSize::Size2M);
        assert!(matches!(r, Err(TableError::NoMemory { .. })), "{r:?}");
        a.clear_failures();
        assert_eq!((a.in_use(), snapshot(&t), t.table_frames()), before);
        t.validate().unwrap();
    }
    // Range beyond the space.
    assert!(matches!(
        t.map_range(
            &mut a,
            g((1 << 48) - K4),
            h(0),
            2 * K4,
            RAM,
            LeafSize::Size4K
        ),
        Err(TableError::OutOfRange { .. })
    ));
    assert!(matches!(
        t.map_range(&mut a, g(0), h(0), 0x800, RAM, LeafSize::Size4K),
        Err(TableError::Unaligned { .. })
    ));
}

fn unmap_and_reclaim<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_range(&mut a, g(0), h(T), 2 * G1, RAM, LeafSize::Size4K)
        .mapped();
    let frames = t.table_frames();
    assert_eq!(frames, 1 + 1 + 2 + 1024);
    // Unmapping with holes (twice the same range, then a bigger one).
    let f = t.unmap_range(&mut a, g(K4 * 10), K4 * 10).unwrap();
    assert_eq!(
        f.scope(),
        Some(FlushScope::Range(
            AddrRange::from_start_size(g(K4 * 10), K4 * 10).unwrap()
        ))
    );
    let left = finish(f, &mut a);
    assert_eq!(left.len(), 10);
    assert_eq!(left.runs().len(), 1);
    assert_eq!(left.runs()[0].hpa, h(T + K4 * 10));
    assert!(
        t.unmap_range(&mut a, g(K4 * 10), K4 * 10)
            .unwrap()
            .is_empty()
    );
    let in_use = a.in_use();
    let left = finish(t.unmap_range(&mut a, g(0), 2 * G1).unwrap(), &mut a);
    assert_eq!(left.len(), 2 * 262_144 - 10);
    assert_eq!(t.table_frames(), 1);
    assert_eq!(a.in_use(), in_use - (frames - 1));
    assert_eq!(t.leaves().count(), 0);
    t.validate().unwrap();
}

fn unmap_splits_huge<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_page::<Size1G>(&mut a, g(G1), h(T), RAM).mapped();
    t.map_page::<Size2M>(&mut a, g(0), h(T + G1), LeafAttr::ram(Access::READ))
        .mapped();
    // Set A/D on the 2M leaf, as the CPU would.
    poke(&t, 0, 2, |e| e | F::ACCESSED | F::DIRTY);
    // A 4K hole in the middle of the 2M leaf.
    let left = finish(t.unmap_range(&mut a, g(K4 * 5), K4).unwrap(), &mut a);
    assert_eq!(
        left.iter().collect::<Vec<_>>(),
        [crate::flush::UnmappedLeaf {
            gpa: g(K4 * 5),
            hpa: h(T + G1 + K4 * 5),
            size: LeafSize::Size4K
        }]
    );
    assert_eq!(t.leaf_count(LeafSize::Size4K), 511);
    assert!(t.translate(g(K4 * 5)).is_none());
    let tr = t.translate(g(K4 * 6 + 8)).unwrap();
    assert_eq!(
        (tr.hpa, tr.attr, tr.size),
        (
            h(T + G1 + K4 * 6 + 8),
            LeafAttr::ram(Access::READ),
            LeafSize::Size4K
        )
    );
    assert!(
        t.leaves()
            .filter(|l| l.size == LeafSize::Size4K)
            .all(|l| l.dirty && l.accessed)
            || !caps.accessed_dirty
    );
    // Cut the 1G leaf at an unaligned point on both ends: needs PD + 2 PTs.
    let (s, e) = (G1 + M2 * 3 + K4 * 3, G1 + M2 * 9 + K4 * 9);
    let before = (a.in_use(), snapshot(&t));
    a.fail_after(2);
    assert!(matches!(
        t.unmap_range(&mut a, g(s), e - s),
        Err(TableError::NoMemory { .. })
    ));
    a.clear_failures();
    assert_eq!((a.in_use(), snapshot(&t)), before);
    let left = finish(t.unmap_range(&mut a, g(s), e - s).unwrap(), &mut a);
    assert_eq!(left.len(), (512 - 3) + 5 + 9);
    assert_eq!(t.leaf_count(LeafSize::Size1G), 0);
    assert_eq!(t.leaf_count(LeafSize::Size2M), 512 - 2 - 5);
    assert_eq!(t.leaf_count(LeafSize::Size4K), 511 + 3 + (512 - 9));
    for gpa in [G1, s - 1, e, G1 * 2 - 1] {
        assert_eq!(
            t.translate(g(gpa)).unwrap().hpa,
            h(T + gpa - G1),
            "{gpa:#x}"
        );
    }
    for gpa in [s, e - 1, G1 + M2 * 5] {
        assert!(t.translate(g(gpa)).is_none());
    }
    t.validate().unwrap();
    // Everything away: only the root remains; all frames back.
    done(t.unmap_range(&mut a, g(0), 2 * G1).unwrap(), &mut a);
    assert_eq!((t.table_frames(), a.in_use()), (1, 1));
    t.validate().unwrap();
}

fn protect_ranges<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_range(&mut a, g(0), h(T), 2 * G1, RAM, LeafSize::Size1G)
        .mapped();
    poke(&t, G1, 3, |e| e | F::DIRTY | F::ACCESSED);
    let ro = LeafAttr::ram(Access::READ);
    let dev = LeafAttr::device(Access::RW);
    // Whole 1G leaf: no split.
    let f = t.protect_range(&mut a, g(G1), G1, ro).unwrap();
    assert!(f.scope().is_some());
    assert!(finish(f, &mut a).is_empty());
    assert_eq!(t.leaf_count(LeafSize::Size1G), 2);
    let l: Vec<_> = t.leaves().collect();
    assert_eq!(l[1].attr, ro);
    assert_eq!(l[1].dirty, caps.accessed_dirty);
    // One 4K page inside the first 1G leaf.
    let before = (a.in_use(), snapshot(&t));
    a.fail_after(1);
    assert!(t.protect_range(&mut a, g(M2 + K4), K4, dev).is_err());
    a.clear_failures();
    assert_eq!((a.in_use(), snapshot(&t)), before);
    done(
        t.protect_range(&mut a, g(M2 + K4), K4, dev).unwrap(),
        &mut a,
    );
    assert_eq!(t.translate(g(M2 + K4)).unwrap().attr, dev);
    assert_eq!(t.translate(g(M2 + K4)).unwrap().hpa, h(T + M2 + K4));
    assert_eq!(t.translate(g(M2)).unwrap().attr, RAM);
    assert_eq!(t.translate(g(M2 + 2 * K4)).unwrap().attr, RAM);
    assert_eq!(t.leaf_count(LeafSize::Size2M), 511);
    assert_eq!(t.leaf_count(LeafSize::Size4K), 512);
    t.validate().unwrap();
    // Holes stay holes.
    done(t.unmap_range(&mut a, g(0), M2).unwrap(), &mut a);
    done(t.protect_range(&mut a, g(0), 2 * M2, ro).unwrap(), &mut a);
    assert!(t.translate(g(0)).is_none());
    assert_eq!(t.translate(g(M2 + K4)).unwrap().attr, ro);
    assert!(
        t.protect_range(&mut a, g(0), K4, LeafAttr::ram(Access::WRITE))
            .is_err()
    );
    t.validate().unwrap();
}

fn leaves_iteration<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_page::<Size4K>(&mut a, g(G1 * 3 + K4), h(T), RAM)
        .mapped();
    t.map_page::<Size2M>(&mut a, g(M2), h(T), RAM).mapped();
    t.map_page::<Size1G>(&mut a, g(G1 * 600), h(T), RAM)
        .mapped();
    let all: Vec<_> = t.leaves().map(|l| (l.gpa, l.size)).collect();
    assert_eq!(
        all,
        [
            (g(M2), LeafSize::Size2M),
            (g(G1 * 3 + K4), LeafSize::Size4K),
            (g(G1 * 600), LeafSize::Size1G)
        ]
    );
    let r = AddrRange::from_start_size(g(M2 * 2 - 1), G1 * 3).unwrap();
    let some: Vec<_> = t.leaves_in(r).map(|l| l.gpa).collect();
    assert_eq!(some, [g(M2), g(G1 * 3 + K4)]);
    let none = AddrRange::from_start_size(g(M2 * 2), 0).unwrap();
    assert_eq!(t.leaves_in(none).count(), 0);
}

fn harvest<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_range(&mut a, g(0), h(T), M2 + 4 * K4, RAM, LeafSize::Size2M)
        .mapped();
    poke(&t, K4 * 513, 1, |e| e | F::DIRTY | F::ACCESSED);
    poke(&t, 0, 2, |e| e | F::DIRTY);
    let all = AddrRange::from_start_size(g(0), G1).unwrap();
    let mut seen = Vec::new();
    let f = t.harvest_dirty(all, |gpa, s| seen.push((gpa, s))).unwrap();
    assert_eq!(
        seen,
        [(g(0), LeafSize::Size2M), (g(K4 * 513), LeafSize::Size4K)]
    );
    assert!(f.scope().is_some());
    done(f, &mut a);
    // Cleared: a second harvest sees nothing and needs no flush; A is kept.
    let mut again = 0;
    assert!(t.harvest_dirty(all, |_, _| again += 1).unwrap().is_empty());
    assert_eq!(again, 0);
    assert!(t.leaves().any(|l| l.accessed));
    let mut no_ad = caps;
    no_ad.accessed_dirty = false;
    let (_a, mut t2) = setup::<F>(no_ad);
    assert_eq!(
        t2.harvest_dirty(all, |_, _| {}).unwrap_err(),
        TableError::NoAccessedDirty
    );
}

fn collapse_tables<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_range(&mut a, g(G1), h(T), G1, RAM, LeafSize::Size4K)
        .mapped();
    poke(&t, G1 + K4 * 7, 1, |e| e | F::DIRTY | F::ACCESSED);
    let frames = a.in_use();
    // Not uniform: one page with other attributes.
    done(
        t.protect_range(&mut a, g(G1 + K4), K4, LeafAttr::ram(Access::READ))
            .unwrap(),
        &mut a,
    );
    assert!(t.collapse(g(G1)).unwrap().is_empty());
    done(
        t.protect_range(&mut a, g(G1 + K4), K4, RAM).unwrap(),
        &mut a,
    );
    let f = t.collapse(g(G1 + 5)).unwrap();
    assert_eq!(f.freed_tables().len(), 1);
    done(f, &mut a);
    assert_eq!(t.leaf_count(LeafSize::Size2M), 1);
    assert_eq!(a.in_use(), frames - 1);
    let l = t.leaves().next().unwrap();
    assert_eq!((l.gpa, l.hpa, l.size), (g(G1), h(T), LeafSize::Size2M));
    assert_eq!(l.dirty, caps.accessed_dirty);
    t.validate().unwrap();
    // Collapse the remaining 511 tables, then the PD into a 1G leaf on the last one.
    for k in 1..512 {
        done(t.collapse(g(G1 + k * M2)).unwrap(), &mut a);
    }
    assert_eq!(t.leaf_count(LeafSize::Size2M), 0);
    assert_eq!(t.leaf_count(LeafSize::Size1G), 1);
    assert_eq!(t.table_frames(), 2);
    assert_eq!(t.translate(g(G1 * 2 - 1)).unwrap().hpa, h(T + G1 - 1));
    t.validate().unwrap();
    // Misaligned host memory never collapses.
    t.map_range(&mut a, g(0), h(T + K4), M2, RAM, LeafSize::Size4K)
        .mapped();
    assert!(t.collapse(g(0)).unwrap().is_empty());
    // Without 2M leaves nothing collapses.
    let mut c4 = caps;
    c4.leaf_2m = false;
    c4.leaf_1g = false;
    let (mut a2, mut t2) = setup::<F>(c4);
    t2.map_range(&mut a2, g(0), h(T), M2, RAM, LeafSize::Size4K)
        .mapped();
    assert!(t2.collapse(g(0)).unwrap().is_empty());
}

fn ensure_chain_splits<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_page::<Size1G>(&mut a, g(0), h(T), RAM).mapped();
    let lt = Size4K::ensure_chain_for(&mut t, &mut a, g(M2 * 3 + K4)).unwrap();
    // Every translation kept after splitting 1G -> 2M -> 4K.
    assert_eq!(t.leaf_count(LeafSize::Size4K), 512);
    assert_eq!(t.leaf_count(LeafSize::Size2M), 511);
    for gpa in [0, M2 * 3, M2 * 3 + K4 * 100, G1 - 1] {
        assert_eq!(t.translate(g(gpa)).unwrap().hpa, h(T + gpa));
    }
    assert_eq!(
        Size4K::set_leaf(&mut t, &lt, g(M2 * 3 + K4), h(0), RAM),
        Err(TableError::AlreadyMapped {
            gpa: g(M2 * 3 + K4)
        })
    );
    assert_eq!(
        Size4K::set_leaf(&mut t, &lt, g(M2 * 4), h(0), RAM),
        Err(TableError::StaleLeafTable)
    );
    t.validate().unwrap();
    done(t.unmap_range(&mut a, g(M2 * 3 + K4), K4).unwrap(), &mut a);
    Size4K::set_leaf(&mut t, &lt, g(M2 * 3 + K4), h(0x1000), RAM).unwrap();
    assert_eq!(t.translate(g(M2 * 3 + K4)).unwrap().hpa, h(0x1000));
    // A change that frees a table makes old handles stale.
    done(t.unmap_range(&mut a, g(M2 * 3), M2).unwrap(), &mut a);
    assert_eq!(
        Size4K::set_leaf(&mut t, &lt, g(M2 * 3 + K4), h(0), RAM),
        Err(TableError::StaleLeafTable)
    );
    // Running out names the level.
    a.fail_after(0);
    assert_eq!(
        Size4K::ensure_chain_for(&mut t, &mut a, g(G1 * 9)).unwrap_err(),
        TableError::NoMemory { level: 2 }
    );
    t.validate().unwrap();
    let before = (a.in_use(), t.table_frames());
    a.fail_after(1);
    assert_eq!(
        Size4K::ensure_chain_for(&mut t, &mut a, g(G1 * 9)).unwrap_err(),
        TableError::NoMemory { level: 1 }
    );
    a.clear_failures();
    assert_eq!((a.in_use(), t.table_frames()), before);
    t.validate().unwrap();
    // Splitting needs frames too: a 1G leaf split down to 4K needs two.
    t.map_page::<Size1G>(&mut a, g(G1 * 3), h(T), RAM).mapped();
    let before = (a.in_use(), snapshot(&t));
    a.fail_after(1);
    assert_eq!(
        Size4K::ensure_chain_for(&mut t, &mut a, g(G1 * 3)).unwrap_err(),
        TableError::NoMemory { level: 1 }
    );
    a.clear_failures();
    assert_eq!((a.in_use(), snapshot(&t)), before);
}

fn destroy_returns_everything<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    let base = a.in_use();
    assert_eq!(base, 1);
    t.map_range(&mut a, g(K4), h(T + K4), G1 * 2, RAM, LeafSize::Size1G)
        .mapped();
    t.map_page::<Size4K>(&mut a, g(G1 * 512), h(T), RAM)
        .mapped();
    let leaves = t.leaves().count();
    let mut scope = None;
    let left = t.destroy().complete(|s| scope = Some(s), &mut a);
    assert_eq!(scope, Some(FlushScope::All));
    assert_eq!(left.len(), leaves);
    assert_eq!(a.in_use(), 0);
}

fn validator_catches<F: Stage2Format>(caps: Stage2Caps, bad_leaf: u64) {
    let (mut a, mut t) = setup::<F>(caps);
    t.map_page::<Size4K>(&mut a, g(0), h(T), RAM).mapped();
    t.validate().unwrap();
    poke(&t, 0, 1, |_| bad_leaf);
    let e = t.validate().unwrap_err();
    assert_eq!((e.level, e.gpa), (1, g(0)));
    assert!(matches!(e.problem, Problem::Entry(_)));
    assert!(matches!(
        crate::validate::walk(&t, g(0)),
        Err(crate::validate::WalkError::Misconfig { level: 1, .. })
    ));
    // Counters out of step.
    poke(&t, 0, 1, |_| {
        F::leaf_bits(RAM, 1, &caps).unwrap() | T as u64
    });
    t.validate().unwrap();
    poke(&t, K4, 1, |_| {
        F::leaf_bits(RAM, 1, &caps).unwrap() | T as u64
    });
    assert_eq!(t.validate().unwrap_err().problem, Problem::CountMismatch);
}

/// `leaf_slot` + `fill_leaf_slot` (the fault fast path) refuse what `map_page`
/// refuses and stale slots, and change nothing when they refuse.
fn leaf_slots<F: Stage2Format>(caps: Stage2Caps) {
    let (mut a, mut t) = setup::<F>(caps);
    // No tables yet, unaligned or out of range: no slot.
    assert!(t.leaf_slot::<Size4K>(g(K4)).is_none());
    t.map_page::<Size4K>(&mut a, g(0), h(T), RAM).mapped();
    assert!(t.leaf_slot::<Size4K>(g(K4 + 8)).is_none());
    assert!(t.leaf_slot::<Size4K>(g(1 << t.gpa_bits())).is_none());
    // A 2 MiB leaf in the way: no 4 KiB slot under it.
    t.map_page::<Size2M>(&mut a, g(M2), h(T), RAM).mapped();
    assert!(t.leaf_slot::<Size4K>(g(M2 + K4)).is_none());
    let before = (t.table_frames(), t.leaf_count(LeafSize::Size4K));
    // A present entry: AlreadyMapped, nothing written.
    let slot = t.leaf_slot::<Size4K>(g(0)).unwrap();
    assert_eq!(
        t.fill_leaf_slot::<Size4K>(&slot, h(T + K4), RAM),
        Err(TableError::AlreadyMapped { gpa: g(0) })
    );
    assert_eq!(t.translate(g(0)).unwrap().hpa, h(T));
    // Bad host address and attributes are refused like map_page does.
    let slot = t.leaf_slot::<Size4K>(g(K4)).unwrap();
    assert!(matches!(
        t.fill_leaf_slot::<Size4K>(&slot, h(T + 8), RAM),
        Err(TableError::Unaligned { .. })
    ));
    assert!(matches!(
        t.fill_leaf_slot::<Size4K>(&slot, h(1 << 52), RAM),
        Err(TableError::HostOutOfRange { .. })
    ));
    assert!(matches!(
        t.fill_leaf_slot::<Size4K>(&slot, h(T), LeafAttr::ram(Access::empty())),
        Err(TableError::BadAttr(_))
    ));
    assert_eq!((t.table_frames(), t.leaf_count(LeafSize::Size4K)), before);
    assert!(t.translate(g(K4)).is_none());
    // A good fill maps exactly that page.
    t.fill_leaf_slot::<Size4K>(&slot, h(T + 5 * K4), RAM)
        .unwrap();
    let tr = t.translate(g(K4 + 0x123)).unwrap();
    assert_eq!(
        (tr.hpa, tr.size, tr.attr),
        (h(T + 5 * K4 + 0x123), LeafSize::Size4K, RAM)
    );
    assert_eq!(t.leaf_count(LeafSize::Size4K), before.1 + 1);
    // A slot whose table was freed since is stale.
    let slot = t.leaf_slot::<Size4K>(g(2 * K4)).unwrap();
    done(t.unmap_range(&mut a, g(0), M2).unwrap(), &mut a);
    t.map_page::<Size4K>(&mut a, g(0), h(T), RAM).mapped();
    assert_eq!(
        t.fill_leaf_slot::<Size4K>(&slot, h(T), RAM),
        Err(TableError::StaleLeafTable)
    );
    assert!(t.translate(g(2 * K4)).is_none());
    t.validate().unwrap();
}

/// `translate` starts below 64 GiB at a kept page directory and below 512 GiB at a
/// kept level-3 table: the views must follow every link and free of those tables
/// (`map_page`, 1 GiB and 2 MiB `map_range` runs, a split by `protect_range`,
/// `collapse`, `unmap_range`), and every answer agree with the software walk, also
/// past 64 GiB, past 512 GiB and at the width limit.
fn translate_low_window<F: Stage2Format>(caps: Stage2Caps) {
    const LOW: usize = 1 << 39;
    let (mut a, mut t) = setup::<F>(caps);
    let agree = |t: &Stage2Table<F, HeapArena>, gpa: usize| {
        let fast = t.translate(g(gpa));
        assert_eq!(fast, crate::validate::walk(t, g(gpa)).ok(), "{gpa:#x}");
        fast.map(|tr| tr.hpa.as_usize())
    };
    assert_eq!(agree(&t, 0), None);
    t.map_page::<Size4K>(&mut a, g(LOW - K4), h(T), RAM)
        .mapped();
    t.map_page::<Size4K>(&mut a, g(LOW), h(T + K4), RAM)
        .mapped();
    t.validate().unwrap();
    assert_eq!(agree(&t, LOW - K4 + 8), Some(T + 8));
    assert_eq!(agree(&t, LOW + 8), Some(T + K4 + 8));
    assert_eq!(agree(&t, 0), None);
    // The last low page unmapped: the level-3 table under entry 0 is freed.
    let frames = t.table_frames();
    done(t.unmap_range(&mut a, g(LOW - K4), K4).unwrap(), &mut a);
    assert_eq!(t.table_frames(), frames - 3);
    t.validate().unwrap();
    assert_eq!(agree(&t, LOW - K4), None);
    assert_eq!(agree(&t, LOW), Some(T + K4));
    // A 1 GiB run links a new level-3 table filled with its leaves.
    t.map_range(&mut a, g(G1), h(T), G1, RAM, LeafSize::Size1G)
        .mapped();
    t.validate().unwrap();
    assert_eq!(agree(&t, G1 + 0x1234), Some(T + 0x1234));
    done(t.unmap_range(&mut a, g(G1), G1).unwrap(), &mut a);
    t.validate().unwrap();
    assert_eq!(agree(&t, G1), None);
    // The page directories of the first GiBs: a 1 GiB leaf in a slot (the fast path
    // finds nothing and the full walk answers), split by a protect, collapsed back.
    if caps.leaf_1g {
        t.map_page::<Size1G>(&mut a, g(2 * G1), h(T), RAM).mapped();
        assert_eq!(agree(&t, 2 * G1 + 0x1234), Some(T + 0x1234));
        let ro = LeafAttr::ram(Access::READ);
        done(t.protect_range(&mut a, g(2 * G1), K4, ro).unwrap(), &mut a);
        t.validate().unwrap();
        assert_eq!(t.translate(g(2 * G1)).unwrap().attr, ro);
        assert_eq!(agree(&t, 2 * G1 + M2 + 8), Some(T + M2 + 8));
        done(t.protect_range(&mut a, g(2 * G1), K4, RAM).unwrap(), &mut a);
        done(t.collapse(g(2 * G1)).unwrap(), &mut a);
        t.validate().unwrap();
        assert_eq!(t.translate(g(2 * G1)).unwrap().size, LeafSize::Size1G);
        assert_eq!(agree(&t, 2 * G1 + M2 + 8), Some(T + M2 + 8));
        done(t.unmap_range(&mut a, g(2 * G1), G1).unwrap(), &mut a);
    }
    // A 2 MiB run links a directory filled with its leaves; past the kept slots
    // (64 GiB) the walk starts at the level-3 table.
    for base in [3 * G1, 100 * G1] {
        t.map_range(&mut a, g(base), h(T), 2 * M2, RAM, LeafSize::Size2M)
            .mapped();
        t.validate().unwrap();
        assert_eq!(agree(&t, base + M2 + 8), Some(T + M2 + 8));
        done(t.unmap_range(&mut a, g(base), M2).unwrap(), &mut a);
        assert_eq!(agree(&t, base + 8), None);
        assert_eq!(agree(&t, base + M2), Some(T + M2));
        done(t.unmap_range(&mut a, g(base + M2), M2).unwrap(), &mut a);
        t.validate().unwrap();
        assert_eq!(agree(&t, base + M2), None);
    }
    // Past the address width: refused by both walks.
    assert_eq!(agree(&t, 1 << t.gpa_bits()), None);
    // A narrower width than one root entry covers.
    let narrow = Stage2Caps {
        max_phys_bits: 36,
        ..caps
    };
    let (mut a, mut t) = setup::<F>(narrow);
    t.map_page::<Size4K>(&mut a, g((1 << 36) - K4), h(T), RAM)
        .mapped();
    assert_eq!(agree(&t, (1 << 36) - 8), Some(T + K4 - 8));
    assert_eq!(t.translate(g(1 << 36)), None);
    assert_eq!(t.translate(g((1 << 36) + (1 << 39) - K4)), None);
    // The validator notices a directory, then a root entry 0, the views do not follow.
    t.map_page::<Size4K>(&mut a, g(0), h(T), RAM).mapped();
    t.validate().unwrap();
    // Swapping two directories keeps the tree valid but not the views.
    let (lo, hi) = (0, (1 << 36) - K4);
    let mut e_lo = 0;
    poke(&t, lo, 3, |e| {
        e_lo = e;
        e
    });
    let mut e_hi = 0;
    poke(&t, hi, 3, |e| {
        e_hi = e;
        e_lo
    });
    poke(&t, lo, 3, |_| e_hi);
    assert_eq!(t.validate().unwrap_err().problem, Problem::StaleShortcut);
    poke(&t, 0, 4, |_| 0);
    assert_eq!(t.validate().unwrap_err().problem, Problem::StaleShortcut);
}

macro_rules! both_formats {
    ($($name:ident),* $(,)?) => {
        mod ept_tests {
            use super::*;
            $( #[test] fn $name() { super::$name::<Ept>(Stage2Caps::all()) } )*
        }
        mod npt_tests {
            use super::*;
            $( #[test] fn $name() { super::$name::<Npt>(Stage2Caps::npt(true)) } )*
        }
    };
}

both_formats!(
    map_page_all_sizes,
    map_page_errors,
    map_range_sizes,
    map_range_fails_cleanly,
    unmap_and_reclaim,
    unmap_splits_huge,
    protect_ranges,
    leaves_iteration,
    harvest,
    collapse_tables,
    ensure_chain_splits,
    destroy_returns_everything,
    leaf_slots,
    translate_low_window,
);

#[test]
fn ept_validator_catches_write_only() {
    validator_catches::<Ept>(Stage2Caps::all(), T as u64 | 0b010 | (6 << 3));
}

#[test]
fn ept_validator_catches_bad_memtype() {
    validator_catches::<Ept>(Stage2Caps::all(), T as u64 | 0b001 | (2 << 3));
}

#[test]
fn npt_validator_catches_missing_user() {
    validator_catches::<Npt>(Stage2Caps::npt(true), T as u64 | 0b011);
}

#[test]
fn npt_device_memory_roundtrip() {
    let (mut a, mut t) = setup::<Npt>(Stage2Caps::npt(true));
    for (k, mt) in MemType::ALL.into_iter().enumerate() {
        let attr = LeafAttr {
            access: Access::RW,
            mem_type: mt,
        };
        t.map_page::<Size2M>(&mut a, g(k * M2), h(T), attr).mapped();
        t.map_page::<Size4K>(&mut a, g(G1 + k * K4), h(T), attr)
            .mapped();
        assert_eq!(t.translate(g(k * M2)).unwrap().attr, attr);
        assert_eq!(t.translate(g(G1 + k * K4)).unwrap().attr, attr);
    }
    t.validate().unwrap();
}

#[test]
fn root_pointers() {
    let (_a, t) = setup::<Ept>(Stage2Caps::all());
    assert_eq!(
        t.root_pointer() & crate::format::ADDR_MASK,
        t.root().as_u64()
    );
    assert_eq!(t.root_pointer() & 0x7f, 0x5e);
    let (_a, t) = setup::<Npt>(Stage2Caps::npt(false));
    assert_eq!(t.root_pointer(), t.root().as_u64());
}
