//! Unit tests of [`MemorySet`] and [`MemoryArea`] with a strict mock backend.

use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

use super::*;
use crate::PAGE_SIZE_4K;

/// Page table of the mock: flags per page (keyed by page address), plus a failure
/// injector and a record of the cuts the set prepared.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Pt {
    pages: BTreeMap<usize, u8>,
    calls: usize,
    /// Fail the calls with these (1-based) numbers.
    fail_at: Vec<usize>,
    splits: Vec<usize>,
    faults: Vec<(usize, usize, u8, usize, u8)>,
}

impl Pt {
    /// Counts a call; `Err` if it is one of the calls to fail.
    fn tick(&mut self) -> Result<(), &'static str> {
        self.calls += 1;
        if self.fail_at.contains(&self.calls) {
            Err("injected")
        } else {
            Ok(())
        }
    }

    /// The state that must not change on error (not the counters).
    fn state(&self) -> BTreeMap<usize, u8> {
        self.pages.clone()
    }
}

/// A strict backend with page size `P`: it panics on calls the set must never make
/// (mapping a mapped page, unmapping a hole, protecting with the wrong old flags).
#[derive(Clone, Debug)]
struct Mock<const P: usize>;

impl<const P: usize> Mock<P> {
    fn pages(start: usize, size: usize) -> impl Iterator<Item = usize> {
        assert!(size > 0 && start.is_multiple_of(P) && size.is_multiple_of(P));
        (0..size / P).map(move |i| start + i * P)
    }
}

impl<const P: usize> MappingBackend for Mock<P> {
    type Addr = usize;
    type Flags = u8;
    type PageTable = Pt;
    type Error = &'static str;
    const PAGE_SIZE: usize = P;

    fn map(&self, start: usize, size: usize, flags: u8, pt: &mut Pt) -> Result<(), &'static str> {
        pt.tick()?;
        for p in Self::pages(start, size) {
            assert!(
                pt.pages.insert(p, flags).is_none(),
                "map over mapped page {p:#x}"
            );
        }
        Ok(())
    }

    fn unmap(&self, start: usize, size: usize, pt: &mut Pt) -> Result<(), &'static str> {
        pt.tick()?;
        for p in Self::pages(start, size) {
            assert!(pt.pages.remove(&p).is_some(), "unmap of hole {p:#x}");
        }
        Ok(())
    }

    fn protect(
        &self,
        start: usize,
        size: usize,
        old: u8,
        new: u8,
        pt: &mut Pt,
    ) -> Result<(), &'static str> {
        pt.tick()?;
        for p in Self::pages(start, size) {
            let f = pt.pages.get_mut(&p).expect("protect of hole");
            assert_eq!(*f, old, "protect with wrong old flags at {p:#x}");
            *f = new;
        }
        Ok(())
    }

    fn handle_fault(
        &self,
        area: AddrRange<usize>,
        area_flags: u8,
        addr: usize,
        access: u8,
        pt: &mut Pt,
    ) -> Result<(), &'static str> {
        pt.tick()?;
        pt.faults
            .push((area.start(), area.size(), area_flags, addr, access));
        if access & !area_flags != 0 {
            Err("access denied")
        } else {
            Ok(())
        }
    }

    fn prepare_split(
        &self,
        area: AddrRange<usize>,
        _flags: u8,
        at: usize,
        pt: &mut Pt,
    ) -> Result<(), &'static str> {
        pt.tick()?;
        assert!(area.start() < at && at <= area.last().unwrap());
        pt.splits.push(at);
        Ok(())
    }
}

type Set<const P: usize> = MemorySet<Mock<P>>;
type Err = MemorySetError<&'static str>;
const K: usize = PAGE_SIZE_4K;
const TOP: usize = usize::MAX;

fn area<const P: usize>(start: usize, size: usize, flags: u8) -> MemoryArea<Mock<P>> {
    MemoryArea::new(start, size, flags, Mock::<P>).unwrap()
}

/// Areas as (start, size, flags).
fn areas<const P: usize>(set: &Set<P>) -> Vec<(usize, usize, u8)> {
    set.iter()
        .map(|a| (a.start(), a.size(), a.flags()))
        .collect()
}

/// Checks the set's invariants (no overlap, keys, gap index exact) and that the page
/// table holds exactly the pages of the areas with their flags.
fn check<const P: usize>(set: &Set<P>, pt: &Pt) {
    let mut expected_pages = BTreeMap::new();
    let mut gaps = BTreeSet::new();
    let mut free_from = Some(0usize);
    for (&key, a) in set.areas.iter().map(|(k, slot)| (k, &slot.area)) {
        assert_eq!(key, a.start());
        assert!(a.size() > 0);
        let first = free_from.expect("area after one ending at 2^64");
        assert!(a.start() >= first, "overlap at {:#x}", a.start());
        if a.start() > first {
            gaps.insert((a.start() - 1 - first, first));
        }
        free_from = a.end();
        for p in Mock::<P>::pages(a.start(), a.size()) {
            expected_pages.insert(p, a.flags());
        }
    }
    if let Some(first) = free_from {
        gaps.insert((TOP - first, first));
    }
    assert_eq!(set.gaps.keys(), gaps, "gap index out of step");
    assert_eq!(set.validate(), Ok(()));
    assert_eq!(pt.pages, expected_pages, "page table out of step");
}

fn ok<const P: usize>(set: &mut Set<P>, pt: &mut Pt, start: usize, size: usize, flags: u8) {
    set.map(area::<P>(start, size, flags), pt, false).unwrap();
    check(set, pt);
}

#[test]
fn adjacent_areas_accepted_one_byte_overlap_rejected() {
    let (mut set, mut pt) = (Set::<1>::new(), Pt::default());
    ok(&mut set, &mut pt, 0x10, 0x10, 1); // [0x10, 0x20)
    ok(&mut set, &mut pt, 0x20, 0x10, 2); // [0x20, 0x30): adjacent on the right
    ok(&mut set, &mut pt, 0x08, 0x08, 3); // [0x08, 0x10): adjacent on the left
    let before = (areas(&set), pt.state());
    // One byte of overlap on each side, and one inside.
    for (s, n) in [(0x2f, 0x10), (0x00, 0x09), (0x18, 1)] {
        let err = set.map(area::<1>(s, n, 9), &mut pt, false).unwrap_err();
        assert!(matches!(err, Err::AlreadyExists { .. }), "{s:#x}: {err:?}");
        assert_eq!((areas(&set), pt.state()), before);
    }
    assert_eq!(
        set.map(area::<1>(0x2f, 0x10, 9), &mut pt, false),
        Err(Err::AlreadyExists {
            existing_start: 0x20
        })
    );
    assert_eq!(set.len(), 3);
    assert!(set.overlaps(AddrRange::from_start_size(0x2f, 1).unwrap()));
    assert!(!set.overlaps(AddrRange::from_start_size(0x30, 1).unwrap()));
    assert!(!set.overlaps(AddrRange::from_start_size(0x20, 0).unwrap()));
}

#[test]
fn zero_size_rejected_everywhere() {
    let zero = Err::InvalidParam {
        reason: InvalidParam::ZeroSize,
    };
    assert_eq!(MemoryArea::new(K, 0, 1, Mock::<K>).unwrap_err(), zero);
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    ok(&mut set, &mut pt, K, 4 * K, 1);
    assert_eq!(set.unmap(K, 0, &mut pt), Err(zero.clone()));
    assert_eq!(set.protect(K, 0, |_| Some(2), &mut pt), Err(zero.clone()));
    let limit = AddrRange::from_start_size(0, 16 * K).unwrap();
    assert_eq!(set.find_free_area(0, 0, limit, K), Err(zero));
    assert_eq!(pt.calls, 1, "no backend call for rejected input");
    check(&set, &pt);
}

#[test]
fn unaligned_input_rejected_and_changes_nothing() {
    let unaligned = Err::InvalidParam {
        reason: InvalidParam::Unaligned { page_size: K },
    };
    assert_eq!(
        MemoryArea::new(K + 1, K, 1, Mock::<K>).unwrap_err(),
        unaligned
    );
    assert_eq!(
        MemoryArea::new(K, K + 0x800, 1, Mock::<K>).unwrap_err(),
        unaligned
    );
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    ok(&mut set, &mut pt, 0, 8 * K, 1);
    let before = (areas(&set), pt.state());
    assert_eq!(set.unmap(K + 8, K, &mut pt), Err(unaligned.clone()));
    assert_eq!(set.unmap(K, 8, &mut pt), Err(unaligned.clone()));
    assert_eq!(
        set.protect(K, K - 1, |_| Some(2), &mut pt),
        Err(unaligned.clone())
    );
    let limit = AddrRange::from_start_size(0, 64 * K).unwrap();
    assert_eq!(set.find_free_area(0, 100, limit, K), Err(unaligned));
    assert_eq!(
        set.find_free_area(0, K, limit, 3),
        Err(Err::InvalidParam {
            reason: InvalidParam::AlignNotPowerOfTwo { align: 3 }
        })
    );
    assert_eq!((areas(&set), pt.state()), before);
    assert_eq!(pt.calls, 1);
}

#[test]
fn ranges_ending_at_the_top_of_the_address_space() {
    let overflow = Err::InvalidParam {
        reason: InvalidParam::Overflow,
    };
    assert_eq!(
        MemoryArea::new(TOP - K + 1, 2 * K, 1, Mock::<K>).unwrap_err(),
        overflow
    );
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    let top4 = TOP - 4 * K + 1;
    ok(&mut set, &mut pt, top4, 4 * K, 1);
    let a = set.find(TOP).unwrap();
    assert_eq!((a.start(), a.end(), a.last()), (top4, None, TOP));
    assert_eq!(set.unmap(top4, 8 * K, &mut pt), Err(overflow.clone()));
    // Protect the top page, then unmap the page below it: three pieces, one at the top.
    set.protect(TOP - K + 1, K, |_| Some(3), &mut pt).unwrap();
    check(&set, &pt);
    set.unmap(TOP - 2 * K + 1, K, &mut pt).unwrap();
    check(&set, &pt);
    assert_eq!(areas(&set), vec![(top4, 2 * K, 1), (TOP - K + 1, K, 3)]);
    // The free page just below the top is found; nothing fits above.
    let all = AddrRange::from_start_size(0, TOP - K + 1).unwrap();
    assert_eq!(
        set.find_free_area(top4, K, AddrRange::from_start_size(top4, 4 * K).unwrap(), K),
        Ok(TOP - 2 * K + 1)
    );
    assert_eq!(
        set.find_free_area(TOP - K + 1, K, all, K),
        Err(Err::NoMemory { size: K })
    );
    // A map that replaces up to the top.
    set.map(area::<K>(top4 + K, 3 * K, 7), &mut pt, true)
        .unwrap();
    check(&set, &pt);
    assert_eq!(areas(&set), vec![(top4, K, 1), (top4 + K, 3 * K, 7)]);
    set.clear(&mut pt).unwrap();
    check(&set, &pt);
    assert!(set.is_empty());
}

#[test]
fn unmap_removes_shrinks_and_splits() {
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    ok(&mut set, &mut pt, 0, 4 * K, 1);
    ok(&mut set, &mut pt, 4 * K, 4 * K, 2);
    ok(&mut set, &mut pt, 10 * K, 4 * K, 3);
    // Exactly one area: removed, no cut prepared.
    set.unmap(4 * K, 4 * K, &mut pt).unwrap();
    check(&set, &pt);
    assert_eq!(areas(&set), vec![(0, 4 * K, 1), (10 * K, 4 * K, 3)]);
    assert!(pt.splits.is_empty());
    // Middle of an area: split in two.
    set.unmap(K, 2 * K, &mut pt).unwrap();
    check(&set, &pt);
    assert_eq!(
        areas(&set),
        vec![(0, K, 1), (3 * K, K, 1), (10 * K, 4 * K, 3)]
    );
    assert_eq!(pt.splits, vec![K, 3 * K]);
    // Across a hole, shrinking the area on the right from the left.
    set.unmap(3 * K, 9 * K, &mut pt).unwrap();
    check(&set, &pt);
    assert_eq!(areas(&set), vec![(0, K, 1), (12 * K, 2 * K, 3)]);
    // Only a hole: nothing happens.
    let calls = pt.calls;
    set.unmap(5 * K, K, &mut pt).unwrap();
    assert_eq!(pt.calls, calls);
    // Shrink from the right.
    set.unmap(13 * K, 10 * K, &mut pt).unwrap();
    check(&set, &pt);
    assert_eq!(areas(&set), vec![(0, K, 1), (12 * K, K, 3)]);
}

#[test]
fn protect_cuts_up_to_three_pieces_and_skips_unchanged() {
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    ok(&mut set, &mut pt, 0, 8 * K, 1);
    set.protect(2 * K, 3 * K, |_| Some(2), &mut pt).unwrap();
    check(&set, &pt);
    assert_eq!(
        areas(&set),
        vec![(0, 2 * K, 1), (2 * K, 3 * K, 2), (5 * K, 3 * K, 1)]
    );
    assert_eq!(pt.splits, vec![2 * K, 5 * K]);
    // Exactly on boundaries: no new cut.
    pt.splits.clear();
    set.protect(2 * K, 3 * K, |_| Some(4), &mut pt).unwrap();
    check(&set, &pt);
    assert!(pt.splits.is_empty());
    assert_eq!(set.len(), 3);
    // `None` and unchanged flags: no split, no backend call.
    let calls = pt.calls;
    set.protect(K, 6 * K, |f| (f == 4).then_some(4), &mut pt)
        .unwrap();
    set.protect(K, K, |_| None, &mut pt).unwrap();
    assert_eq!(pt.calls, calls);
    assert_eq!(set.len(), 3);
    // Selective update across several areas: only flags 1 become 5.
    set.protect(K, 6 * K, |f| (f == 1).then_some(5), &mut pt)
        .unwrap();
    check(&set, &pt);
    assert_eq!(
        areas(&set),
        vec![
            (0, K, 1),
            (K, K, 5),
            (2 * K, 3 * K, 4),
            (5 * K, 2 * K, 5),
            (7 * K, K, 1)
        ]
    );
}

#[test]
fn map_with_replace_cuts_what_overlaps() {
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    ok(&mut set, &mut pt, 0, 4 * K, 1);
    ok(&mut set, &mut pt, 4 * K, 2 * K, 2);
    ok(&mut set, &mut pt, 6 * K, 4 * K, 3);
    set.map(area::<K>(2 * K, 6 * K, 9), &mut pt, true).unwrap();
    check(&set, &pt);
    assert_eq!(
        areas(&set),
        vec![(0, 2 * K, 1), (2 * K, 6 * K, 9), (8 * K, 2 * K, 3)]
    );
    // Strictly inside one area.
    set.map(area::<K>(3 * K, K, 8), &mut pt, true).unwrap();
    check(&set, &pt);
    assert_eq!(set.len(), 5);
    assert_eq!(set.find(3 * K + 5).map(|a| a.flags()), Some(8));
}

/// Runs `op` failing at each call number in turn and checks nothing changed each time,
/// then runs it without failure.
fn every_failure_undone(
    setup: impl Fn() -> (Set<K>, Pt),
    op: impl Fn(&mut Set<K>, &mut Pt) -> SetResult<Mock<K>>,
) {
    let (mut set, mut pt) = setup();
    let base = pt.calls;
    op(&mut set, &mut pt).unwrap();
    let total = pt.calls - base;
    assert!(
        total >= 2,
        "the operation should make several backend calls"
    );
    for k in 1..=total {
        let (mut set, mut pt) = setup();
        let before = (areas(&set), pt.state(), set.gaps.keys());
        pt.fail_at = vec![pt.calls + k];
        let err = op(&mut set, &mut pt).unwrap_err();
        assert_eq!(err, Err::Backend("injected"), "call {k}");
        assert_eq!(
            (areas(&set), pt.state(), set.gaps.keys()),
            before,
            "call {k}"
        );
        check(&set, &pt);
    }
}

fn three_areas() -> (Set<K>, Pt) {
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    ok(&mut set, &mut pt, 0, 4 * K, 1);
    ok(&mut set, &mut pt, 4 * K, 2 * K, 2);
    ok(&mut set, &mut pt, 6 * K, 4 * K, 3);
    (set, pt)
}

#[test]
fn failures_in_unmap_protect_map_clear_are_undone() {
    every_failure_undone(three_areas, |s, pt| s.unmap(K, 8 * K, pt));
    every_failure_undone(three_areas, |s, pt| s.unmap(K, 2 * K, pt));
    every_failure_undone(three_areas, |s, pt| {
        s.protect(K, 8 * K, |f| Some(f + 10), pt)
    });
    every_failure_undone(three_areas, |s, pt| {
        s.map(area::<K>(2 * K, 6 * K, 9), pt, true)
    });
    every_failure_undone(three_areas, |s, pt| s.clear(pt));
}

#[test]
fn a_failing_undo_is_reported_as_such() {
    let (mut set, mut pt) = three_areas();
    // Calls: 2 prepares, unmaps of three pieces; fail the third unmap, then its undo.
    pt.fail_at = vec![pt.calls + 5, pt.calls + 6];
    assert_eq!(
        set.unmap(K, 8 * K, &mut pt),
        Err(Err::UndoFailed {
            cause: "injected",
            undo: "injected"
        })
    );
}

#[test]
fn handle_fault_finds_the_area() {
    let (set, mut pt) = three_areas();
    assert_eq!(
        set.handle_fault(12 * K, 1, &mut pt),
        Err(Err::NotFound { addr: 12 * K })
    );
    set.handle_fault(5 * K + 3, 2, &mut pt).unwrap();
    assert_eq!(pt.faults, vec![(4 * K, 2 * K, 2, 5 * K + 3, 2)]);
    assert_eq!(
        set.handle_fault(5 * K, 1, &mut pt),
        Err(Err::Backend("access denied"))
    );
}

#[test]
fn find_and_iter_overlapping() {
    let (set, _) = three_areas();
    assert_eq!(set.find(0).map(|a| a.start()), Some(0));
    assert_eq!(set.find(4 * K - 1).map(|a| a.start()), Some(0));
    assert_eq!(set.find(4 * K).map(|a| a.start()), Some(4 * K));
    assert!(set.find(10 * K).is_none());
    let r = AddrRange::from_start_size(4 * K - 1, 2 * K + 2).unwrap();
    let starts: Vec<_> = set.iter_overlapping(r).map(|a| a.start()).collect();
    assert_eq!(starts, vec![0, 4 * K, 6 * K]);
    let r = AddrRange::from_start_size(4 * K, 2 * K).unwrap();
    let starts: Vec<_> = set.iter_overlapping(r).map(|a| a.start()).collect();
    assert_eq!(starts, vec![4 * K]);
    assert_eq!(format!("{set:?}").matches("MemoryArea").count(), 3);
}

#[test]
fn find_free_area_respects_hint_align_and_limit() {
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    ok(&mut set, &mut pt, 0, 2 * K, 1);
    ok(&mut set, &mut pt, 3 * K, K, 1); // hole [2K, 3K)
    ok(&mut set, &mut pt, 8 * K, 8 * K, 1); // hole [4K, 8K)
    let limit = |s: usize, n: usize| AddrRange::from_start_size(s, n).unwrap();
    let big = limit(0, 1 << 30);
    assert_eq!(set.find_free_area(0, K, big, K), Ok(2 * K));
    assert_eq!(set.find_free_area(0, 2 * K, big, K), Ok(4 * K));
    assert_eq!(set.find_free_area(5 * K, K, big, K), Ok(5 * K)); // free hint
    assert_eq!(set.find_free_area(0, 2 * K, big, 8 * K), Ok(16 * K));
    assert_eq!(set.find_free_area(0, K, big, 4 * K), Ok(4 * K));
    assert_eq!(set.find_free_area(0, 4 * K, big, K), Ok(4 * K));
    assert_eq!(set.find_free_area(0, 5 * K, big, K), Ok(16 * K));
    // The whole result must be inside the limit.
    assert_eq!(
        set.find_free_area(0, 4 * K, limit(0, 7 * K), K),
        Err(Err::NoMemory { size: 4 * K })
    );
    assert_eq!(set.find_free_area(0, 3 * K, limit(0, 7 * K), K), Ok(4 * K));
    assert_eq!(
        set.find_free_area(0, 2 * K, limit(5 * K, 20 * K), K),
        Ok(5 * K)
    );
    assert_eq!(
        set.find_free_area(0, K, limit(0, 0), K),
        Err(Err::NoMemory { size: K })
    );
    assert_eq!(
        set.find_free_area(TOP - K + 1, K, limit(0, 4 * K), K),
        Err(Err::NoMemory { size: K })
    );
}

#[test]
fn find_free_area_large_request_among_many_areas() {
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    for i in 0..2000 {
        ok_fast(&mut set, &mut pt, 2 * i * K, K);
    }
    ok_fast(&mut set, &mut pt, 4000 * K + 64 * K, K);
    check(&set, &pt);
    let all = AddrRange::from_start_size(0, TOP).unwrap();
    // 32 pages fit only in the hole after the 2000th area.
    assert_eq!(set.find_free_area(0, 32 * K, all, K), Ok(3999 * K));
    assert_eq!(set.find_free_area(0, 64 * K, all, K), Ok(3999 * K));
    assert_eq!(set.find_free_area(0, 66 * K, all, K), Ok(4065 * K));
    assert_eq!(set.find_free_area(0, K, all, K), Ok(K));
    assert_eq!(
        set.find_free_area(
            0,
            32 * K,
            AddrRange::from_start_size(0, 4000 * K).unwrap(),
            K
        ),
        Err(Err::NoMemory { size: 32 * K })
    );
}

fn ok_fast(set: &mut Set<K>, pt: &mut Pt, start: usize, size: usize) {
    set.map(area::<K>(start, size, 1), pt, false).unwrap();
}

#[test]
fn area_shrink_and_split_edges() {
    let mut pt = Pt::default();
    let mut a = area::<K>(0, 8 * K, 1);
    a.map_area(&mut pt).unwrap();
    for bad in [0, 8 * K, 9 * K] {
        assert_eq!(
            a.shrink_left(bad, &mut pt),
            Err(Err::InvalidParam {
                reason: InvalidParam::ShrinkSize {
                    new_size: bad,
                    size: 8 * K
                }
            })
        );
    }
    assert!(matches!(
        a.shrink_right(K + 1, &mut pt),
        Err(Err::InvalidParam { .. })
    ));
    a.shrink_left(6 * K, &mut pt).unwrap();
    assert_eq!((a.start(), a.size()), (2 * K, 6 * K));
    a.shrink_right(4 * K, &mut pt).unwrap();
    assert_eq!((a.start(), a.size(), a.end()), (2 * K, 4 * K, Some(6 * K)));
    assert_eq!(
        pt.pages.keys().copied().collect::<Vec<_>>(),
        vec![2 * K, 3 * K, 4 * K, 5 * K]
    );
    // A failing unmap leaves the area as it was.
    pt.fail_at = vec![pt.calls + 2];
    assert_eq!(a.shrink_left(K, &mut pt), Err(Err::Backend("injected")));
    assert_eq!((a.start(), a.size()), (2 * K, 4 * K));
    // Split: only strictly inside and aligned.
    assert!(a.split(2 * K).is_none());
    assert!(a.split(6 * K).is_none());
    assert!(a.split(3 * K + 1).is_none());
    let right = a.split(3 * K).unwrap();
    assert_eq!((a.start(), a.size()), (2 * K, K));
    assert_eq!(
        (right.start(), right.size(), right.flags()),
        (3 * K, 3 * K, 1)
    );
    // protect_area changes flags only on success.
    let mut b = right.clone();
    pt.fail_at = vec![pt.calls + 1];
    assert!(b.protect_area(2, &mut pt).is_err());
    assert_eq!(b.flags(), 1);
    b.protect_area(2, &mut pt).unwrap();
    assert_eq!(b.flags(), 2);
    assert_eq!(pt.pages[&(3 * K)], 2);
}

#[test]
fn validate_names_a_broken_invariant() {
    let (mut set, _) = three_areas();
    assert_eq!(set.validate(), Ok(()));
    set.gaps.insert_stray(20 * K, 21 * K - 1);
    assert_eq!(
        set.validate(),
        Err("the gap index holds a range that is not a free gap")
    );
    let (mut set, _) = three_areas();
    let last = set.areas.values_mut().next_back().unwrap();
    set.gaps.set(&mut last.gap, None);
    assert_eq!(
        set.validate(),
        Err("the free gap at the top is missing from the gap index")
    );
    let (mut set, _) = three_areas();
    let a = set.areas.remove(&(4 * K)).unwrap();
    set.areas.insert(5 * K, a);
    assert_eq!(
        set.validate(),
        Err("an area is filed under a key other than its start")
    );
}

#[test]
fn clone_copies_bookkeeping_without_backend_calls() {
    let (set, pt) = three_areas();
    let calls = pt.calls;
    let mut copy = set.clone();
    assert_eq!(pt.calls, calls, "cloning must not call the backend");
    assert_eq!(areas(&copy), areas(&set));
    copy.validate().unwrap();
    // The copy is independent: cutting it leaves the original as it was.
    let mut pt_copy = pt.clone();
    copy.unmap(K, 2 * K, &mut pt_copy).unwrap();
    assert_ne!(areas(&copy), areas(&set));
    check(&set, &pt);
    check(&copy, &pt_copy);
}

#[test]
fn gap_index_compacts_holes_and_keeps_owners() {
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    // 400 one-page areas with one-page gaps: 400 gaps in one size class.
    for i in 0..400 {
        ok(&mut set, &mut pt, (2 * i + 1) * K, K, 1);
    }
    assert_eq!(set.gaps.slots(), 401);
    // Filling the lower 340 gaps leaves holes at the front of that class: it is
    // compacted, the remaining gaps move, and their owners must follow (`check`).
    for i in 0..340 {
        ok(&mut set, &mut pt, 2 * i * K, K, 2);
    }
    assert_eq!(set.gaps.keys().len(), 61);
    assert!(
        set.gaps.slots() < 401 - 100,
        "holes were not compacted: {} slots",
        set.gaps.slots()
    );
    // The index still answers, by address and by size.
    let limit = AddrRange::from_start_size(0, 1000 * K).unwrap();
    assert_eq!(set.find_free_area(0, K, limit, K), Ok(680 * K));
    assert_eq!(set.find_free_area(0, 2 * K, limit, K), Ok(800 * K));
    // Unmapping every other area merges gaps into a larger class.
    for i in (341..400).step_by(2) {
        set.unmap((2 * i + 1) * K, K, &mut pt).unwrap();
        check(&set, &pt);
    }
    assert_eq!(set.find_free_area(0, 3 * K, limit, K), Ok(682 * K));
    // Emptying the set leaves one gap in one slot.
    set.unmap(0, 1000 * K, &mut pt).unwrap();
    check(&set, &pt);
    assert_eq!(set.gaps.keys().len(), 1);
    assert_eq!(set.gaps.slots(), 1);
}

/// The lowest free start `>= hint` for `pages` pages inside `[0, window)`, by brute force
/// over the page table.
fn free_by_scan(pt: &Pt, hint: usize, pages: usize, window: usize) -> Option<usize> {
    (hint..window).step_by(K).find(|&s| {
        s + pages * K <= window && (0..pages).all(|i| !pt.pages.contains_key(&(s + i * K)))
    })
}

#[test]
fn gap_index_survives_random_churn() {
    const WINDOW: usize = 2048 * K;
    let (mut set, mut pt) = (Set::<K>::new(), Pt::default());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let limit = AddrRange::from_start_size(0, WINDOW).unwrap();
    let mut max_slots = 0;
    for step in 0..6000 {
        let start = rand(2048) * K;
        let size = (1 + rand(if step % 3 == 0 { 64 } else { 4 })) * K;
        let size = size.min(WINDOW - start);
        match rand(4) {
            0 | 1 => {
                let _ = set.map(area::<K>(start, size, 1), &mut pt, rand(2) == 0);
            }
            2 => set.unmap(start, size, &mut pt).unwrap(),
            _ => set.protect(start, size, |f| Some(f ^ 2), &mut pt).unwrap(),
        }
        max_slots = max_slots.max(set.gaps.slots());
        let live = set.gaps.keys().len();
        // At most 3 holes per gap plus 1 (the unit-test slack) in each of 65 classes.
        assert!(set.gaps.slots() <= 4 * live + 65, "too many holes");
        if step % 16 == 0 {
            check(&set, &pt);
            let hint = rand(2048) * K;
            let pages = 1 + rand(if step % 32 == 0 { 128 } else { 8 });
            assert_eq!(
                set.find_free_area(hint, pages * K, limit, K).ok(),
                free_by_scan(&pt, hint, pages, WINDOW),
                "step {step}: {pages} pages from {hint:#x}"
            );
        }
    }
    check(&set, &pt);
    assert!(max_slots > 100, "the churn should build a large index");
}
