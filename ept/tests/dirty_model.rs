//! Dirty logging against itself and a plain model: the same random guest runs on a
//! space logging with A/D flags and on one logging with write protection (a CPU
//! without A/D), through a TLB model; every harvest must give the same pages in both
//! and in the model. A harvest that skipped its invalidation would leave writable or
//! already-dirty translations in the TLB model, and writes would go unreported.

mod common;
mod hw_model;

use std::collections::BTreeSet;

use common::{MIB, g};
use ept::caps::Stage2Caps;
use ept::format::{Access, Ept, Npt, Stage2Format};
use ept::frame::HeapArena;
use ept::space::{DirtyBitmap, DirtyMode, HugeLeaves, SpaceError, TrackingProblem};
use hw_model::{Guest, SharedTlb, TlbSpace};
use proptest::prelude::*;

const WINDOW: usize = 8 * MIB;
const PAGES: usize = WINDOW / 4096;

#[derive(Clone, Debug)]
enum Op {
    GuestWrite(usize),
    GuestRead(usize),
    HvWrite(usize),
    Harvest,
    Start {
        first: usize,
        pages: usize,
        split: bool,
    },
    Stop,
    /// Read-only, then back to read-write: an area change in the middle of a log.
    ProtectRoundTrip(usize),
    Unmap(usize),
    Clone,
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..PAGES;
    prop_oneof![
        6 => page.clone().prop_map(Op::GuestWrite),
        3 => page.clone().prop_map(Op::GuestRead),
        1 => page.clone().prop_map(Op::HvWrite),
        2 => Just(Op::Harvest),
        1 => (0..PAGES, 1..PAGES, any::<bool>())
            .prop_map(|(first, pages, split)| Op::Start { first, pages: pages.min(PAGES - first), split }),
        1 => Just(Op::Stop),
        1 => page.clone().prop_map(Op::ProtectRoundTrip),
        1 => page.clone().prop_map(Op::Unmap),
        1 => Just(Op::Clone),
    ]
}

struct Side<F: Stage2Format> {
    space: TlbSpace<F>,
    guest: Guest,
    mode: DirtyMode,
}

fn side<F: Stage2Format>(caps: Stage2Caps, mode: DirtyMode) -> Side<F> {
    let arena = HeapArena::new(4 * PAGES);
    let tlb = SharedTlb::default();
    let mut space = common::new_space::<F, _>(&arena, WINDOW, caps, tlb.clone(), 4 * PAGES);
    space.map_alloc(g(0), WINDOW, Access::RW, false).unwrap();
    Side {
        space,
        guest: Guest {
            tlb,
            arena,
            accessed_dirty: mode == DirtyMode::AccessedDirty,
        },
        mode,
    }
}

/// The pages of the leaf holding `page` in `side`'s space (after an access).
fn leaf_pages<F: Stage2Format>(s: &Side<F>, page: usize) -> std::ops::Range<usize> {
    match s.space.translate(g(page * 4096)) {
        Some(t) => {
            let first = t.leaf_gpa.as_usize() / 4096;
            first..first + t.size.size() / 4096
        }
        None => page..page,
    }
}

fn run<F: Stage2Format>(ops: Vec<Op>, huge: bool) -> Result<(), TestCaseError> {
    let caps = Stage2Caps {
        leaf_2m: huge,
        leaf_1g: false,
        ..Stage2Caps::all()
    };
    let no_ad = Stage2Caps {
        accessed_dirty: false,
        ..caps
    };
    let mut sides = [
        side::<F>(caps, DirtyMode::AccessedDirty),
        side::<F>(no_ad, DirtyMode::WriteProtect),
    ];
    // The model: the logged page range and the pages written or faulted in since.
    let mut logged: Option<std::ops::Range<usize>> = None;
    let mut dirty = BTreeSet::new();
    let mut clones = Vec::new();
    let mut mapped = true;
    for op in ops {
        match op {
            Op::GuestWrite(p) | Op::GuestRead(p) | Op::HvWrite(p) => {
                let mut touched = None;
                for s in &mut sides {
                    let was_present = s.space.translate(g(p * 4096)).is_some();
                    let r = match op {
                        Op::GuestWrite(_) => s
                            .guest
                            .write(&mut s.space, p * 4096 + 8, p as u8)
                            .map(|_| ()),
                        Op::GuestRead(_) => s.guest.read(&mut s.space, p * 4096).map(|_| ()),
                        _ => s.space.write(g(p * 4096 + 16), &[1, 2, 3]),
                    };
                    let changes = !matches!(op, Op::GuestRead(_)) || !was_present;
                    let t = match r {
                        Ok(()) if changes => Some(leaf_pages(s, p)),
                        Ok(()) => None,
                        Err(e) => {
                            prop_assert!(
                                !mapped || matches!(e, SpaceError::NotMapped { .. }),
                                "{e}"
                            );
                            None
                        }
                    };
                    if let Some(t0) = &touched {
                        prop_assert_eq!(Some(t0), t.as_ref(), "both sides touch the same leaf");
                    }
                    touched = t;
                }
                if let (Some(t), Some(l)) = (touched, &logged) {
                    dirty.extend(t.filter(|q| l.contains(q)));
                }
            }
            Op::Harvest => {
                let mut got = Vec::new();
                for s in &mut sides {
                    let mut out = DirtyBitmap::new();
                    match s.space.harvest_dirty(&mut out) {
                        Ok(n) => {
                            prop_assert_eq!(n, out.count());
                            got.push(
                                out.iter()
                                    .map(|a| a.as_usize() / 4096)
                                    .collect::<BTreeSet<_>>(),
                            );
                        }
                        Err(e) => {
                            prop_assert!(logged.is_none());
                            prop_assert_eq!(
                                e,
                                SpaceError::Tracking {
                                    problem: TrackingProblem::NotLogging
                                }
                            );
                        }
                    }
                }
                if logged.is_some() {
                    // The model: pages written since, that are still mapped.
                    let present: BTreeSet<usize> = dirty
                        .iter()
                        .copied()
                        .filter(|&p| sides[0].space.translate(g(p * 4096)).is_some())
                        .collect();
                    prop_assert_eq!(&got[0], &got[1], "A/D and write-protect disagree");
                    prop_assert_eq!(&got[0], &present, "harvest differs from the model");
                    dirty.clear();
                }
            }
            Op::Start {
                first,
                pages,
                split,
            } => {
                let huge = if split {
                    HugeLeaves::Split
                } else {
                    HugeLeaves::Whole
                };
                for s in &mut sides {
                    let r =
                        s.space
                            .start_dirty_log_mode(g(first * 4096), pages * 4096, huge, s.mode);
                    if logged.is_some() {
                        prop_assert_eq!(
                            r,
                            Err(SpaceError::Tracking {
                                problem: TrackingProblem::AlreadyLogging
                            })
                        );
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        if split {
                            let l = first * 4096..(first + pages) * 4096;
                            prop_assert!(
                                s.space.report().stats.leaves_2m == 0
                                    || s.space
                                        .translate(g(first * 4096))
                                        .is_none_or(|t| !l.contains(&t.leaf_gpa.as_usize())
                                            || t.size.size() == 4096)
                            );
                        }
                    }
                }
                if logged.is_none() {
                    logged = Some(first..first + pages);
                }
            }
            Op::Stop => {
                for s in &mut sides {
                    let r = s.space.stop_dirty_log();
                    prop_assert_eq!(r.is_ok(), logged.is_some());
                }
                logged = None;
                dirty.clear();
            }
            Op::ProtectRoundTrip(p) => {
                let (start, size) = (g((p & !3) * 4096), 4 * 4096);
                for s in &mut sides {
                    let r =
                        s.space
                            .protect(start, size.min(WINDOW - start.as_usize()), Access::READ);
                    prop_assert_eq!(r.is_ok(), mapped);
                    // A guest write is now refused, on both sides alike.
                    if mapped {
                        let w = s.guest.write(&mut s.space, start.as_usize(), 1);
                        prop_assert!(
                            matches!(w, Err(SpaceError::PermissionDenied { .. })),
                            "{w:?}"
                        );
                    }
                    let r = s
                        .space
                        .protect(start, size.min(WINDOW - start.as_usize()), Access::RW);
                    prop_assert_eq!(r.is_ok(), mapped);
                }
            }
            Op::Unmap(p) => {
                if mapped {
                    for s in &mut sides {
                        s.space.unmap(g(0), WINDOW).unwrap();
                        s.space.map_alloc(g(0), WINDOW, Access::RW, false).unwrap();
                    }
                    let _ = p;
                }
                let _ = &mut mapped;
            }
            Op::Clone => {
                // A copy-on-write clone write-protects the originals; writes then copy.
                for s in &mut sides {
                    clones.push(s.space.try_clone().unwrap());
                }
                if clones.len() > 4 {
                    clones.drain(..2);
                }
            }
        }
        for s in &sides {
            prop_assert_eq!(s.space.validate(), Ok(()));
        }
    }
    drop(clones);
    for s in sides {
        let arena = s.guest.arena.clone();
        drop(s);
        prop_assert_eq!(arena.in_use(), 0, "frames leaked");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: common::proptest_cases(32), ..ProptestConfig::default() })]

    #[test]
    fn ad_and_write_protect_agree_4k(ops in proptest::collection::vec(op(), 1..80)) {
        run::<Ept>(ops, false)?;
    }

    #[test]
    fn ad_and_write_protect_agree_huge(ops in proptest::collection::vec(op(), 1..80)) {
        run::<Ept>(ops, true)?;
    }

    #[test]
    fn ad_and_write_protect_agree_npt(ops in proptest::collection::vec(op(), 1..80)) {
        run::<Npt>(ops, true)?;
    }
}
