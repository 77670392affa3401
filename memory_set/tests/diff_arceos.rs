//! Differential test against the ArceOS `memory_set` 0.4 crate (`arceos_memory_set`).
//!
//! Random `map` / `unmap` / `protect` / `find_free_area` sequences, restricted to input
//! where both crates define the behaviour (non-zero, page-aligned sizes, no overflow,
//! protect only where the flags really change, `find_free_area` sizes that are multiples
//! of the alignment), must leave the same areas and page tables and give the same
//! answers. Each deliberate difference has its own named test below.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use arceos_memory_addr::AddrRange as ArceRange;
use arceos_memory_set::{
    MappingBackend as ArceBackend, MappingError, MemoryArea as ArceArea, MemorySet as ArceSet,
};
use memory_set::{AddrRange, InvalidParam, MappingBackend, MemoryArea, MemorySet, MemorySetError};
use proptest::prelude::*;

mod common;

use common::{AreaOp, N, PAGE, map_op, protect_op, unmap_op};

// The window of `N` pages starts at address 0.

/// Page table shared by both backends: flags per page address; `fail` makes every
/// `map` call fail (to show what each crate does after a backend failure).
#[derive(Clone, Debug, Default, PartialEq)]
struct Pt {
    pages: BTreeMap<usize, u8>,
    fail_map: bool,
}

fn pages(start: usize, size: usize) -> impl Iterator<Item = usize> {
    (0..size / PAGE).map(move |i| start + i * PAGE)
}

impl Pt {
    fn map(&mut self, start: usize, size: usize, flags: u8) -> bool {
        if self.fail_map || pages(start, size).any(|p| self.pages.contains_key(&p)) {
            return false;
        }
        self.pages.extend(pages(start, size).map(|p| (p, flags)));
        true
    }
    fn unmap(&mut self, start: usize, size: usize) -> bool {
        if pages(start, size).any(|p| !self.pages.contains_key(&p)) {
            return false;
        }
        pages(start, size).for_each(|p| {
            self.pages.remove(&p);
        });
        true
    }
    fn protect(&mut self, start: usize, size: usize, new: u8) -> bool {
        if pages(start, size).any(|p| !self.pages.contains_key(&p)) {
            return false;
        }
        pages(start, size).for_each(|p| {
            self.pages.insert(p, new);
        });
        true
    }
}

/// The same page-table logic behind ArceOS's `bool` interface...
#[derive(Clone)]
struct Arce;

impl ArceBackend for Arce {
    type Addr = usize;
    type Flags = u8;
    type PageTable = Pt;
    fn map(&self, start: usize, size: usize, flags: u8, pt: &mut Pt) -> bool {
        pt.map(start, size, flags)
    }
    fn unmap(&self, start: usize, size: usize, pt: &mut Pt) -> bool {
        pt.unmap(start, size)
    }
    fn protect(&self, start: usize, size: usize, new: u8, pt: &mut Pt) -> bool {
        pt.protect(start, size, new)
    }
}

/// ...and behind ours, with typed errors.
#[derive(Clone)]
struct Ours;

#[derive(Debug, PartialEq)]
struct Refused;

fn typed(ok: bool) -> Result<(), Refused> {
    if ok { Ok(()) } else { Err(Refused) }
}

impl MappingBackend for Ours {
    type Addr = usize;
    type Flags = u8;
    type PageTable = Pt;
    type Error = Refused;
    fn map(&self, start: usize, size: usize, flags: u8, pt: &mut Pt) -> Result<(), Refused> {
        typed(pt.map(start, size, flags))
    }
    fn unmap(&self, start: usize, size: usize, pt: &mut Pt) -> Result<(), Refused> {
        typed(pt.unmap(start, size))
    }
    fn protect(
        &self,
        start: usize,
        size: usize,
        _: u8,
        new: u8,
        pt: &mut Pt,
    ) -> Result<(), Refused> {
        typed(pt.protect(start, size, new))
    }
    fn handle_fault(
        &self,
        _: AddrRange<usize>,
        _: u8,
        _: usize,
        _: u8,
        _: &mut Pt,
    ) -> Result<(), Refused> {
        Err(Refused)
    }
}

fn ours_areas(set: &MemorySet<Ours>) -> Vec<(usize, usize, u8)> {
    set.iter()
        .map(|a| (a.start(), a.size(), a.flags()))
        .collect()
}

fn arce_areas(set: &ArceSet<Arce>) -> Vec<(usize, usize, u8)> {
    set.iter()
        .map(|a| (a.start(), a.size(), a.flags()))
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    /// A `map`, `unmap` or `protect`.
    Area(AreaOp),
    FindFree {
        hint: usize,
        align_log: u32,
        n_aligned: usize,
        limit_lo: usize,
        limit_n: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => map_op().prop_map(Op::Area),
        2 => unmap_op().prop_map(Op::Area),
        2 => protect_op().prop_map(Op::Area),
        1 => (0..N, 0..3u32, 1..=4usize, 0..N, 0..=N).prop_map(
            |(hint, align_log, n_aligned, limit_lo, limit_n)| Op::FindFree {
                hint,
                align_log,
                n_aligned,
                limit_lo,
                limit_n: limit_n.min(N - limit_lo),
            }
        ),
    ]
}

proptest! {
    #[test]
    fn same_areas_as_arceos(ops in proptest::collection::vec(op(), 1..40)) {
        let (mut ours, mut ours_pt) = (MemorySet::<Ours>::new(), Pt::default());
        let (mut arce, mut arce_pt) = (ArceSet::<Arce>::new(), Pt::default());
        for op in &ops {
            match *op {
                Op::Area(AreaOp::Map { page, n, flags, replace }) => {
                    let (s, size) = (page * PAGE, n * PAGE);
                    let a = ours.map(MemoryArea::new(s, size, flags, Ours).unwrap(), &mut ours_pt, replace);
                    let b = arce.map(ArceArea::new(s, size, flags, Arce), &mut arce_pt, replace);
                    match (a, b) {
                        (Ok(()), Ok(())) => {}
                        (Err(MemorySetError::AlreadyExists { .. }), Err(MappingError::AlreadyExists)) => {}
                        (a, b) => prop_assert!(false, "{:?}: ours {:?}, arceos {:?}", op, a, b),
                    }
                }
                Op::Area(AreaOp::Unmap { page, n }) => {
                    prop_assert_eq!(ours.unmap(page * PAGE, n * PAGE, &mut ours_pt), Ok(()));
                    prop_assert_eq!(arce.unmap(page * PAGE, n * PAGE, &mut arce_pt), Ok(()));
                }
                Op::Area(AreaOp::Protect { page, n, new, only }) => {
                    // Only real changes: ArceOS splits even when the flags stay the same
                    // (see `difference_protect_to_the_same_flags_does_not_split`).
                    let update = |f: u8| (f != new && only.is_none_or(|o| o == f)).then_some(new);
                    prop_assert_eq!(ours.protect(page * PAGE, n * PAGE, update, &mut ours_pt), Ok(()));
                    prop_assert_eq!(arce.protect(page * PAGE, n * PAGE, update, &mut arce_pt), Ok(()));
                }
                Op::FindFree { hint, align_log, n_aligned, limit_lo, limit_n } => {
                    let align = PAGE << align_log;
                    let size = n_aligned * align;
                    let (lo, hi) = (limit_lo * PAGE, (limit_lo + limit_n) * PAGE);
                    let a = ours.find_free_area(hint * PAGE, size, AddrRange::new(lo, hi).unwrap(), align);
                    let b = arce.find_free_area(hint * PAGE, size, ArceRange::new(lo, hi), align);
                    let is_free = |s: usize| !ours.overlaps(AddrRange::from_start_size(s, size).unwrap());
                    match b {
                        // ArceOS can skip an area when aligning and answer a range that
                        // overlaps it (`difference_find_free_area_never_overlaps_an_area`):
                        // then ours must still give a free, aligned range in the limit.
                        Some(s) if !is_free(s) => {
                            if let Ok(s) = a {
                                let from = lo.max(hint * PAGE);
                                prop_assert!(is_free(s) && s % align == 0 && from <= s && s + size <= hi);
                            }
                        }
                        // ArceOS may answer past the limit; then nothing fits inside it
                        // (`difference_find_free_area_stays_inside_its_limit`).
                        Some(s) if s + size > hi => {
                            prop_assert_eq!(a, Err(MemorySetError::NoMemory { size }), "{:?}", op)
                        }
                        Some(s) => prop_assert_eq!(a, Ok(s), "{:?}", op),
                        None => prop_assert_eq!(a, Err(MemorySetError::NoMemory { size }), "{:?}", op),
                    }
                }
            }
            prop_assert_eq!(ours_areas(&ours), arce_areas(&arce), "after {:?}", op);
            prop_assert_eq!(ours.validate(), Ok(()));
            prop_assert_eq!(&ours_pt, &arce_pt, "after {:?}", op);
        }
        prop_assert_eq!(ours.clear(&mut ours_pt), Ok(()));
        prop_assert_eq!(arce.clear(&mut arce_pt), Ok(()));
        prop_assert_eq!(&ours_pt, &arce_pt);
    }
}

/// Two sets holding [0, 1 page) and [4, 5 pages).
fn two_areas() -> (MemorySet<Ours>, Pt, ArceSet<Arce>, Pt) {
    let (mut ours, mut ours_pt) = (MemorySet::<Ours>::new(), Pt::default());
    let (mut arce, mut arce_pt) = (ArceSet::<Arce>::new(), Pt::default());
    for s in [0, 4 * PAGE] {
        ours.map(
            MemoryArea::new(s, PAGE, 1, Ours).unwrap(),
            &mut ours_pt,
            false,
        )
        .unwrap();
        arce.map(ArceArea::new(s, PAGE, 1, Arce), &mut arce_pt, false)
            .unwrap();
    }
    (ours, ours_pt, arce, arce_pt)
}

#[test]
fn difference_find_free_area_stays_inside_its_limit() {
    let (ours, _, arce, _) = two_areas();
    // Limit [1, 3 pages) is too small for 3 pages; ArceOS answers with page 1 anyway
    // (its first-fit loop compares against the next area, not the limit).
    let (lo, hi) = (PAGE, 3 * PAGE);
    assert_eq!(
        arce.find_free_area(0, 3 * PAGE, ArceRange::new(lo, hi), PAGE),
        Some(PAGE)
    );
    assert_eq!(
        ours.find_free_area(0, 3 * PAGE, AddrRange::new(lo, hi).unwrap(), PAGE),
        Err(MemorySetError::NoMemory { size: 3 * PAGE })
    );
}

#[test]
fn difference_find_free_area_never_overlaps_an_area() {
    let (mut ours, mut ours_pt) = (MemorySet::<Ours>::new(), Pt::default());
    let (mut arce, mut arce_pt) = (ArceSet::<Arce>::new(), Pt::default());
    for (s, n) in [(28, 7), (35, 2)] {
        ours.map(
            MemoryArea::new(s * PAGE, n * PAGE, 1, Ours).unwrap(),
            &mut ours_pt,
            false,
        )
        .unwrap();
        arce.map(
            ArceArea::new(s * PAGE, n * PAGE, 1, Arce),
            &mut arce_pt,
            false,
        )
        .unwrap();
    }
    // Two pages aligned to two pages, inside [29, 40) pages. ArceOS aligns the end of
    // [28, 35) up to page 36, so it never looks at the area [35, 37) starting below that
    // and answers page 36, which is mapped.
    let (lo, hi, size, align) = (29 * PAGE, 40 * PAGE, 2 * PAGE, 2 * PAGE);
    let b = arce.find_free_area(0, size, ArceRange::new(lo, hi), align);
    assert_eq!(b, Some(36 * PAGE));
    assert!(arce.iter().any(|a| a.va_range().contains(36 * PAGE)));
    assert_eq!(
        ours.find_free_area(0, size, AddrRange::new(lo, hi).unwrap(), align),
        Ok(38 * PAGE)
    );
}

#[test]
fn difference_find_free_area_size_need_not_be_a_multiple_of_align() {
    let (ours, _, arce, _) = two_areas();
    let (lo, hi) = (0, 64 * PAGE);
    assert_eq!(
        arce.find_free_area(0, PAGE, ArceRange::new(lo, hi), 2 * PAGE),
        None
    );
    assert_eq!(
        ours.find_free_area(0, PAGE, AddrRange::new(lo, hi).unwrap(), 2 * PAGE),
        Ok(2 * PAGE)
    );
}

#[test]
fn difference_zero_size_is_an_error() {
    let (mut ours, mut ours_pt, mut arce, mut arce_pt) = two_areas();
    assert_eq!(arce.unmap(0, 0, &mut arce_pt), Ok(()));
    assert_eq!(
        ours.unmap(0, 0, &mut ours_pt),
        Err(MemorySetError::InvalidParam {
            reason: InvalidParam::ZeroSize
        })
    );
    // ArceOS accepts an empty area until `map`; ours refuses to build one.
    assert_eq!(
        arce.map(ArceArea::new(8 * PAGE, 0, 1, Arce), &mut arce_pt, false),
        Err(MappingError::InvalidParam)
    );
    assert!(MemoryArea::new(8 * PAGE, 0, 1, Ours).is_err());
}

#[test]
fn difference_overflow_is_an_error_not_a_panic_and_the_top_page_is_usable() {
    let top = usize::MAX - PAGE + 1;
    // ArceOS panics for an area that passes 2^64, and also for one ending exactly there.
    for size in [2 * PAGE, PAGE] {
        let r = catch_unwind(|| ArceArea::new(top, size, 1, Arce).size());
        assert!(r.is_err(), "ArceOS accepted size {size:#x} at the top");
    }
    assert_eq!(
        MemoryArea::new(top, 2 * PAGE, 1, Ours).unwrap_err(),
        MemorySetError::InvalidParam {
            reason: InvalidParam::Overflow
        }
    );
    let (mut ours, mut pt) = (MemorySet::<Ours>::new(), Pt::default());
    ours.map(MemoryArea::new(top, PAGE, 1, Ours).unwrap(), &mut pt, false)
        .unwrap();
    assert_eq!(ours.find(usize::MAX).map(|a| a.end()), Some(None));
}

#[test]
fn difference_protect_to_the_same_flags_does_not_split() {
    let (mut ours, mut ours_pt) = (MemorySet::<Ours>::new(), Pt::default());
    let (mut arce, mut arce_pt) = (ArceSet::<Arce>::new(), Pt::default());
    ours.map(
        MemoryArea::new(0, 4 * PAGE, 1, Ours).unwrap(),
        &mut ours_pt,
        false,
    )
    .unwrap();
    arce.map(ArceArea::new(0, 4 * PAGE, 1, Arce), &mut arce_pt, false)
        .unwrap();
    ours.protect(PAGE, PAGE, |_| Some(1), &mut ours_pt).unwrap();
    arce.protect(PAGE, PAGE, |_| Some(1), &mut arce_pt).unwrap();
    assert_eq!(ours.len(), 1);
    assert_eq!(arce.len(), 3);
}

#[test]
fn difference_a_failed_replacing_map_is_undone() {
    let (mut ours, mut ours_pt, mut arce, mut arce_pt) = two_areas();
    let before = (ours_areas(&ours), ours_pt.clone());
    ours_pt.fail_map = true;
    arce_pt.fail_map = true;
    // Replace [0, 8 pages): the backend refuses the new mapping.
    assert_eq!(
        arce.map(ArceArea::new(0, 8 * PAGE, 2, Arce), &mut arce_pt, true),
        Err(MappingError::BadState)
    );
    // ArceOS has already removed both old areas and their pages.
    assert!(arce.is_empty());
    assert!(arce_pt.pages.is_empty());
    // Ours would map the old areas back, but this backend refuses every map, which
    // breaks the undo contract: the error says so instead of hiding it.
    let err = ours
        .map(
            MemoryArea::new(0, 8 * PAGE, 2, Ours).unwrap(),
            &mut ours_pt,
            true,
        )
        .unwrap_err();
    assert_eq!(
        err,
        MemorySetError::UndoFailed {
            cause: Refused,
            undo: Refused
        }
    );
    // With a backend that meets the contract (only the new map fails), nothing changes.
    let mut fails = FailOnce::default();
    let mut set = MemorySet::<FailNth>::new();
    for s in [0, 4 * PAGE] {
        set.map(
            MemoryArea::new(s, PAGE, 1, FailNth).unwrap(),
            &mut fails,
            false,
        )
        .unwrap();
    }
    fails.fail_at = Some(fails.calls + 3); // two unmaps succeed, the new map fails
    assert_eq!(
        set.map(
            MemoryArea::new(0, 8 * PAGE, 2, FailNth).unwrap(),
            &mut fails,
            true
        ),
        Err(MemorySetError::Backend(Refused))
    );
    assert_eq!(fails.pt, before.1);
    assert_eq!(
        set.iter()
            .map(|a| (a.start(), a.size(), a.flags()))
            .collect::<Vec<_>>(),
        before.0
    );
}

/// Page table with a one-shot failure injector (fail the n-th call).
#[derive(Default)]
struct FailOnce {
    pt: Pt,
    calls: usize,
    fail_at: Option<usize>,
}

impl FailOnce {
    fn tick(&mut self) -> Result<(), Refused> {
        self.calls += 1;
        if self.fail_at == Some(self.calls) {
            self.fail_at = None;
            return Err(Refused);
        }
        Ok(())
    }
}

#[derive(Clone)]
struct FailNth;

impl MappingBackend for FailNth {
    type Addr = usize;
    type Flags = u8;
    type PageTable = FailOnce;
    type Error = Refused;
    fn map(&self, start: usize, size: usize, flags: u8, t: &mut FailOnce) -> Result<(), Refused> {
        t.tick()?;
        typed(t.pt.map(start, size, flags))
    }
    fn unmap(&self, start: usize, size: usize, t: &mut FailOnce) -> Result<(), Refused> {
        t.tick()?;
        typed(t.pt.unmap(start, size))
    }
    fn protect(
        &self,
        start: usize,
        size: usize,
        _: u8,
        new: u8,
        t: &mut FailOnce,
    ) -> Result<(), Refused> {
        t.tick()?;
        typed(t.pt.protect(start, size, new))
    }
    fn handle_fault(
        &self,
        _: AddrRange<usize>,
        _: u8,
        _: usize,
        _: u8,
        _: &mut FailOnce,
    ) -> Result<(), Refused> {
        Err(Refused)
    }
}

#[test]
fn difference_a_failed_unmap_panics_in_arceos_and_is_undone_in_ours() {
    // ArceOS unwraps the backend result for areas inside the range: a failure panics.
    let (_, _, mut arce, mut arce_pt) = two_areas();
    arce_pt.pages.remove(&(4 * PAGE)); // the backend will refuse to unmap it
    let r = catch_unwind(AssertUnwindSafe(|| arce.unmap(0, 8 * PAGE, &mut arce_pt)));
    assert!(r.is_err());
    // Ours: the second unmap fails, the first is mapped back, the error is typed.
    let mut t = FailOnce::default();
    let mut set = MemorySet::<FailNth>::new();
    for s in [0, 4 * PAGE] {
        set.map(MemoryArea::new(s, PAGE, 1, FailNth).unwrap(), &mut t, false)
            .unwrap();
    }
    let before = t.pt.clone();
    t.fail_at = Some(t.calls + 2);
    assert_eq!(
        set.unmap(0, 8 * PAGE, &mut t),
        Err(MemorySetError::Backend(Refused))
    );
    assert_eq!(t.pt, before);
    assert_eq!(set.len(), 2);
}
