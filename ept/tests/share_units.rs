//! Unit tests of memory that moves between owners: `take` / `map_bundle` (unmap and
//! keep, move), shared windows, `discard` (balloon) and the zero page, one behaviour
//! or error path each, with a leak check at the end of every test.

mod common;

use common::{MIB, caps_4k_only, fault, g, new_space};
use ept::caps::Stage2Caps;
use ept::fault::{FaultKind, Stage2Fault};
use ept::format::{Access, MemType, Npt};
use ept::frame::{HeapArena, read_phys, write_phys};
use ept::size::LeafSize;
use ept::space::{AddressSpace, BundleProblem, FaultOutcome, OomReason, SpaceError};
use memory_set::{HostPhysAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

type Space = AddressSpace<Npt, HeapArena, HeapArena, fn(ept::flush::FlushScope)>;

fn noop(_: ept::flush::FlushScope) {}

fn sp(arena: &HeapArena, caps: Stage2Caps, quota: usize) -> Space {
    new_space(arena, 64 * MIB, caps, noop as fn(_), quota)
}

fn space(arena: &HeapArena, quota: usize) -> Space {
    sp(arena, Stage2Caps::all(), quota)
}

/// A linear window at 16 MiB and an owned region at 32 MiB (one page each): ranges
/// that take and discard refuse.
fn add_linear_and_owned(
    a: &mut Space,
) -> ept::space::OwnedRegion<Npt, HeapArena, HeapArena, fn(ept::flush::FlushScope)> {
    a.map_linear(
        g(0x100_0000),
        HostPhysAddr::new(0x40_0000_0000),
        0x1000,
        Access::RW,
        MemType::Uncacheable,
    )
    .unwrap();
    a.alloc_region(Some(g(0x200_0000)), 0x1000, Access::RW)
        .unwrap()
}

/// What must not change when an operation fails.
fn state(s: &Space) -> String {
    let st = s.stats();
    format!("{} {} {:?}", st.ram_frames, st.table_frames, s.areas())
}

fn write_fault(gpa: usize) -> Stage2Fault {
    Stage2Fault {
        kind: FaultKind::Permission,
        ..fault(gpa, Access::WRITE)
    }
}

/// A guest store through the table, as the CPU would do it (faulting first when the
/// leaf is absent or read-only).
fn guest_store(s: &mut Space, arena: &HeapArena, gpa: usize, v: u64) -> Result<(), SpaceError> {
    loop {
        match s.translate(g(gpa)) {
            Some(t) if t.attr.access.contains(Access::WRITE) => {
                write_phys(arena, t.hpa, &v.to_le_bytes()).unwrap();
                return Ok(());
            }
            Some(_) => s.handle_fault(write_fault(gpa))?,
            None => s.handle_fault(fault(gpa, Access::WRITE))?,
        };
    }
}

fn guest_load(s: &Space, arena: &HeapArena, gpa: usize) -> Option<u64> {
    let t = s.translate(g(gpa))?;
    let mut b = [0u8; 8];
    read_phys(arena, t.hpa, &mut b).unwrap();
    Some(u64::from_le_bytes(b))
}

#[test]
fn take_keeps_contents_and_huge_leaves_and_moves_without_copy() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    let mut b = space(&arena, 2048);
    a.map_alloc(g(0), 8 * MIB, Access::RW, false).unwrap();
    a.write_obj(g(0x20_0008), &0x1111u64).unwrap(); // a 2 MiB leaf
    a.write_obj(g(0x40_1000), &0x2222u64).unwrap(); // another
    assert_eq!(a.translate(g(0x20_0000)).unwrap().size, LeafSize::Size2M);
    let hpa = a.translate(g(0x20_0000)).unwrap().hpa;
    let ram_before = a.stats().ram_frames;
    let tables = |a: &Space, b: &Space| a.stats().table_frames + b.stats().table_frames;
    let in_use = arena.in_use() - tables(&a, &b);
    let bundle = a.take(g(0x20_0000), 4 * MIB).unwrap();
    assert_eq!(bundle.size(), 4 * MIB);
    assert_eq!(bundle.huge_pieces(), 2, "2 MiB leaves stay 2 MiB pieces");
    assert!(a.translate(g(0x20_0000)).is_none());
    assert_eq!(a.stats().ram_frames, ram_before - 1024, "the frames left a");
    assert_eq!(
        arena.in_use() - tables(&a, &b),
        in_use,
        "nothing freed, nothing copied"
    );
    assert!(matches!(
        a.read_obj::<u64>(g(0x20_0008)),
        Err(SpaceError::NotMapped { .. })
    ));
    // Moved into b at a 2 MiB aligned address: the same frames, 2 MiB leaves,
    // private and writable at once.
    b.map_bundle(g(0x80_0000), bundle, Access::RW).unwrap();
    let t = b.translate(g(0x80_0000)).unwrap();
    assert_eq!((t.hpa, t.size), (hpa, LeafSize::Size2M));
    assert!(t.attr.access.contains(Access::WRITE));
    assert_eq!(b.read_obj::<u64>(g(0x80_0008)).unwrap(), 0x1111);
    assert_eq!(b.read_obj::<u64>(g(0xa0_1000)).unwrap(), 0x2222);
    assert_eq!(b.stats().ram_frames, 1024, "the quota follows the frames");
    assert_eq!(arena.in_use() - tables(&a, &b), in_use);
    drop((a, b));
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn a_move_to_an_unaligned_address_maps_4k_leaves_of_the_same_frames() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0), 4 * MIB, Access::RW, true).unwrap();
    a.write_obj(g(0x20_3000), &7u64).unwrap();
    let bundle = a.take(g(0x20_0000), 2 * MIB).unwrap();
    a.map_bundle(g(0x81_0000), bundle, Access::READ).unwrap();
    let t = a.translate(g(0x81_3000)).unwrap();
    assert_eq!(t.size, LeafSize::Size4K);
    assert_eq!(a.read_obj::<u64>(g(0x81_3000)).unwrap(), 7);
    assert_eq!(
        a.write_obj(g(0x81_3000), &1u64),
        Err(SpaceError::PermissionDenied {
            gpa: g(0x81_3000),
            access: Access::WRITE,
            allowed: Access::READ
        }),
        "new rights"
    );
    a.validate().unwrap();
    drop(a);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn take_cutting_a_huge_leaf_shares_the_block_until_both_let_go() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0x20_0000), 2 * MIB, Access::RW, true)
        .unwrap();
    a.write_obj(g(0x20_0000), &1u64).unwrap();
    a.write_obj(g(0x30_0000), &2u64).unwrap();
    let bundle = a.take(g(0x30_0000), MIB).unwrap();
    assert_eq!(bundle.pages_held(), 256);
    assert_eq!(a.translate(g(0x20_0000)).unwrap().size, LeafSize::Size4K);
    // The half left behind is copy-on-write now: a write copies one page.
    a.write_obj(g(0x20_0000), &3u64).unwrap();
    assert_eq!(a.stats().cow_copies, 1);
    drop(bundle);
    assert!(arena.in_use() > 512, "a still holds the block");
    a.unmap(g(0x20_0000), MIB).unwrap();
    drop(a);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn take_errors_change_nothing() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    let region = add_linear_and_owned(&mut a);
    a.write_obj(g(0x1000), &5u64).unwrap();
    let before = (state(&a), arena.in_use());
    let cases = [
        (0x1001, 0x1000),
        (0x0, 0x20_0000),      // runs past the area: a hole
        (0x100_0000, 0x1000),  // linear window
        (0x200_0000, 0x1000),  // owned region
        (0x4000_0000, 0x1000), // outside the window
        (0x0, 0),              // empty
    ];
    for (at, size) in cases {
        let e = a.take(g(at), size).unwrap_err();
        assert!(
            matches!(
                e,
                SpaceError::Unaligned { .. }
                    | SpaceError::NotMapped { .. }
                    | SpaceError::NotRam { .. }
                    | SpaceError::Owned { .. }
                    | SpaceError::InvalidRange { .. }
            ),
            "{at:#x}+{size:#x}: {e}"
        );
        assert_eq!((state(&a), arena.in_use()), before, "{at:#x}+{size:#x}");
    }
    assert_eq!(a.read_obj::<u64>(g(0x1000)).unwrap(), 5);
    drop(region);
    drop(a);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn take_needing_a_split_without_frames_changes_nothing() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0x20_0000), 2 * MIB, Access::RW, true)
        .unwrap();
    let before = (state(&a), arena.in_use());
    arena.fail_after(0);
    let e = a.take(g(0x21_0000), 0x1000).unwrap_err();
    arena.clear_failures();
    assert!(matches!(e, SpaceError::OutOfMemory { .. }), "{e}");
    assert_eq!((state(&a), arena.in_use()), before);
    drop(a);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn map_bundle_errors_give_the_bundle_back_and_change_nothing() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0), 2 * MIB, Access::RW, false).unwrap();
    for p in 0..16 {
        a.write_obj(g(p * PAGE_SIZE_4K), &(p as u64 + 1)).unwrap();
    }
    let mut bundle = a.take(g(0), 0x1_0000).unwrap();
    let before = (state(&a), arena.in_use());
    // Overlap, bad rights, outside the window, unaligned.
    for (at, access) in [
        (0x1_0000, Access::RW),
        (0x40_0000, Access::WRITE),
        (0x3fff_f000, Access::RW),
        (0x40_0800, Access::RW),
    ] {
        let (back, e) = a.map_bundle(g(at), bundle, access).unwrap_err();
        bundle = back;
        assert!(!matches!(e, SpaceError::OutOfMemory { .. }), "{e}");
        assert_eq!((state(&a), arena.in_use()), before, "{at:#x}: {e}");
    }
    // Over the quota: the frames of a bundle count.
    let mut small = space(&arena, 8);
    let (back, e) = small.map_bundle(g(0), bundle, Access::RW).unwrap_err();
    assert!(matches!(
        e,
        SpaceError::OutOfMemory {
            reason: OomReason::Quota { .. },
            ..
        }
    ));
    bundle = back;
    // No frame for the tables: nothing changes, the bundle comes back whole.
    let mut c = space(&arena, 2048);
    let before_c = (state(&c), arena.in_use());
    arena.fail_after(0);
    let (back, e) = c.map_bundle(g(0x100_0000), bundle, Access::RW).unwrap_err();
    arena.clear_failures();
    assert!(matches!(e, SpaceError::OutOfMemory { .. }), "{e}");
    assert_eq!((state(&c), arena.in_use()), before_c);
    c.map_bundle(g(0x100_0000), back, Access::RW).unwrap();
    for p in 0..16 {
        assert_eq!(
            c.read_obj::<u64>(g(0x100_0000 + p * PAGE_SIZE_4K)).unwrap(),
            p as u64 + 1
        );
    }
    drop((a, small, c));
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn a_dropped_bundle_frees_its_frames_and_holes_read_as_zeros() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    a.write_obj(g(0x3000), &9u64).unwrap();
    let bundle = a.take(g(0), 0x8000).unwrap();
    assert_eq!(bundle.pages_held(), 1);
    assert!(!bundle.is_complete());
    let tables = a.stats().table_frames;
    drop(bundle);
    assert_eq!(arena.in_use(), tables, "only a's tables are left");
    let bundle = a.take(g(0x8000), 0x4000).unwrap();
    assert_eq!(bundle.pages_held(), 0);
    a.map_bundle(g(0x40_0000), bundle, Access::RW).unwrap();
    assert_eq!(
        a.read_obj::<u64>(g(0x40_1000)).unwrap(),
        0,
        "a hole reads as zeros"
    );
    drop(a);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn shared_windows_share_frames_with_per_space_rights() {
    let arena = HeapArena::new(4096);
    let mut producer = space(&arena, 2048);
    let mut consumer = space(&arena, 2048);
    producer
        .map_alloc(g(0x40_0000), 0x2000, Access::RW, true)
        .unwrap();
    let mut window = producer.take(g(0x40_0000), 0x2000).unwrap();
    assert!(window.is_complete());
    producer
        .map_window(g(0x40_0000), &mut window, Access::RW)
        .unwrap();
    consumer
        .map_window(g(0x80_0000), &mut window, Access::READ)
        .unwrap();
    guest_store(&mut producer, &arena, 0x40_1008, 42).unwrap();
    assert_eq!(
        guest_load(&consumer, &arena, 0x80_1008),
        Some(42),
        "no copy"
    );
    assert_eq!(producer.stats().cow_copies, 0);
    let e = guest_store(&mut consumer, &arena, 0x80_1008, 1).unwrap_err();
    assert!(matches!(e, SpaceError::PermissionDenied { .. }), "{e}");
    assert_eq!(
        consumer.stats().ram_frames,
        2,
        "a window counts in every sharer"
    );
    assert_eq!(consumer.stats().shared_frames, 2);
    // Hypervisor reads and writes, balloon and take do not apply to windows.
    assert!(matches!(
        consumer.read_obj::<u64>(g(0x80_1008)),
        Err(SpaceError::NotRam { .. })
    ));
    assert!(matches!(
        producer.discard(g(0x40_0000), 0x1000),
        Err(SpaceError::NotRam { .. })
    ));
    assert!(matches!(
        producer.take(g(0x40_0000), 0x1000),
        Err(SpaceError::NotRam { .. })
    ));
    // The last owner frees: the bundle, then the producer, then the consumer.
    drop(window);
    producer.unmap(g(0x40_0000), 0x2000).unwrap();
    assert_eq!(guest_load(&consumer, &arena, 0x80_1008), Some(42));
    let tables = producer.stats().table_frames + consumer.stats().table_frames;
    assert_eq!(arena.in_use(), tables + 2);
    drop(consumer);
    assert_eq!(arena.in_use(), producer.stats().table_frames);
    drop(producer);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn a_clone_keeps_its_window_shared() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0), 0x1000, Access::RW, true).unwrap();
    let mut window = a.take(g(0), 0x1000).unwrap();
    a.map_window(g(0x10_0000), &mut window, Access::RW).unwrap();
    let mut child = a.try_clone().unwrap();
    let t = child.translate(g(0x10_0000)).unwrap();
    assert!(t.attr.access.contains(Access::WRITE), "not write-protected");
    assert_eq!(t.hpa, a.translate(g(0x10_0000)).unwrap().hpa, "not copied");
    guest_store(&mut child, &arena, 0x10_0010, 77).unwrap();
    assert_eq!(guest_load(&a, &arena, 0x10_0010), Some(77));
    assert_eq!(child.stats().cow_copies, 0);
    drop((a, window));
    assert_eq!(guest_load(&child, &arena, 0x10_0010), Some(77));
    drop(child);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn window_errors_change_nothing() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    a.write_obj(g(0), &1u64).unwrap();
    // A hole.
    let mut holey = a.take(g(0), 0x2000).unwrap();
    let before = (state(&a), arena.in_use());
    assert_eq!(
        a.map_window(g(0x40_0000), &mut holey, Access::RW),
        Err(SpaceError::Bundle {
            problem: BundleProblem::Hole { offset: 0x1000 }
        })
    );
    assert_eq!((state(&a), arena.in_use()), before);
    // Frames still shared copy-on-write with a clone.
    a.write_obj(g(0x2000), &2u64).unwrap();
    let clone = a.try_clone().unwrap();
    let mut cow = a.take(g(0x2000), 0x1000).unwrap();
    let before = (state(&a), arena.in_use());
    assert_eq!(
        a.map_window(g(0x40_0000), &mut cow, Access::RW),
        Err(SpaceError::Bundle {
            problem: BundleProblem::CopyOnWrite { offset: 0 }
        })
    );
    assert_eq!((state(&a), arena.in_use()), before);
    // Moving it instead is fine: the frame stays copy-on-write.
    a.map_bundle(g(0x40_0000), cow, Access::RW).unwrap();
    a.write_obj(g(0x40_0000), &3u64).unwrap();
    assert_eq!(clone.read_obj::<u64>(g(0x2000)).unwrap(), 2);
    // Over the quota, no frame for tables, overlapping.
    a.map_alloc(g(0x80_0000), 0x1000, Access::RW, true).unwrap();
    let mut w = a.take(g(0x80_0000), 0x1000).unwrap();
    let mut tiny = space(&arena, 1);
    let before = (state(&tiny), arena.in_use());
    assert!(matches!(
        tiny.map_window(g(0), &mut w, Access::RW),
        Err(SpaceError::OutOfMemory { .. })
    ));
    assert_eq!((state(&tiny), arena.in_use()), before);
    let before = (state(&a), arena.in_use());
    arena.fail_after(0);
    assert!(matches!(
        a.map_window(g(0x3f0_0000), &mut w, Access::RW),
        Err(SpaceError::OutOfMemory { .. })
    ));
    arena.clear_failures();
    assert_eq!((state(&a), arena.in_use()), before);
    assert!(matches!(
        a.map_window(g(0x40_0000), &mut w, Access::RW),
        Err(SpaceError::AlreadyMapped { .. })
    ));
    assert!(matches!(
        a.map_window(g(0x90_0000), &mut w, Access::WRITE),
        Err(SpaceError::BadAccess { .. })
    ));
    assert_eq!((state(&a), arena.in_use()), before);
    // A window cannot be moved into RAM: its writers would change copy-on-write pages.
    a.map_window(g(0x90_0000), &mut w, Access::RW).unwrap();
    let (w, e) = a.map_bundle(g(0xa0_0000), w, Access::RW).unwrap_err();
    assert_eq!(
        e,
        SpaceError::Bundle {
            problem: BundleProblem::IsWindow
        }
    );
    drop((a, clone, tiny, holey, w));
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn discard_frees_at_once_and_the_area_refaults_zeros() {
    let arena = HeapArena::new(8192);
    let mut a = space(&arena, 4096);
    a.map_alloc(g(0), 8 * MIB, Access::RW, true).unwrap();
    a.write_obj(g(0x20_0000), &5u64).unwrap();
    let ram = a.stats().ram_frames;
    let in_use = arena.in_use();
    assert_eq!(a.discard(g(0x20_0000), 4 * MIB).unwrap(), 1024);
    assert_eq!(a.stats().ram_frames, ram - 1024);
    assert_eq!(arena.in_use(), in_use - 1024, "freed at once");
    assert_eq!(a.stats().balloon_frames, 1024);
    assert_eq!(a.read_obj::<u64>(g(0x20_0000)).unwrap(), 0);
    assert!(matches!(
        a.handle_fault(fault(0x20_0000, Access::WRITE)).unwrap(),
        FaultOutcome::Populated { .. }
    ));
    assert_eq!(
        guest_load(&a, &arena, 0x20_0000),
        Some(0),
        "zeros on re-touch"
    );
    // Discarding part of a 2 MiB leaf splits it; the block goes with its last page.
    a.write_obj(g(0x60_0000), &6u64).unwrap();
    assert_eq!(a.discard(g(0x60_1000), 0x1000).unwrap(), 0);
    assert!(a.translate(g(0x60_1000)).is_none());
    assert_eq!(a.read_obj::<u64>(g(0x60_0000)).unwrap(), 6);
    drop(a);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn discard_gives_the_quota_room_again() {
    let arena = HeapArena::new(4096);
    let mut a = sp(&arena, caps_4k_only(), 40);
    a.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    let mut touched = 0;
    while a
        .handle_fault(fault(touched * PAGE_SIZE_4K, Access::WRITE))
        .is_ok()
    {
        touched += 1;
    }
    assert!(touched > 20);
    assert!(a.handle_fault(fault(0x8_0000, Access::WRITE)).is_err());
    a.discard(g(0), 16 * PAGE_SIZE_4K).unwrap();
    for p in 0..16 {
        a.handle_fault(fault(0x8_0000 + p * PAGE_SIZE_4K, Access::WRITE))
            .unwrap();
    }
    drop(a);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn discard_errors_change_nothing() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0x20_0000), 2 * MIB, Access::RW, true)
        .unwrap();
    let region = add_linear_and_owned(&mut a);
    let before = (state(&a), arena.in_use());
    for (at, size) in [
        (0x20_0800usize, 0x1000usize),
        (0x10_0000, 0x20_0000),
        (0x100_0000, 0x1000),
        (0x200_0000, 0x1000),
        (0x4000_0000, 0x1000),
    ] {
        assert!(a.discard(g(at), size).is_err(), "{at:#x}");
        assert_eq!((state(&a), arena.in_use()), before, "{at:#x}");
    }
    arena.fail_after(0);
    assert!(matches!(
        a.discard(g(0x21_0000), 0x1000),
        Err(SpaceError::OutOfMemory { .. })
    ));
    arena.clear_failures();
    assert_eq!((state(&a), arena.in_use()), before);
    drop((region, a));
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn discarding_shared_frames_only_drops_this_spaces_reference() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    a.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    a.write_obj(g(0), &4u64).unwrap();
    let child = a.try_clone().unwrap();
    let hpa = a.translate(g(0)).unwrap().hpa;
    a.discard(g(0), 0x1000).unwrap();
    assert!(arena.is_allocated(hpa), "the clone still holds the frame");
    assert_eq!(child.read_obj::<u64>(g(0)).unwrap(), 4);
    drop((a, child));
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn the_zero_page_serves_reads_and_writes_copy() {
    let arena = HeapArena::new(4096);
    let mut a = sp(&arena, Stage2Caps::all(), 2048);
    a.set_zero_page(true);
    a.map_alloc(g(0x20_0000), 4 * MIB, Access::RWX, false)
        .unwrap();
    for p in 0..100 {
        a.handle_fault(fault(0x20_0000 + p * PAGE_SIZE_4K, Access::READ))
            .unwrap();
    }
    let zero = a.zero_page().unwrap();
    let st = a.stats();
    assert_eq!(st.zero_page_reads, 100);
    assert_eq!(st.ram_frames, 1, "one frame for 100 pages");
    let t = a.translate(g(0x20_5000)).unwrap();
    assert_eq!((t.hpa, t.size), (zero, LeafSize::Size4K));
    assert!(!t.attr.access.contains(Access::WRITE));
    a.validate().unwrap();
    // The first write allocates (a copy-on-write break of the zero page).
    guest_store(&mut a, &arena, 0x20_5008, 9).unwrap();
    assert_ne!(a.translate(g(0x20_5000)).unwrap().hpa, zero);
    assert_eq!(guest_load(&a, &arena, 0x20_6008), Some(0));
    let mut z = [0u8; PAGE_SIZE_4K];
    read_phys(&arena, zero, &mut z).unwrap();
    assert!(z.iter().all(|&b| b == 0), "the zero page stays zero");
    // Protect cannot make it writable; write() copies it too.
    a.protect(g(0x20_0000), 4 * MIB, Access::RW).unwrap();
    assert!(
        !a.translate(g(0x20_7000))
            .unwrap()
            .attr
            .access
            .contains(Access::WRITE)
    );
    a.write_obj(g(0x20_7000), &1u64).unwrap();
    // Writes and instruction fetches allocate as before.
    assert!(matches!(
        a.handle_fault(fault(0x40_0000, Access::WRITE)).unwrap(),
        FaultOutcome::Populated {
            size: LeafSize::Size2M
        }
    ));
    // A clone shares the zero leaves and reads zeros with a page of its own.
    let mut child = a.try_clone().unwrap();
    assert_eq!(child.translate(g(0x20_9000)).unwrap().hpa, zero);
    child.handle_fault(fault(0x50_0000, Access::READ)).unwrap();
    assert_ne!(child.zero_page(), Some(zero));
    drop(a);
    assert_eq!(guest_load(&child, &arena, 0x20_9000), Some(0));
    guest_store(&mut child, &arena, 0x20_9000, 1).unwrap();
    drop(child);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn the_zero_page_is_off_by_default_and_within_the_quota() {
    let arena = HeapArena::new(4096);
    let mut a = sp(&arena, caps_4k_only(), 2048);
    a.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    a.handle_fault(fault(0, Access::READ)).unwrap();
    assert_eq!(a.zero_page(), None);
    assert_eq!(a.stats().zero_page_reads, 0);
    // With the quota full, a read fault fails as an allocation would.
    let mut b = sp(&arena, caps_4k_only(), 1);
    b.set_zero_page(true);
    b.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    let before = (state(&b), arena.in_use());
    assert!(matches!(
        b.handle_fault(fault(0, Access::READ)),
        Err(SpaceError::OutOfMemory { .. })
    ));
    assert_eq!((state(&b), arena.in_use()), before);
    drop((a, b));
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn zero_leaves_are_holes_when_taken_and_go_with_a_discard() {
    let arena = HeapArena::new(4096);
    let mut a = sp(&arena, caps_4k_only(), 2048);
    a.set_zero_page(true);
    a.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    for p in 0..4 {
        a.handle_fault(fault(p * PAGE_SIZE_4K, Access::READ))
            .unwrap();
    }
    a.write_obj(g(0x1000), &3u64).unwrap();
    let b = a.take(g(0), 0x2000).unwrap();
    assert_eq!(b.pages_held(), 1, "the zero page is not taken");
    assert_eq!(
        a.discard(g(0x2000), 0x2000).unwrap(),
        0,
        "the zero page stays"
    );
    assert!(a.translate(g(0x2000)).is_none());
    drop((a, b));
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn a_2m_aligned_window_keeps_2m_leaves() {
    let arena = HeapArena::new(4096);
    let mut a = space(&arena, 2048);
    let mut b = space(&arena, 2048);
    a.map_alloc(g(0x20_0000), 2 * MIB, Access::RW, true)
        .unwrap();
    let mut w = a.take(g(0x20_0000), 2 * MIB).unwrap();
    a.map_window(g(0x20_0000), &mut w, Access::RW).unwrap();
    b.map_window(g(0x40_0000), &mut w, Access::READ).unwrap();
    assert_eq!(b.translate(g(0x40_0000)).unwrap().size, LeafSize::Size2M);
    assert_eq!(a.stats().shared_frames, 512);
    assert_eq!(b.report().to_string().matches("shared window").count(), 1);
    drop((w, a));
    assert_eq!(b.stats().ram_frames, 512);
    drop(b);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn block_size_constants() {
    assert_eq!(PAGE_SIZE_2M / PAGE_SIZE_4K, 512);
}
