//! Model-based test of `Stage2Table`: random sequences of map_page (4K/2M/1G),
//! map_range, unmap_range, protect_range and collapse, on both formats and on
//! capability sets with and without 1 GiB leaves, against a plain reference map of
//! extents.
//!
//! After every step: the table's leaves, normalised into maximal extents, equal the
//! reference (so every page translates as the reference says); pages at, around and
//! inside the touched range translate as the reference says through `translate` and
//! through the independent software walker; the validator passes. Many steps run
//! with an injected allocation failure: a step that fails must leave the leaves,
//! the table frame count and the arena's frames in use exactly as before. At the
//! end, `destroy` returns every frame to the arena.
//!
//! Default: 32 cases x up to 40 operations per test; set `PROPTEST_CASES` for longer
//! runs.

use std::collections::BTreeMap;

use ept::format::{Access, LeafAttr, MemType};
use ept::frame::HeapArena;
use ept::validate;
use ept::{
    Ept, LeafSize, Npt, Size1G, Size2M, Size4K, Stage2Caps, Stage2Format, Stage2Table, TableError,
};
use memory_set::{GuestPhysAddr, HostPhysAddr};
use proptest::prelude::*;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
/// The GPA window: 4 GiB (four 1 GiB slots).
const WINDOW: u64 = 4 * G1;
/// Pretend host memory the leaves point at (outside the arena).
const HBASE: u64 = 0x100_0000_0000;

type Extent = (u64, u64, u64, LeafAttr);

fn attr(i: u8) -> LeafAttr {
    match i % 6 {
        0 => LeafAttr::ram(Access::RWX),
        1 => LeafAttr::ram(Access::READ),
        2 => LeafAttr::ram(Access::RW),
        3 => LeafAttr::ram(Access::RX),
        4 => LeafAttr::device(Access::RW),
        _ => LeafAttr {
            access: Access::RW,
            mem_type: MemType::WriteCombining,
        },
    }
}

#[derive(Clone, Debug)]
enum Op {
    MapPage {
        size: LeafSize,
        slot: u64,
        hslot: u64,
        attr: u8,
    },
    MapRange {
        start: u64,
        len: u64,
        delta: u64,
        max: LeafSize,
        attr: u8,
    },
    Unmap {
        start: u64,
        len: u64,
    },
    Protect {
        start: u64,
        len: u64,
        attr: u8,
    },
    Collapse {
        gpa: u64,
    },
}

#[derive(Clone, Debug)]
struct Step {
    op: Op,
    /// Fail allocations after this many successes (for this step only).
    fail_after: Option<usize>,
}

fn leaf_size() -> impl Strategy<Value = LeafSize> {
    prop_oneof![
        3 => Just(LeafSize::Size4K),
        2 => Just(LeafSize::Size2M),
        1 => Just(LeafSize::Size1G),
    ]
}

/// A 4K-aligned range inside the window, biased toward huge-page boundaries.
fn range() -> impl Strategy<Value = (u64, u64)> {
    let near = |base: u64, off: i64| (base as i64 + off * K4 as i64).max(0) as u64;
    prop_oneof![
        // Small, anywhere.
        (0..WINDOW / K4, 1..64u64).prop_map(|(p, n)| (p * K4, n * K4)),
        // Around a 2M boundary.
        (0..WINDOW / M2, -40i64..40, 1..1200u64)
            .prop_map(move |(m, off, n)| (near(m * M2, off), n * K4)),
        // Whole 2M runs.
        (0..WINDOW / M2, 1..8u64).prop_map(|(m, n)| (m * M2, n * M2)),
        // Around a 1G boundary, up to ~1G long with unaligned ends (splits).
        (0..4u64, -600i64..600, 1..600u64)
            .prop_map(move |(gb, off, n)| (near(gb * G1, off), n * M2 + (n % 3) * K4)),
        // A whole 1G slot.
        (0..4u64).prop_map(|gb| (gb * G1, G1)),
    ]
    .prop_map(|(s, n)| {
        let s = s.min(WINDOW - K4);
        (s, n.min(WINDOW - s))
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (leaf_size(), 0..4096u64, 0..512u64, any::<u8>()).prop_map(|(size, slot, hslot, attr)| {
            let n = WINDOW / size.size() as u64;
            Op::MapPage { size, slot: slot % n, hslot, attr }
        }),
        3 => (
            range(),
            prop_oneof![Just(0u64), Just(G1), Just(M2 * 3), Just(K4 * 5)],
            leaf_size(),
            any::<u8>()
        )
            .prop_map(|((start, len), delta, max, attr)| {
                // Keep 4K-leaf counts modest (debug-build speed): ranges that can
                // only be 4K leaves stay short.
                let len = if delta % M2 != 0 || max == LeafSize::Size4K {
                    len.min(4 * M2)
                } else {
                    len
                };
                Op::MapRange { start, len, delta, max, attr }
            }),
        3 => range().prop_map(|(start, len)| Op::Unmap { start, len }),
        2 => (range(), any::<u8>()).prop_map(|((start, len), attr)| Op::Protect { start, len, attr }),
        1 => (0..WINDOW / K4).prop_map(|p| Op::Collapse { gpa: p * K4 }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        op(),
        prop_oneof![2 => Just(None), 1 => (0..4usize).prop_map(Some)],
    )
        .prop_map(|(op, fail_after)| Step { op, fail_after })
}

/// Reference: extents gpa -> (len, hpa, attr).
#[derive(Clone, Debug, Default)]
struct Model {
    ext: BTreeMap<u64, (u64, u64, LeafAttr)>,
}

impl Model {
    fn overlaps(&self, s: u64, len: u64) -> bool {
        self.ext
            .range(..s + len)
            .next_back()
            .is_some_and(|(&gs, &(l, _, _))| gs + l > s)
    }

    /// Removes `[s, s + len)`, returning the removed pieces.
    fn cut(&mut self, s: u64, len: u64) -> Vec<Extent> {
        let e = s + len;
        let keys: Vec<u64> = self
            .ext
            .range(..e)
            .filter(|(gs, (l, _, _))| **gs + *l > s)
            .map(|(k, _)| *k)
            .collect();
        let mut removed = Vec::new();
        for k in keys {
            let (l, h, a) = self.ext.remove(&k).unwrap();
            let ke = k + l;
            if k < s {
                self.ext.insert(k, (s - k, h, a));
            }
            if ke > e {
                self.ext.insert(e, (ke - e, h + (e - k), a));
            }
            let (rs, re) = (k.max(s), ke.min(e));
            removed.push((rs, re - rs, h + (rs - k), a));
        }
        removed
    }

    fn translate(&self, g: u64) -> Option<(u64, LeafAttr)> {
        self.ext
            .range(..=g)
            .next_back()
            .filter(|(gs, (l, _, _))| **gs + *l > g)
            .map(|(gs, (_, h, a))| (h + (g - gs), *a))
    }

    fn normalized(&self) -> Vec<Extent> {
        normalize(self.ext.iter().map(|(g, (l, h, a))| (*g, *l, *h, *a)))
    }
}

/// Merges contiguous pieces (same attributes) into maximal extents.
fn normalize(it: impl Iterator<Item = Extent>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for (g, l, h, a) in it {
        if let Some(last) = out.last_mut()
            && last.0 + last.1 == g
            && last.2 + last.1 == h
            && last.3 == a
        {
            last.1 += l;
            continue;
        }
        out.push((g, l, h, a));
    }
    out
}

fn table_extents<F: Stage2Format>(t: &Stage2Table<F, HeapArena>) -> Vec<Extent> {
    normalize(
        t.leaves()
            .map(|l| (l.gpa.as_u64(), l.size.size() as u64, l.hpa.as_u64(), l.attr)),
    )
}

fn g(x: u64) -> GuestPhysAddr {
    GuestPhysAddr::new(x as usize)
}

fn h(x: u64) -> HostPhysAddr {
    HostPhysAddr::new(x as usize)
}

struct Harness<F: Stage2Format> {
    arena: HeapArena,
    table: Stage2Table<F, HeapArena>,
    model: Model,
    caps: Stage2Caps,
}

impl<F: Stage2Format> Harness<F> {
    fn new(caps: Stage2Caps) -> Self {
        let mut arena = HeapArena::new(4096);
        let table = Stage2Table::new(arena.clone(), &mut arena, caps).unwrap();
        Self {
            arena,
            table,
            model: Model::default(),
            caps,
        }
    }

    fn state(&self) -> (Vec<Extent>, usize, usize) {
        (
            table_extents(&self.table),
            self.table.table_frames(),
            self.arena.in_use(),
        )
    }

    /// Completes a flush, checking the invalidation runs exactly when asked for;
    /// returns the unmapped leaves as (gpa, len, hpa).
    fn complete(&mut self, f: ept::Flush) -> Vec<(u64, u64, u64)> {
        let mut invalidated = false;
        let needs = f.scope().is_some();
        let left = f.complete(|_| invalidated = true, &mut self.arena);
        assert_eq!(invalidated, needs);
        left.iter()
            .map(|l| (l.gpa.as_u64(), l.size.size() as u64, l.hpa.as_u64()))
            .collect()
    }

    fn run(&mut self, s: &Step) -> Result<(), TestCaseError> {
        let before = self.state();
        if let Some(n) = s.fail_after {
            self.arena.fail_after(n);
        }
        let (touched, result) = self.apply(&s.op);
        self.arena.clear_failures();
        match result {
            Err(TableError::NoMemory { level }) => {
                prop_assert!(s.fail_after.is_some(), "NoMemory without injection");
                prop_assert!((1..=3).contains(&level));
                prop_assert_eq!(
                    &self.state(),
                    &before,
                    "failed {:?} changed the table",
                    s.op
                );
            }
            Err(e) => return Err(TestCaseError::fail(format!("{:?}: {e}", s.op))),
            Ok(()) => {}
        }
        prop_assert_eq!(
            table_extents(&self.table),
            self.model.normalized(),
            "after {:?}",
            s.op
        );
        let (start, len) = touched;
        let mut probes = vec![
            start.saturating_sub(K4),
            start,
            start + len - K4,
            start + len,
        ];
        probes.extend((0..8).map(|k| start + (len / K4 * k / 8) * K4));
        for p in probes.into_iter().filter(|p| *p < WINDOW) {
            let want = self.model.translate(p + 0x18);
            let got = self
                .table
                .translate(g(p + 0x18))
                .map(|t| (t.hpa.as_u64(), t.attr));
            prop_assert_eq!(got, want, "translate {:#x} after {:?}", p, s.op);
            let walked = validate::walk(&self.table, g(p + 0x18))
                .ok()
                .map(|t| (t.hpa.as_u64(), t.attr));
            prop_assert_eq!(walked, want);
        }
        if let Err(e) = self.table.validate() {
            return Err(TestCaseError::fail(format!(
                "validate after {:?}: {e}",
                s.op
            )));
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> ((u64, u64), Result<(), TableError>) {
        match *op {
            Op::MapPage {
                size,
                slot,
                hslot,
                attr: ai,
            } => {
                let sz = size.size() as u64;
                let (gpa, hpa, at) = (slot * sz, HBASE + hslot * sz, attr(ai));
                let a = &mut self.arena;
                let r = match size {
                    LeafSize::Size4K => self.table.map_page::<Size4K>(a, g(gpa), h(hpa), at),
                    LeafSize::Size2M => self.table.map_page::<Size2M>(a, g(gpa), h(hpa), at),
                    LeafSize::Size1G => self.table.map_page::<Size1G>(a, g(gpa), h(hpa), at),
                };
                let conflict = self.model.overlaps(gpa, sz);
                let r = match r {
                    Ok(f) => {
                        assert!(f.is_empty(), "mapping needs no flush");
                        assert!(!conflict, "map over a mapping");
                        self.model.ext.insert(gpa, (sz, hpa, at));
                        Ok(())
                    }
                    Err(TableError::AlreadyMapped { gpa: at_gpa }) => {
                        assert!(conflict, "spurious AlreadyMapped");
                        assert!(at_gpa.as_u64() >= gpa && at_gpa.as_u64() < gpa + sz);
                        assert!(
                            self.model.translate(at_gpa.as_u64()).is_some(),
                            "AlreadyMapped names a mapped page"
                        );
                        Ok(())
                    }
                    Err(TableError::UnsupportedLeaf { size: s }) => {
                        assert!(s == LeafSize::Size1G && !self.caps.leaf_1g);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                ((gpa, sz), r)
            }
            Op::MapRange {
                start,
                len,
                delta,
                max,
                attr: ai,
            } => {
                let at = attr(ai);
                let hpa = HBASE + start + delta;
                let conflict = self.model.overlaps(start, len);
                let r =
                    self.table
                        .map_range(&mut self.arena, g(start), h(hpa), len as usize, at, max);
                let r = match r {
                    Ok(f) => {
                        assert!(f.is_empty(), "mapping needs no flush");
                        assert!(!conflict, "map_range over a mapping");
                        self.model.ext.insert(start, (len, hpa, at));
                        Ok(())
                    }
                    Err(TableError::AlreadyMapped { gpa }) => {
                        assert!(conflict, "spurious AlreadyMapped");
                        assert!(gpa.as_u64() >= start && gpa.as_u64() < start + len);
                        assert!(
                            self.model.translate(gpa.as_u64()).is_some(),
                            "AlreadyMapped names a mapped page"
                        );
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                ((start, len), r)
            }
            Op::Unmap { start, len } => {
                let r = match self
                    .table
                    .unmap_range(&mut self.arena, g(start), len as usize)
                {
                    Ok(f) => {
                        let mut left = self.complete(f);
                        let mut removed: Vec<_> = self
                            .model
                            .cut(start, len)
                            .into_iter()
                            .map(|(g, l, h, _)| (g, l, h))
                            .collect();
                        left.sort();
                        removed.sort();
                        assert_eq!(merge3(&left), merge3(&removed), "unmapped leaves");
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                ((start, len), r)
            }
            Op::Protect {
                start,
                len,
                attr: ai,
            } => {
                let at = attr(ai);
                let r = self
                    .table
                    .protect_range(&mut self.arena, g(start), len as usize, at);
                let r = match r {
                    Ok(f) => {
                        assert!(self.complete(f).is_empty(), "protect unmaps nothing");
                        for (gs, l, hs, _) in self.model.cut(start, len) {
                            self.model.ext.insert(gs, (l, hs, at));
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                ((start, len), r)
            }
            Op::Collapse { gpa } => {
                let r = match self.table.collapse(g(gpa)) {
                    Ok(f) => {
                        let frees = f.freed_tables().len();
                        let in_use = self.arena.in_use();
                        assert!(self.complete(f).is_empty(), "collapse unmaps nothing");
                        assert_eq!(self.arena.in_use(), in_use - frees);
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                ((gpa & !(G1 - 1), G1), r)
            }
        }
    }

    fn teardown(mut self) -> Result<(), TestCaseError> {
        let mapped: u64 = self.model.ext.values().map(|(l, _, _)| l).sum();
        let left = self.table.destroy().complete(|_| {}, &mut self.arena);
        let total: u64 = left.iter().map(|l| l.size.size() as u64).sum();
        prop_assert_eq!(total, mapped);
        prop_assert_eq!(self.arena.in_use(), 0, "frames leaked");
        Ok(())
    }
}

/// Merges contiguous (gpa, len, hpa) pieces so leaf runs and model pieces compare.
fn merge3(v: &[(u64, u64, u64)]) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for &(g, l, h) in v {
        if let Some(last) = out.last_mut()
            && last.0 + last.1 == g
            && last.2 + last.1 == h
        {
            last.1 += l;
            continue;
        }
        out.push((g, l, h));
    }
    out
}

fn run_model<F: Stage2Format>(caps: Stage2Caps, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut hns = Harness::<F>::new(caps);
    for s in steps {
        hns.run(s)?;
    }
    hns.teardown()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(32),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ept_all_caps(steps in prop::collection::vec(step(), 1..40)) {
        run_model::<Ept>(Stage2Caps::all(), &steps)?;
    }

    #[test]
    fn ept_sandy_bridge(steps in prop::collection::vec(step(), 1..40)) {
        // EPT without 1 GiB leaves and without A/D flags.
        let caps = Stage2Caps { leaf_1g: false, accessed_dirty: false, ..Stage2Caps::all() };
        run_model::<Ept>(caps, &steps)?;
    }

    #[test]
    fn npt_gbpages(steps in prop::collection::vec(step(), 1..40)) {
        run_model::<Npt>(Stage2Caps::npt(true), &steps)?;
    }
}
