//! Model-based test: random sequences of `map` / `unmap` / `protect` / `find_free_area` /
//! `handle_fault`
//! on a [`MemorySet`] against a plain page-granular reference, with a backend failure
//! injected into many of the operations.
//!
//! After every step the areas, their flags, `find` for every page, and the backend's
//! page table must equal the reference; an operation that failed must have changed
//! nothing. The window of 64 pages sits either at address 0 or right below `2^64`.
//!
//! Default: 256 cases x 40 operations (proptest's default case count); set
//! `PROPTEST_CASES` for longer runs.

use std::collections::BTreeMap;

use memory_set::{AddrRange, GuestPhysAddr, MappingBackend, MemoryArea, MemorySet, MemorySetError};
use proptest::prelude::*;

mod common;

use common::{AreaOp, N, PAGE, map_op, protect_op, unmap_op};

/// The backend's page table: flags per page address, and a one-shot failure injector.
#[derive(Debug, Default)]
struct Pt {
    pages: BTreeMap<usize, u8>,
    calls: usize,
    /// Fail the call with this number (then never again, so undo calls succeed).
    fail_at: Option<usize>,
    fired: bool,
    /// The area (start, size) and flags of the last fault the backend served.
    last_fault: Option<(usize, usize, u8)>,
}

impl Pt {
    fn tick(&mut self) -> Result<(), &'static str> {
        self.calls += 1;
        if self.fail_at == Some(self.calls) {
            self.fail_at = None;
            self.fired = true;
            return Err("injected");
        }
        Ok(())
    }
}

/// A strict backend: it panics on any call the set must never make.
#[derive(Clone, Debug)]
struct Strict;

fn pages(start: GuestPhysAddr, size: usize) -> impl Iterator<Item = usize> {
    assert!(size > 0 && start.as_usize().is_multiple_of(PAGE) && size.is_multiple_of(PAGE));
    let s = start.as_usize();
    (0..size / PAGE).map(move |i| s + i * PAGE)
}

impl MappingBackend for Strict {
    type Addr = GuestPhysAddr;
    type Flags = u8;
    type PageTable = Pt;
    type Error = &'static str;

    fn map(
        &self,
        start: GuestPhysAddr,
        size: usize,
        flags: u8,
        pt: &mut Pt,
    ) -> Result<(), &'static str> {
        pt.tick()?;
        for p in pages(start, size) {
            assert!(
                pt.pages.insert(p, flags).is_none(),
                "map over mapped {p:#x}"
            );
        }
        Ok(())
    }

    fn unmap(&self, start: GuestPhysAddr, size: usize, pt: &mut Pt) -> Result<(), &'static str> {
        pt.tick()?;
        for p in pages(start, size) {
            assert!(pt.pages.remove(&p).is_some(), "unmap of hole {p:#x}");
        }
        Ok(())
    }

    fn protect(
        &self,
        start: GuestPhysAddr,
        size: usize,
        old: u8,
        new: u8,
        pt: &mut Pt,
    ) -> Result<(), &'static str> {
        pt.tick()?;
        assert_ne!(old, new, "protect to the same flags");
        for p in pages(start, size) {
            let f = pt.pages.get_mut(&p).expect("protect of hole");
            assert_eq!(*f, old, "wrong old flags at {p:#x}");
            *f = new;
        }
        Ok(())
    }

    fn handle_fault(
        &self,
        area: AddrRange<GuestPhysAddr>,
        flags: u8,
        addr: GuestPhysAddr,
        access: u8,
        pt: &mut Pt,
    ) -> Result<(), &'static str> {
        pt.tick()?;
        assert!(area.contains(addr));
        pt.last_fault = Some((area.start().as_usize(), area.size(), flags));
        if access & !flags != 0 {
            Err("denied")
        } else {
            Ok(())
        }
    }

    fn prepare_split(
        &self,
        area: AddrRange<GuestPhysAddr>,
        _flags: u8,
        at: GuestPhysAddr,
        pt: &mut Pt,
    ) -> Result<(), &'static str> {
        pt.tick()?;
        assert!(
            area.start() < at && Some(at) <= area.last(),
            "cut outside the area"
        );
        Ok(())
    }
}

/// One operation, in pages relative to the window base.
#[derive(Clone, Debug)]
enum Op {
    /// A `map`, `unmap` or `protect`.
    Area(AreaOp),
    FindFree {
        hint: usize,
        n: usize,
        limit_lo: usize,
        limit_n: usize,
        align_log: u32,
    },
    Fault {
        page: usize,
        access: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => map_op().prop_map(Op::Area),
        2 => unmap_op().prop_map(Op::Area),
        2 => protect_op().prop_map(Op::Area),
        1 => (0..N, 0..4u8).prop_map(|(page, access)| Op::Fault { page, access }),
        1 => (0..N, 1..=8usize, 0..N, 0..=N, 0..4u32).prop_map(
            |(hint, n, limit_lo, limit_n, align_log)| Op::FindFree {
                hint,
                n,
                limit_lo,
                limit_n: limit_n.min(N - limit_lo),
                align_log,
            }
        ),
    ]
}

/// The reference: for each mapped page, the id of the area piece it belongs to and its
/// flags. Areas are the maximal runs of consecutive pages with the same id.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    pages: BTreeMap<usize, (u32, u8)>,
    next_id: u32,
}

impl Model {
    fn fresh(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Areas as (first page, pages, flags).
    fn areas(&self) -> Vec<(usize, usize, u8)> {
        let mut out: Vec<(usize, usize, u8, u32)> = Vec::new();
        for (&p, &(id, flags)) in &self.pages {
            match out.last_mut() {
                Some(last) if last.0 + last.1 == p && last.3 == id => last.1 += 1,
                _ => out.push((p, 1, flags, id)),
            }
        }
        out.into_iter().map(|(p, n, f, _)| (p, n, f)).collect()
    }
}

struct Harness {
    base: usize,
    set: MemorySet<Strict>,
    pt: Pt,
    model: Model,
}

impl Harness {
    fn addr(&self, page: usize) -> GuestPhysAddr {
        GuestPhysAddr::new(self.base + page * PAGE)
    }

    fn check(&self) {
        let got: Vec<_> = self
            .set
            .iter()
            .map(|a| {
                (
                    (a.start().as_usize() - self.base) / PAGE,
                    a.size() / PAGE,
                    a.flags(),
                )
            })
            .collect();
        assert_eq!(got, self.model.areas(), "areas differ");
        assert_eq!(self.set.validate(), Ok(()), "set invariants");
        let expected_pt: BTreeMap<usize, u8> = self
            .model
            .pages
            .iter()
            .map(|(&p, &(_, f))| (self.base + p * PAGE, f))
            .collect();
        assert_eq!(self.pt.pages, expected_pt, "page table differs");
        for p in 0..N {
            let found = self.set.find(self.addr(p)).map(|a| a.flags());
            assert_eq!(
                found,
                self.model.pages.get(&p).map(|&(_, f)| f),
                "find page {p}"
            );
        }
    }

    fn step(&mut self, op: &Op, fail: Option<usize>) {
        self.pt.fail_at = fail.map(|k| self.pt.calls + k);
        self.pt.fired = false;
        let before = (self.model.clone(), self.pt.pages.clone());
        let result = self.apply(op);
        if self.pt.fired {
            assert_eq!(result, Err(MemorySetError::Backend("injected")), "{op:?}");
            self.model = before.0;
            assert_eq!(
                self.pt.pages, before.1,
                "page table changed by a failed {op:?}"
            );
        } else {
            result.unwrap_or_else(|e| panic!("{op:?}: {e}"));
        }
        self.pt.fail_at = None;
        self.check();
    }

    /// Runs `op` on the set and the model; returns the set's result (model errors are
    /// compared here).
    fn apply(&mut self, op: &Op) -> Result<(), MemorySetError<&'static str>> {
        match *op {
            Op::Area(AreaOp::Map {
                page,
                n,
                flags,
                replace,
            }) => {
                let area = MemoryArea::new(self.addr(page), n * PAGE, flags, Strict).unwrap();
                let overlap = (page..page + n).find(|p| self.model.pages.contains_key(p));
                let r = self.set.map(area, &mut self.pt, replace);
                if let (Some(_), false) = (overlap, replace) {
                    assert!(
                        matches!(r, Err(MemorySetError::AlreadyExists { .. })),
                        "{r:?}"
                    );
                    return Ok(());
                }
                let id = self.model.fresh();
                for p in page..page + n {
                    self.model.pages.insert(p, (id, flags));
                }
                r
            }
            Op::Area(AreaOp::Unmap { page, n }) => {
                for p in page..page + n {
                    self.model.pages.remove(&p);
                }
                self.set.unmap(self.addr(page), n * PAGE, &mut self.pt)
            }
            Op::Area(AreaOp::Protect { page, n, new, only }) => {
                let update = |f: u8| only.is_none_or(|o| o == f).then_some(new);
                let mut renamed = BTreeMap::new();
                for p in page..page + n {
                    if let Some((id, flags)) = self.model.pages.get(&p).copied()
                        && let Some(nf) = update(flags).filter(|&nf| nf != flags)
                    {
                        let nid = *renamed.entry(id).or_insert_with(|| self.model.fresh());
                        self.model.pages.insert(p, (nid, nf));
                    }
                }
                self.set
                    .protect(self.addr(page), n * PAGE, update, &mut self.pt)
            }
            Op::FindFree {
                hint,
                n,
                limit_lo,
                limit_n,
                align_log,
            } => {
                let align = PAGE << align_log;
                let limit =
                    AddrRange::from_start_size(self.addr(limit_lo), limit_n * PAGE).unwrap();
                let got = self
                    .set
                    .find_free_area(self.addr(hint), n * PAGE, limit, align);
                let apages = 1 << align_log;
                let expected = (hint.max(limit_lo)..N)
                    .filter(|s| s % apages == 0)
                    .find(|&s| {
                        s + n <= limit_lo + limit_n
                            && (s..s + n).all(|p| !self.model.pages.contains_key(&p))
                    })
                    .map(|s| self.addr(s));
                match expected {
                    Some(a) => assert_eq!(got, Ok(a), "{op:?}"),
                    None => assert_eq!(
                        got,
                        Err(MemorySetError::NoMemory { size: n * PAGE }),
                        "{op:?}"
                    ),
                }
                Ok(())
            }
            Op::Fault { page, access } => {
                self.pt.last_fault = None;
                let got = self.set.handle_fault(self.addr(page), access, &mut self.pt);
                let Some(&(id, flags)) = self.model.pages.get(&page) else {
                    let addr = self.addr(page).as_usize();
                    assert_eq!(got, Err(MemorySetError::NotFound { addr }));
                    return Ok(());
                };
                if self.pt.fired {
                    return got;
                }
                // The backend saw the whole area around the page.
                let same = |p: &usize| self.model.pages.get(p).is_some_and(|&(i, _)| i == id);
                let first = (0..=page).rev().take_while(same).last().unwrap_or(page);
                let last = (page..N).take_while(same).last().unwrap_or(page);
                let area = (
                    self.addr(first).as_usize(),
                    (last - first + 1) * PAGE,
                    flags,
                );
                assert_eq!(self.pt.last_fault, Some(area), "{op:?}");
                let expected = if access & !flags != 0 {
                    Err(MemorySetError::Backend("denied"))
                } else {
                    Ok(())
                };
                assert_eq!(got, expected, "{op:?}");
                Ok(())
            }
        }
    }
}

proptest! {
    #[test]
    fn set_matches_page_model(
        at_top in any::<bool>(),
        ops in proptest::collection::vec((op(), proptest::option::of(1..10usize)), 40),
    ) {
        let base = if at_top { 0usize.wrapping_sub(N * PAGE) } else { 0 };
        let mut h = Harness { base, set: MemorySet::new(), pt: Pt::default(), model: Model::default() };
        for (op, fail) in &ops {
            h.step(op, *fail);
        }
        // Finally, clear (with and without a failure) empties both.
        h.pt.fail_at = Some(h.pt.calls + 1);
        if !h.set.is_empty() {
            prop_assert_eq!(h.set.clear(&mut h.pt), Err(MemorySetError::Backend("injected")));
            h.check();
        }
        h.set.clear(&mut h.pt).unwrap();
        h.model = Model::default();
        h.check();
    }
}
