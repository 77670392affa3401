//! Every operation at the edge of the quota: with exactly the frames it needs it
//! succeeds, with one fewer it fails with a quota refusal and changes nothing. Plus
//! the edge cases an independent model found: a fault that could take a 2 MiB leaf
//! but lacks the tables for it falls back to a 4 KiB leaf; a protect that changes
//! nothing needs no frame; `find_free_area` names the unaligned size.

mod common;

use common::{MIB, NoFlush, caps_4k_only, fault, g, limited_space, new_space, no_flush, snapshot};
use ept::caps::Stage2Caps;
use ept::format::{Access, MemType, Npt};
use ept::frame::HeapArena;
use ept::size::LeafSize;
use ept::space::{AddressSpace, FaultOutcome, Limits, OomReason, SpaceError};
use memory_set::{AddrRange, HostPhysAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

type Space = AddressSpace<Npt, HeapArena, HeapArena, NoFlush>;

fn space(arena: &HeapArena, caps: Stage2Caps, quota: usize) -> Option<Space> {
    limited_space(arena, caps, Limits::quota(quota)).ok()
}

/// Finds the smallest quota from `from` on at which `op` succeeds on a space that
/// `setup` prepares (with that quota), checks that one frame fewer fails with a quota refusal that
/// changes nothing, and returns that quota (the frames the space holds afterwards).
fn edge(
    caps: Stage2Caps,
    from: usize,
    setup: impl Fn(&mut Space) -> Result<(), SpaceError>,
    op: impl Fn(&mut Space) -> Result<(), SpaceError>,
) -> usize {
    let arena = HeapArena::new(4096);
    let mut last_failure = None;
    for quota in from..2048 {
        let Some(mut s) = space(&arena, caps, quota) else {
            continue;
        };
        if setup(&mut s).is_err() {
            last_failure = None;
            continue;
        }
        let before = snapshot(&s, &arena);
        match op(&mut s) {
            Ok(()) => {
                let (q, e, snap_before, snap_after) = last_failure.unwrap_or_else(|| {
                    panic!("succeeds at the first quota {quota} its set-up allows")
                });
                assert_eq!(q, quota - 1, "one frame fewer was not tried");
                assert!(
                    matches!(
                        e,
                        SpaceError::OutOfMemory {
                            reason: OomReason::Quota { .. },
                            ..
                        }
                    ),
                    "{e}"
                );
                assert_eq!(snap_after, snap_before, "the refusal changed something");
                s.validate().unwrap();
                drop(s);
                assert_eq!(arena.in_use(), 0);
                return quota;
            }
            Err(e) => {
                let after = snapshot(&s, &arena);
                last_failure = Some((quota, e, before, after));
            }
        }
    }
    panic!("never succeeded");
}

fn on_demand(s: &mut Space) -> Result<(), SpaceError> {
    s.map_alloc(g(0), 4 * MIB, Access::RW, false)
}

#[test]
fn every_operation_succeeds_with_exactly_enough_frames_and_fails_with_one_fewer() {
    let caps = Stage2Caps::all();
    // Root only; then a populated 4 KiB-leaf area: 3 tables + 8 frames.
    let q = edge(
        caps_4k_only(),
        1,
        |_| Ok(()),
        |s| s.map_alloc(g(0x1000), 8 * PAGE_SIZE_4K, Access::RW, true),
    );
    assert_eq!(q, 1 + 3 + 8);
    // A linear window with a 2 MiB leaf: PDPT + PD.
    let q = edge(
        caps,
        1,
        |_| Ok(()),
        |s| {
            s.map_linear(
                g(2 * MIB),
                HostPhysAddr::new(0x4000_0000),
                PAGE_SIZE_2M,
                Access::RW,
                MemType::Uncacheable,
            )
        },
    );
    assert_eq!(q, 1 + 2);
    // A 4 KiB fault: PDPT + PD + PT + the frame.
    let q = edge(caps, 1, on_demand, |s| {
        s.handle_fault(fault(0x1000, Access::WRITE)).map(|_| ())
    });
    assert_eq!(q, 1 + 3 + 1);
    // A write through the hypervisor: as a fault.
    let q = edge(caps, 1, on_demand, |s| s.write(g(0x1008), &[1, 2, 3]));
    assert_eq!(q, 1 + 3 + 1);
    // Splitting a 2 MiB leaf for a protect or unmap of one page: one table.
    let populated_2m = |s: &mut Space| {
        on_demand(s)?;
        match s.handle_fault(fault(2 * MIB, Access::WRITE))? {
            FaultOutcome::Populated {
                size: LeafSize::Size2M,
            } => Ok(()),
            // Too small a quota for the block (it fell back to 4 KiB): not this case.
            _ => Err(SpaceError::NoFreeArea { size: PAGE_SIZE_2M }),
        }
    };
    let q = edge(caps, 500, populated_2m, |s| {
        s.protect(g(2 * MIB + 0x1000), PAGE_SIZE_4K, Access::READ)
    });
    assert_eq!(q, 1 + 2 + 512 + 1);
    let q = edge(caps, 500, populated_2m, |s| {
        s.unmap(g(2 * MIB + 0x1000), PAGE_SIZE_4K)
    });
    assert_eq!(q, 1 + 2 + 512 + 1);
    // A clone: its own root, PDPT, PD, PT (the shared frames count once).
    let touched = |s: &mut Space| {
        on_demand(s)?;
        s.write(g(0x1000), &[1])
    };
    let q = edge(caps, 1, touched, |s| s.try_clone().map(drop));
    assert_eq!(q, (1 + 3 + 1) + 4);
    // A copy-on-write break in the clone: one frame (the family holds the rest).
    let cloned_then_break = |s: &mut Space| {
        let mut c = s.try_clone()?;
        let r = c.write(g(0x1000), &[2]);
        // Keep the clone alive through the check: leak it into the parent's family
        // by returning its result only (dropping it frees its frames).
        drop(c);
        r
    };
    let q = edge(caps, 1, touched, cloned_then_break);
    assert_eq!(q, (1 + 3 + 1) + 4 + 1);
    // Populating an area: 2 MiB where it fits, 4 KiB elsewhere.
    let q = edge(caps, 500, on_demand, |s| {
        s.populate_area(g(0x1000), 4 * MIB - 0x1000)
    });
    assert_eq!(q, 1 + 3 + 511 + 512);
}

#[test]
fn a_fault_that_cannot_have_the_tables_of_a_2m_leaf_takes_a_4k_leaf() {
    // 2 MiB needs 512 frames + PDPT + PD; 4 KiB needs 1 + PDPT + PD + PT. With the
    // root and 513 frames of quota the block fits but its tables do not.
    let arena = HeapArena::new(2048);
    let mut s = space(&arena, Stage2Caps::all(), 1 + 513).unwrap();
    on_demand(&mut s).unwrap();
    assert_eq!(
        s.handle_fault(fault(2 * MIB + 0x5000, Access::WRITE)),
        Ok(FaultOutcome::Populated {
            size: LeafSize::Size4K
        })
    );
    // write() the same way, in another block.
    s.map_alloc(g(8 * MIB), 2 * MIB, Access::RW, false).unwrap();
    s.write(g(8 * MIB + 8), &[7]).unwrap();
    assert_eq!(s.translate(g(8 * MIB)).unwrap().size, LeafSize::Size4K);
    s.validate().unwrap();
    drop(s);
    // One frame more: the 2 MiB leaf.
    let mut s = space(&arena, Stage2Caps::all(), 1 + 514).unwrap();
    on_demand(&mut s).unwrap();
    assert_eq!(
        s.handle_fault(fault(2 * MIB + 0x5000, Access::WRITE)),
        Ok(FaultOutcome::Populated {
            size: LeafSize::Size2M
        })
    );
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn a_protect_that_changes_nothing_needs_no_frame() {
    let arena = HeapArena::new(2048);
    // Exactly the root, PDPT, PD and a 2 MiB block: nothing left for a split.
    let mut s = space(&arena, Stage2Caps::all(), 1 + 2 + 512).unwrap();
    on_demand(&mut s).unwrap();
    s.handle_fault(fault(2 * MIB, Access::WRITE)).unwrap();
    let before = snapshot(&s, &arena);
    s.protect(g(2 * MIB + 0x1000), PAGE_SIZE_4K, Access::RW)
        .unwrap();
    s.protect(g(0), 4 * MIB, Access::RW).unwrap();
    assert_eq!(snapshot(&s, &arena), before);
    assert_eq!(s.stats().areas, 1, "no area was cut");
    // A real change still needs the split frame.
    assert!(matches!(
        s.protect(g(2 * MIB + 0x1000), PAGE_SIZE_4K, Access::READ),
        Err(SpaceError::OutOfMemory {
            reason: OomReason::Quota { .. },
            ..
        })
    ));
    assert_eq!(snapshot(&s, &arena), before);
}

#[test]
fn find_free_area_names_the_unaligned_size_not_the_hint() {
    let arena = HeapArena::new(64);
    let s = new_space::<Npt, _>(&arena, 64 * MIB, Stage2Caps::all(), no_flush, 64);
    let limit = AddrRange::from_start_size(g(0), 64 * MIB).unwrap();
    assert_eq!(
        s.find_free_area(g(0x1234), 0x1800, limit, PAGE_SIZE_4K),
        Err(SpaceError::Unaligned {
            value: 0x1800,
            align: PAGE_SIZE_4K
        })
    );
    // An unaligned hint with an aligned size is rounded up.
    assert_eq!(
        s.find_free_area(g(0x1234), 0x2000, limit, PAGE_SIZE_4K),
        Ok(g(0x2000))
    );
}

#[test]
fn regions_never_go_above_their_ceiling() {
    let arena = HeapArena::new(256);
    let mut s = space(&arena, Stage2Caps::all(), 256).unwrap();
    let mut r = s.alloc_region(None, 0x2000, Access::READ).unwrap();
    assert!(matches!(
        r.remap(Access::RW),
        Err(SpaceError::RightsExceeded {
            requested: Access::RW,
            ceiling: Access::READ,
            ..
        })
    ));
    assert!(matches!(
        r.deep_copy(Some(Access::RWX)),
        Err(SpaceError::RightsExceeded { .. })
    ));
    let mut rw = s.alloc_region(None, 0x1000, Access::RW).unwrap();
    rw.remap(Access::READ).unwrap();
    rw.remap(Access::RW).unwrap();
    // The space's own protect keeps the ceiling of plain areas too.
    s.map_alloc(g(0x100_0000), 0x1000, Access::RX, false)
        .unwrap();
    assert!(matches!(
        s.protect(g(0x100_0000), 0x1000, Access::RWX),
        Err(SpaceError::RightsExceeded { .. })
    ));
    s.protect(g(0x100_0000), 0x1000, Access::READ).unwrap();
    s.protect(g(0x100_0000), 0x1000, Access::RX).unwrap();
    drop((r, rw, s));
    assert_eq!(arena.in_use(), 0);
}
