//! Unit tests for dirty logging and snapshots: every refusal changes nothing, huge
//! leaves, quotas, and what a snapshot costs.

mod common;
mod hw_model;

use common::{MIB, g};
use ept::caps::Stage2Caps;
use ept::flush::FlushScope;
use ept::format::{Access, Ept};
use ept::frame::HeapArena;
use ept::size::LeafSize;
use ept::space::{
    AddressSpace, DirtyBitmap, DirtyMode, HugeLeaves, OomReason, SpaceError, TrackingProblem,
};
use hw_model::{Guest, SharedTlb, TlbSpace};

type Space = AddressSpace<Ept, HeapArena, HeapArena, fn(FlushScope)>;

fn nop(_: FlushScope) {}

fn space(arena: &HeapArena, caps: Stage2Caps, quota: usize) -> Space {
    common::new_space(arena, 64 * MIB, caps, nop as fn(FlushScope), quota)
}

fn tracking(problem: TrackingProblem) -> SpaceError {
    SpaceError::Tracking { problem }
}

/// Everything observable about a space's memory: every leaf, the stats, frames in use.
fn fingerprint(
    s: &Space,
    arena: &HeapArena,
) -> (Vec<Option<ept::table::Translation>>, String, usize) {
    let leaves = (0..64 * MIB)
        .step_by(4096)
        .map(|a| s.translate(g(a)))
        .collect();
    (leaves, format!("{:?}", s.stats()), arena.in_use())
}

#[test]
fn log_refusals_change_nothing() {
    let arena = HeapArena::new(8192);
    let no_ad = Stage2Caps {
        accessed_dirty: false,
        ..Stage2Caps::all()
    };
    let mut s = space(&arena, no_ad, 8192);
    s.map_alloc(g(0), 8 * MIB, Access::RW, true).unwrap();
    let before = fingerprint(&s, &arena);
    let mut out = DirtyBitmap::new();
    assert_eq!(
        s.harvest_dirty(&mut out),
        Err(tracking(TrackingProblem::NotLogging))
    );
    assert_eq!(
        s.stop_dirty_log(),
        Err(tracking(TrackingProblem::NotLogging))
    );
    assert_eq!(
        s.start_dirty_log_mode(g(0), 8 * MIB, HugeLeaves::Whole, DirtyMode::AccessedDirty),
        Err(tracking(TrackingProblem::NoAccessedDirty))
    );
    assert!(matches!(
        s.start_dirty_log(g(0x800), 8 * MIB, HugeLeaves::Whole),
        Err(SpaceError::Unaligned { .. })
    ));
    assert!(matches!(
        s.start_dirty_log(g(60 * MIB), 8 * MIB, HugeLeaves::Whole),
        Err(SpaceError::InvalidRange { .. })
    ));
    assert_eq!(fingerprint(&s, &arena), before);
    assert_eq!(
        s.start_dirty_log(g(0), 8 * MIB, HugeLeaves::Whole),
        Ok(DirtyMode::WriteProtect)
    );
    assert_eq!(
        s.start_dirty_log(g(0), 4096, HugeLeaves::Whole),
        Err(tracking(TrackingProblem::AlreadyLogging))
    );
    assert_eq!(s.dirty_log_mode(), Some(DirtyMode::WriteProtect));
}

#[test]
fn split_is_all_or_nothing_and_charged() {
    let arena = HeapArena::new(8192);
    // 8 MiB in four 2 MiB leaves: splitting needs 4 table frames.
    let build = |quota| {
        let mut s = space(&arena, Stage2Caps::all(), quota);
        s.map_alloc(g(0), 8 * MIB, Access::RW, true).unwrap();
        s
    };
    let used = build(8192).stats().frames();
    let mut s = build(used + 3);
    assert_eq!(s.stats().leaves_2m, 4);
    let before = fingerprint(&s, &arena);
    let r = s.start_dirty_log(g(0), 8 * MIB, HugeLeaves::Split);
    assert!(
        matches!(
            r,
            Err(SpaceError::OutOfMemory {
                reason: OomReason::Quota { .. },
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        fingerprint(&s, &arena),
        before,
        "a refused split changed something"
    );
    assert_eq!(s.dirty_log_mode(), None);
    // With one more frame of quota it fits, and every page is then its own leaf.
    drop(s);
    let mut s = build(used + 4);
    s.start_dirty_log(g(0), 8 * MIB, HugeLeaves::Split).unwrap();
    assert_eq!((s.stats().leaves_2m, s.stats().leaves_4k), (0, 2048));
}

#[test]
fn split_then_one_page_per_write() {
    let arena = HeapArena::new(8192);
    let tlb = SharedTlb::default();
    let mut s: TlbSpace<Ept> =
        common::new_space(&arena, 64 * MIB, Stage2Caps::all(), tlb.clone(), 8192);
    s.map_alloc(g(0), 8 * MIB, Access::RW, true).unwrap();
    let guest = Guest {
        tlb,
        arena: arena.clone(),
        accessed_dirty: true,
    };
    let frames = s.stats().frames();
    s.start_dirty_log(g(0), 8 * MIB, HugeLeaves::Split).unwrap();
    assert_eq!(s.stats().leaves_2m, 0);
    assert_eq!(
        s.stats().frames(),
        frames + 4,
        "one table per split 2 MiB leaf"
    );
    guest.write(&mut s, 0x12_3456, 7).unwrap();
    guest.write(&mut s, 0x40_0000, 7).unwrap();
    let mut out = DirtyBitmap::new();
    assert_eq!(s.harvest_dirty(&mut out), Ok(2));
    assert_eq!(
        out.iter().collect::<Vec<_>>(),
        vec![g(0x12_3000), g(0x40_0000)]
    );
    assert_eq!(s.harvest_dirty(&mut out), Ok(0), "harvests clear");
    // A write through the TLB after the harvest is seen (the harvest invalidated).
    guest.write(&mut s, 0x12_3000, 8).unwrap();
    assert_eq!(s.harvest_dirty(&mut out), Ok(1));
}

#[test]
fn whole_huge_leaves_report_every_page() {
    let arena = HeapArena::new(8192);
    let tlb = SharedTlb::default();
    let no_ad = Stage2Caps {
        accessed_dirty: false,
        ..Stage2Caps::all()
    };
    let mut s: TlbSpace<Ept> = common::new_space(&arena, 64 * MIB, no_ad, tlb.clone(), 8192);
    s.map_alloc(g(0), 8 * MIB, Access::RW, true).unwrap();
    let guest = Guest {
        tlb,
        arena: arena.clone(),
        accessed_dirty: false,
    };
    s.start_dirty_log(g(0), 8 * MIB, HugeLeaves::Whole).unwrap();
    guest.write(&mut s, 0x20_0010, 1).unwrap();
    assert_eq!(s.translate(g(0x20_0000)).unwrap().size, LeafSize::Size2M);
    let mut out = DirtyBitmap::new();
    assert_eq!(s.harvest_dirty(&mut out), Ok(512));
    assert_eq!(out.iter().next(), Some(g(0x20_0000)));
    assert!(
        !s.translate(g(0x20_0000))
            .unwrap()
            .attr
            .access
            .contains(Access::WRITE),
        "write-protected again"
    );
}

#[test]
fn one_gib_leaf_splits_into_pages() {
    let arena = HeapArena::new(4096);
    let mut s: Space = common::new_space(
        &arena,
        2 << 30,
        Stage2Caps::all(),
        nop as fn(FlushScope),
        4096,
    );
    // A linear 1 GiB leaf is not RAM: it stays whole.
    s.map_linear(
        g(0),
        memory_set::HostPhysAddr::new(1 << 30),
        1 << 30,
        Access::RW,
        ept::format::MemType::WriteBack,
    )
    .unwrap();
    assert_eq!(s.stats().leaves_1g, 1);
    s.start_dirty_log(g(0), 1 << 30, HugeLeaves::Split).unwrap();
    assert_eq!(s.stats().leaves_1g, 1, "linear windows are not logged");
    // A 1 GiB RAM leaf (from a clone of a layout) would need 513 tables; here RAM
    // comes in 2 MiB leaves at most, so check the 2 MiB case over a whole GiB.
    s.stop_dirty_log().unwrap();
    s.unmap(g(0), 1 << 30).unwrap();
    let big = HeapArena::new(300_000);
    let mut r: Space = common::new_space(
        &big,
        2 << 30,
        Stage2Caps::all(),
        nop as fn(FlushScope),
        300_000,
    );
    r.map_alloc(g(0), 1 << 30, Access::RW, true).unwrap();
    assert_eq!(r.stats().leaves_2m, 512);
    let frames = r.stats().frames();
    r.start_dirty_log(g(0), 1 << 30, HugeLeaves::Split).unwrap();
    assert_eq!((r.stats().leaves_2m, r.stats().leaves_4k), (0, 1 << 18));
    assert_eq!(r.stats().frames(), frames + 512);
}

#[test]
fn snapshot_refusals_change_nothing() {
    let arena = HeapArena::new(8192);
    let build = |quota| {
        let mut s = space(&arena, Stage2Caps::all(), quota);
        s.map_alloc(g(0), 8 * MIB, Access::RW, true).unwrap();
        s.write(g(0x1000), b"abc").unwrap();
        s
    };
    let used = build(8192).stats().frames();
    // Over the quota: the snapshot counts as many frames as the space holds.
    let mut s = build(2 * used - 1);
    let before = fingerprint(&s, &arena);
    let r = s.snapshot();
    assert!(
        matches!(
            r,
            Err(SpaceError::OutOfMemory {
                reason: OomReason::Quota { .. },
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(fingerprint(&s, &arena), before);
    // No frame from the host for the snapshot's table.
    let arena2 = HeapArena::new(8192);
    let mut t = space(&arena2, Stage2Caps::all(), 8192);
    t.map_alloc(g(0), 8 * MIB, Access::RW, true).unwrap();
    let before = fingerprint(&t, &arena2);
    arena2.fail_after(1);
    assert!(matches!(t.snapshot(), Err(SpaceError::OutOfMemory { .. })));
    arena2.clear_failures();
    assert_eq!(fingerprint(&t, &arena2), before);
    // One at a time; a foreign snapshot is refused.
    let snap = t.snapshot().unwrap();
    assert_eq!(
        t.snapshot().err(),
        Some(tracking(TrackingProblem::SnapshotAttached))
    );
    let mut u = space(&arena2, Stage2Caps::all(), 8192);
    u.map_alloc(g(0), 8 * MIB, Access::RW, true).unwrap();
    let before_u = fingerprint(&u, &arena2);
    assert_eq!(
        u.restore(&snap),
        Err(tracking(TrackingProblem::ForeignSnapshot))
    );
    assert_eq!(fingerprint(&u, &arena2), before_u);
    // An area change makes it stale: restore is refused, drop still frees.
    t.write(g(0x2000), b"x").unwrap();
    t.unmap(g(6 * MIB), 2 * MIB).unwrap();
    let before = fingerprint(&t, &arena2);
    assert_eq!(
        t.restore(&snap),
        Err(tracking(TrackingProblem::SnapshotStale))
    );
    assert_eq!(fingerprint(&t, &arena2), before);
    drop(snap);
    drop((t, u));
    assert_eq!(arena2.in_use(), 0);
    // Owned regions are written without faults: refused.
    let mut v = space(&arena2, Stage2Caps::all(), 8192);
    let region = v.alloc_region(Some(g(0)), MIB, Access::RW).unwrap();
    assert_eq!(
        v.snapshot().err(),
        Some(tracking(TrackingProblem::OwnedRegion))
    );
    drop(region);
    drop((s, v));
    assert_eq!(arena.in_use() + arena2.in_use(), 0);
}

#[test]
fn snapshot_costs_tables_not_ram_and_counts_against_the_quota() {
    let arena = HeapArena::new(20_000);
    let mut s = space(&arena, Stage2Caps::all(), 20_000);
    s.map_alloc(g(0), 32 * MIB, Access::RW, true).unwrap();
    let stats = s.stats();
    let before = arena.in_use();
    let snap = s.snapshot().unwrap();
    assert_eq!(
        arena.in_use() - before,
        stats.table_frames,
        "only the table is copied"
    );
    assert_eq!(snap.frames(), stats.frames());
    // Writes copy pages; a restore copies them back and keeps the private frames.
    s.write(g(0x5000), &[9; 100]).unwrap();
    assert_eq!(s.stats().cow_copies, 1);
    let r = s.restore(&snap).unwrap();
    assert_eq!((r.pages_copied, r.pages_unmapped), (1, 0));
    let mut b = [1u8; 100];
    s.read(g(0x5000), &mut b).unwrap();
    assert_eq!(b, [0; 100]);
    // The quota: space + snapshot fill it; faulting in more is refused.
    drop(snap);
    drop(s);
    assert_eq!(arena.in_use(), 0);
    let build = |quota| {
        let mut s = space(&arena, Stage2Caps::all(), quota);
        s.map_alloc(g(0), 2 * MIB, Access::RW, true).unwrap();
        s.map_alloc(g(2 * MIB), 62 * MIB, Access::RW, false)
            .unwrap();
        s
    };
    let used = build(20_000).stats().frames();
    let mut s = build(2 * used + 2);
    let snap = s.snapshot().unwrap();
    let r = s.write(g(40 * MIB), &[1; 3 * 4096]);
    assert!(
        matches!(
            r,
            Err(SpaceError::OutOfMemory {
                reason: OomReason::Quota { .. },
                ..
            })
        ),
        "{r:?}"
    );
    drop(snap);
    s.write(g(40 * MIB), &[1; 3 * 4096]).unwrap();
}
