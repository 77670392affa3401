//! Snapshots against a plain model: a random guest (through a TLB model) writes and
//! reads, the hypervisor writes, clones come and go, and snapshots are taken,
//! restored (again and again) and dropped. After every restore the guest's memory
//! equals the model's copy taken at the snapshot, pages faulted in since are absent
//! again, only recorded pages were touched, and frames add up; nothing leaks.

mod common;
mod hw_model;

use std::collections::{BTreeMap, BTreeSet};

use common::{MIB, g};
use ept::caps::Stage2Caps;
use ept::format::{Access, Ept, Npt, Stage2Format};
use ept::frame::HeapArena;
use ept::space::{DirtyBitmap, HugeLeaves, SpaceError, TrackingProblem};
use hw_model::{Guest, SharedTlb, TlbSpace};
use proptest::prelude::*;

const WINDOW: usize = 4 * MIB;
const PAGES: usize = WINDOW / 4096;

#[derive(Clone, Debug)]
enum Op {
    GuestWrite(usize, u8),
    GuestRead(usize),
    HvWrite(usize, u8),
    Snapshot,
    Restore,
    DropSnapshot,
    Clone,
    DropClones,
    Log,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..PAGES, any::<u8>()).prop_map(|(p, b)| Op::GuestWrite(p, b)),
        3 => (0..PAGES).prop_map(Op::GuestRead),
        1 => (0..PAGES, any::<u8>()).prop_map(|(p, b)| Op::HvWrite(p, b)),
        2 => Just(Op::Snapshot),
        4 => Just(Op::Restore),
        1 => Just(Op::DropSnapshot),
        1 => Just(Op::Clone),
        1 => Just(Op::DropClones),
        1 => Just(Op::Log),
    ]
}

/// Offset of the byte the model tracks in each page (varies by page).
fn off(p: usize) -> usize {
    (p * 67) % 4096
}

fn present<F: Stage2Format>(s: &TlbSpace<F>) -> BTreeSet<usize> {
    (0..PAGES)
        .filter(|&p| s.translate(g(p * 4096)).is_some())
        .collect()
}

fn run<F: Stage2Format>(ops: Vec<Op>, caps: Stage2Caps) -> Result<(), TestCaseError> {
    let arena = HeapArena::new(6 * PAGES);
    let tlb = SharedTlb::default();
    let mut space: TlbSpace<F> = common::new_space(&arena, WINDOW, caps, tlb.clone(), 6 * PAGES);
    space.map_alloc(g(0), WINDOW, Access::RW, false).unwrap();
    let guest = Guest {
        tlb,
        arena: arena.clone(),
        accessed_dirty: caps.accessed_dirty,
    };
    let mut mem: BTreeMap<usize, u8> = BTreeMap::new();
    let mut snap = None;
    let mut frozen: (BTreeMap<usize, u8>, BTreeSet<usize>) = Default::default();
    // Pages touched since the snapshot or the last restore (an upper bound on what a
    // restore may visit).
    let mut touched: BTreeSet<usize> = BTreeSet::new();
    let mut clones = Vec::new();
    let mut logging = false;
    for op in ops {
        match op {
            Op::GuestWrite(p, b) => {
                guest.write(&mut space, p * 4096 + off(p), b).unwrap();
                mem.insert(p, b);
                touched.insert(p);
            }
            Op::GuestRead(p) => {
                let b = guest.read(&mut space, p * 4096 + off(p)).unwrap();
                prop_assert_eq!(b, mem.get(&p).copied().unwrap_or(0));
                touched.insert(p);
            }
            Op::HvWrite(p, b) => {
                space.write(g(p * 4096 + off(p)), &[b]).unwrap();
                mem.insert(p, b);
                touched.insert(p);
            }
            Op::Snapshot => {
                let before = (arena.in_use(), present(&space));
                match space.snapshot() {
                    Ok(s) => {
                        prop_assert!(snap.is_none());
                        frozen = (mem.clone(), present(&space));
                        touched.clear();
                        prop_assert_eq!(
                            arena.in_use(),
                            before.0 + s.frames() - space.stats().ram_frames,
                            "a snapshot copies tables, not RAM"
                        );
                        snap = Some(s);
                    }
                    Err(e) => {
                        prop_assert!(snap.is_some(), "{e}");
                        prop_assert_eq!(
                            e,
                            SpaceError::Tracking {
                                problem: TrackingProblem::SnapshotAttached
                            }
                        );
                        prop_assert_eq!((arena.in_use(), present(&space)), before);
                    }
                }
            }
            Op::Restore => {
                let Some(s) = &snap else { continue };
                let before = present(&space);
                let stats = space.restore(s).unwrap();
                prop_assert!(
                    stats.pages_copied + stats.pages_unchanged <= touched.len().max(1) * 512
                );
                mem = frozen.0.clone();
                prop_assert_eq!(
                    present(&space),
                    frozen.1.clone(),
                    "pages faulted in since are gone"
                );
                // Only pages touched since were visited.
                let visited_changes: BTreeSet<usize> =
                    before.symmetric_difference(&frozen.1).copied().collect();
                prop_assert!(
                    visited_changes
                        .iter()
                        .all(|p| touched.iter().any(|t| t / 512 == p / 512))
                );
                touched.clear();
                // The guest sees the snapshot's contents again.
                for p in 0..PAGES {
                    let mut b = [0u8];
                    space.read(g(p * 4096 + off(p)), &mut b).unwrap();
                    prop_assert_eq!(
                        b[0],
                        mem.get(&p).copied().unwrap_or(0),
                        "page {:#x}",
                        p * 4096
                    );
                }
            }
            Op::DropSnapshot => {
                if let Some(s) = snap.take() {
                    drop(s);
                    if clones.is_empty() {
                        prop_assert_eq!(
                            arena.in_use(),
                            space.stats().frames(),
                            "the snapshot freed exactly its own frames"
                        );
                    }
                }
            }
            Op::Clone => clones.push(space.try_clone().unwrap()),
            Op::DropClones => clones.clear(),
            Op::Log => {
                // A dirty log running alongside a snapshot.
                if logging {
                    let mut out = DirtyBitmap::new();
                    space.harvest_dirty(&mut out).unwrap();
                    space.stop_dirty_log().unwrap();
                } else {
                    space
                        .start_dirty_log(g(0), WINDOW, HugeLeaves::Whole)
                        .unwrap();
                }
                logging = !logging;
            }
        }
        prop_assert_eq!(space.validate(), Ok(()));
    }
    drop(clones);
    drop(snap);
    prop_assert_eq!(arena.in_use(), space.stats().frames());
    drop(space);
    prop_assert_eq!(arena.in_use(), 0, "frames leaked");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::proptest_cases(32), ..ProptestConfig::default() })]

    #[test]
    fn snapshot_restore_4k_ad(ops in proptest::collection::vec(op(), 1..100)) {
        run::<Ept>(ops, Stage2Caps { leaf_2m: false, leaf_1g: false, ..Stage2Caps::all() })?;
    }

    #[test]
    fn snapshot_restore_huge_no_ad(ops in proptest::collection::vec(op(), 1..100)) {
        run::<Ept>(ops, Stage2Caps { leaf_1g: false, accessed_dirty: false, ..Stage2Caps::all() })?;
    }

    #[test]
    fn snapshot_restore_npt_huge(ops in proptest::collection::vec(op(), 1..100)) {
        run::<Npt>(ops, Stage2Caps::npt(false))?;
    }
}
