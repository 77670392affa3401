//! Unit tests of the guest address space: every error path, faults, guest memory
//! access, copy-on-write clones, owned regions, accounting and reports.

use std::cell::Cell;
use std::rc::Rc;

mod common;

use common::{MIB, fault, g, new_space, snapshot};
use ept::caps::Stage2Caps;
use ept::fault::{FaultKind, Stage2Fault};
use ept::flush::FlushScope;
use ept::format::{Access, AttrError, MemType, Npt};
use ept::frame::{FrameAlloc, HeapArena, read_phys};
use ept::size::LeafSize;
use ept::space::{
    AddressSpace, AreaKind, FaultOutcome, Invalidate, OomReason, RangeProblem, SpaceError,
    ViewError,
};
use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

/// Counts invalidations.
#[derive(Clone, Default)]
struct Inv(Rc<Cell<usize>>);

impl Invalidate for Inv {
    fn invalidate(&mut self, _scope: FlushScope) {
        self.0.set(self.0.get() + 1);
    }
}

type Space = AddressSpace<Npt, HeapArena, HeapArena, Inv>;

fn range(a: usize, n: usize) -> AddrRange<GuestPhysAddr> {
    AddrRange::from_start_size(g(a), n).unwrap()
}

/// A 64 MiB space at 0 over an arena of `frames`, quota `quota`.
fn space(frames: usize, quota: usize) -> (Space, HeapArena, Inv) {
    let arena = HeapArena::new(frames);
    let inv = Inv::default();
    let s = new_space(&arena, 64 * MIB, Stage2Caps::all(), inv.clone(), quota);
    (s, arena, inv)
}

fn perm_fault(gpa: usize, access: Access) -> Stage2Fault {
    Stage2Fault {
        kind: FaultKind::Permission,
        ..fault(gpa, access)
    }
}

#[test]
fn new_rejects_bad_windows() {
    let arena = HeapArena::new(8);
    let mk = |base, size, quota| {
        Space::new(
            g(base),
            size,
            Stage2Caps::all(),
            arena.clone(),
            arena.clone(),
            Inv::default(),
            quota,
        )
        .map(|_| ())
    };
    assert!(matches!(
        mk(0, 0, 8),
        Err(SpaceError::InvalidRange {
            problem: RangeProblem::Empty,
            ..
        })
    ));
    assert!(matches!(
        mk(0x800, 0x1000, 8),
        Err(SpaceError::Unaligned { .. })
    ));
    assert!(matches!(
        mk(0, 0x1800, 8),
        Err(SpaceError::Unaligned { .. })
    ));
    assert!(matches!(
        mk(1 << 48, 0x1000, 8),
        Err(SpaceError::InvalidRange {
            problem: RangeProblem::BeyondPhysWidth,
            ..
        })
    ));
    assert!(matches!(
        mk(0, 0x1000, 0),
        Err(SpaceError::OutOfMemory {
            reason: OomReason::Quota { .. },
            ..
        })
    ));
    assert_eq!(arena.in_use(), 0);
    let s = Space::new(
        g(0x10_0000),
        0x20_0000,
        Stage2Caps::all(),
        arena.clone(),
        arena.clone(),
        Inv::default(),
        8,
    )
    .unwrap();
    assert_eq!(s.base(), g(0x10_0000));
    assert_eq!(s.end(), g(0x30_0000));
    assert_eq!(s.size(), 0x20_0000);
    assert!(s.contains_range(g(0x10_0000), 0x20_0000));
    assert!(!s.contains_range(g(0x10_0000), 0x20_1000));
    assert!(!s.contains_range(g(0), 0x1000));
    assert_eq!(arena.in_use(), 1, "the root table");
    assert_eq!(s.root().as_usize() % PAGE_SIZE_4K, 0);
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn map_errors_change_nothing() {
    let (mut s, arena, _) = space(4096, 4096);
    s.map_alloc(g(0x10_0000), 0x10_0000, Access::RW, true)
        .unwrap();
    let before = snapshot(&s, &arena);
    let cases: Vec<(SpaceError, Result<(), SpaceError>)> = vec![
        (
            SpaceError::InvalidRange {
                start: 0,
                size: 0,
                problem: RangeProblem::Empty,
            },
            s.map_alloc(g(0), 0, Access::RW, false),
        ),
        (
            SpaceError::Unaligned {
                value: 0x1001,
                align: PAGE_SIZE_4K,
            },
            s.map_alloc(g(0x1001), 0x1000, Access::RW, false),
        ),
        (
            SpaceError::Unaligned {
                value: 0x10,
                align: PAGE_SIZE_4K,
            },
            s.map_alloc(g(0x1000), 0x10, Access::RW, false),
        ),
        (
            SpaceError::InvalidRange {
                start: 63 * MIB,
                size: 2 * MIB,
                problem: RangeProblem::OutsideWindow,
            },
            s.map_alloc(g(63 * MIB), 2 * MIB, Access::RW, false),
        ),
        (
            SpaceError::AlreadyMapped { gpa: g(0x10_0000) },
            s.map_alloc(g(0xff000), 0x2000, Access::RW, true),
        ),
        (
            SpaceError::BadAccess {
                access: Access::WRITE,
                reason: AttrError::WriteWithoutRead,
            },
            s.map_alloc(g(0), 0x1000, Access::WRITE, false),
        ),
        (
            SpaceError::BadAccess {
                access: Access::empty(),
                reason: AttrError::NoAccess,
            },
            s.map_alloc(g(0), 0x1000, Access::empty(), false),
        ),
        (
            SpaceError::Unaligned {
                value: 0x123,
                align: PAGE_SIZE_4K,
            },
            s.map_linear(
                g(0),
                HostPhysAddr::new(0x123),
                0x1000,
                Access::RW,
                MemType::Uncacheable,
            ),
        ),
        (
            SpaceError::InvalidRange {
                start: 0,
                size: 0x2000,
                problem: RangeProblem::HostOverflow,
            },
            s.map_linear(
                g(0),
                HostPhysAddr::new(usize::MAX - 0xfff),
                0x2000,
                Access::RW,
                MemType::Uncacheable,
            ),
        ),
        (
            SpaceError::BadHostAddress {
                hpa: HostPhysAddr::new((1 << 52) + 0xfff),
            },
            s.map_linear(
                g(0),
                HostPhysAddr::new(1 << 52),
                0x1000,
                Access::RW,
                MemType::Uncacheable,
            ),
        ),
    ];
    for (want, got) in cases {
        assert_eq!(got, Err(want.clone()), "expected {want}");
        assert!(!want.to_string().is_empty());
    }
    assert_eq!(snapshot(&s, &arena), before);
    s.validate().unwrap();
}

#[test]
fn faults_populate_4k_and_2m_and_report_errors() {
    let (mut s, arena, inv) = space(8192, 8192);
    // 2 MiB aligned area: a fault maps a 2 MiB leaf.
    s.map_alloc(g(4 * MIB), 4 * MIB, Access::RW, false).unwrap();
    // Area not covering a whole 2 MiB block: 4 KiB.
    s.map_alloc(g(0x1000), 0x3000, Access::READ, false).unwrap();
    assert_eq!(s.stats().ram_frames, 0, "nothing allocated before a fault");
    assert_eq!(
        s.handle_fault(fault(4 * MIB + 0x1234, Access::WRITE)),
        Ok(FaultOutcome::Populated {
            size: LeafSize::Size2M
        })
    );
    let t = s.translate(g(4 * MIB + 0x5000)).unwrap();
    assert_eq!(t.size, LeafSize::Size2M);
    assert_eq!(
        s.handle_fault(fault(0x2000, Access::READ)),
        Ok(FaultOutcome::Populated {
            size: LeafSize::Size4K
        })
    );
    // A fault on a translation that already allows the access: spurious, flushed.
    let flushes = inv.0.get();
    assert_eq!(
        s.handle_fault(fault(0x2000, Access::READ)),
        Ok(FaultOutcome::Spurious)
    );
    assert!(inv.0.get() > flushes);
    let st = s.stats();
    assert_eq!(st.ram_frames, 513);
    assert_eq!((st.leaves_4k, st.leaves_2m), (1, 1));
    assert_eq!(st.faults_handled, 3);
    let before = snapshot(&s, &arena);
    assert_eq!(
        s.handle_fault(fault(0x10_0000, Access::READ)),
        Err(SpaceError::NotMapped { gpa: g(0x10_0000) })
    );
    assert_eq!(
        s.handle_fault(perm_fault(0x2000, Access::WRITE)),
        Err(SpaceError::PermissionDenied {
            gpa: g(0x2000),
            access: Access::WRITE,
            allowed: Access::READ
        })
    );
    assert_eq!(
        s.handle_fault(Stage2Fault {
            kind: FaultKind::Misconfig,
            ..fault(0x2000, Access::READ)
        }),
        Err(SpaceError::Misconfigured { gpa: g(0x2000) })
    );
    assert_eq!(
        s.handle_fault(fault(1 << 40, Access::READ)),
        Err(SpaceError::NotMapped { gpa: g(1 << 40) })
    );
    assert_eq!(snapshot(&s, &arena), before);
    // The faulted page reads as zeros.
    let t = s.translate(g(0x2000)).unwrap();
    let mut buf = [0xffu8; 64];
    read_phys(&arena, t.hpa, &mut buf).unwrap();
    assert_eq!(buf, [0u8; 64]);
    s.validate().unwrap();
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn fault_out_of_memory_host_and_quota() {
    // Quota: root + 2 tables + ... small enough that a 2 MiB block does not fit,
    // so the fault falls back to 4 KiB, and then runs out.
    let (mut s, arena, _) = space(4096, 8);
    s.map_alloc(g(0), 4 * MIB, Access::RW, false).unwrap();
    assert_eq!(
        s.handle_fault(fault(0, Access::READ)),
        Ok(FaultOutcome::Populated {
            size: LeafSize::Size4K
        })
    );
    let mut page = 1;
    let err = loop {
        match s.handle_fault(fault(page * PAGE_SIZE_4K, Access::READ)) {
            Ok(_) => page += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(
        err,
        SpaceError::OutOfMemory {
            reason: OomReason::Quota {
                quota_frames: 8,
                ..
            },
            ..
        }
    ));
    assert_eq!(s.stats().frames(), 8);
    assert_eq!(arena.in_use(), 8);
    drop(s);
    // Host allocator exhausted.
    let (mut s, arena, _) = space(4096, 4096);
    s.map_alloc(g(0), 0x10000, Access::RW, false).unwrap();
    let before = snapshot(&s, &arena);
    arena.fail_after(0);
    let err = s.handle_fault(fault(0x3000, Access::WRITE)).unwrap_err();
    assert_eq!(
        err,
        SpaceError::OutOfMemory {
            gpa: Some(g(0x3000)),
            reason: OomReason::HostFrames
        }
    );
    assert!(err.to_string().contains("out of memory"));
    assert_eq!(snapshot(&s, &arena), before);
    // One frame (the leaf) but no table frames: still nothing changes.
    arena.fail_after(1);
    assert!(s.handle_fault(fault(0x3000, Access::WRITE)).is_err());
    assert_eq!(snapshot(&s, &arena), before);
    arena.clear_failures();
    s.handle_fault(fault(0x3000, Access::WRITE)).unwrap();
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn populate_is_transactional_at_every_failure_point() {
    for n in 0..40 {
        let (mut s, arena, _) = space(8192, 8192);
        s.map_alloc(g(0), 0x8000, Access::RW, false).unwrap();
        s.handle_fault(fault(0x3000, Access::WRITE)).unwrap();
        s.write_obj(g(0x3008), &0x1122_3344_u32).unwrap();
        let before = snapshot(&s, &arena);
        arena.fail_after(n);
        let r1 = s.populate_area(g(0), 0x8000);
        let r2 = if r1.is_ok() {
            Ok(())
        } else {
            let b2 = snapshot(&s, &arena);
            assert_eq!(
                b2, before,
                "failed populate after {n} allocations changed state"
            );
            s.map_alloc(g(8 * MIB), 4 * MIB + 0x3000, Access::RW, true)
        };
        if r2.is_err() {
            assert_eq!(snapshot(&s, &arena), before);
        }
        arena.clear_failures();
        assert_eq!(s.read_obj::<u32>(g(0x3008)).unwrap(), 0x1122_3344);
        s.validate().unwrap();
        drop(s);
        assert_eq!(arena.in_use(), 0);
    }
}

#[test]
fn populate_area_errors() {
    let (mut s, arena, _) = space(4096, 4096);
    s.map_alloc(g(0), 0x2000, Access::RW, false).unwrap();
    s.map_linear(
        g(0x4000),
        HostPhysAddr::new(0xfee0_0000),
        0x1000,
        Access::RW,
        MemType::Uncacheable,
    )
    .unwrap();
    let before = snapshot(&s, &arena);
    assert_eq!(
        s.populate_area(g(0), 0x3000),
        Err(SpaceError::NotMapped { gpa: g(0x2000) })
    );
    assert_eq!(
        s.populate_area(g(0x4000), 0x1000),
        Err(SpaceError::NotRam { gpa: g(0x4000) })
    );
    assert_eq!(snapshot(&s, &arena), before);
    s.populate_area(g(0), 0x2000).unwrap();
    assert_eq!(s.stats().ram_frames, 2);
}

#[test]
fn linear_windows_use_huge_leaves_and_uc() {
    let (mut s, arena, _) = space(64, 64);
    let hpa = HostPhysAddr::new(0x8000_0000);
    s.map_linear(
        g(0),
        hpa,
        2 * MIB + 0x1000,
        Access::RW,
        MemType::Uncacheable,
    )
    .unwrap();
    let st = s.stats();
    assert_eq!((st.leaves_2m, st.leaves_4k, st.ram_frames), (1, 1, 0));
    let t = s.translate(g(0x1234)).unwrap();
    assert_eq!(
        (t.hpa, t.size),
        (HostPhysAddr::new(0x8000_1234), LeafSize::Size2M)
    );
    assert_eq!(t.attr.mem_type, MemType::Uncacheable);
    let t = s.translate(g(2 * MIB + 0x10)).unwrap();
    assert_eq!(
        (t.hpa, t.size),
        (HostPhysAddr::new(0x8020_0010), LeafSize::Size4K)
    );
    // Guest memory access does not reach host windows.
    let mut b = [0u8; 4];
    assert_eq!(
        s.read(g(0x10), &mut b),
        Err(SpaceError::NotRam { gpa: g(0x10) })
    );
    // Unmapping the window frees tables but never the host frames.
    s.unmap(g(0), 2 * MIB + 0x1000).unwrap();
    assert_eq!(arena.in_use(), 1);
    s.validate().unwrap();
}

#[test]
fn protect_splits_2m_leaf_and_keeps_contents() {
    let (mut s, arena, _) = space(8192, 8192);
    s.map_alloc(g(2 * MIB), 2 * MIB, Access::RW, true).unwrap();
    assert_eq!(s.stats().leaves_2m, 1);
    for i in 0..512 {
        s.write_obj(g(2 * MIB + i * PAGE_SIZE_4K), &(i as u64))
            .unwrap();
    }
    s.protect(g(2 * MIB + 0x5000), 0x2000, Access::READ)
        .unwrap();
    let st = s.stats();
    assert_eq!((st.leaves_2m, st.leaves_4k), (0, 512));
    assert_eq!(st.ram_frames, 512);
    for i in 0..512 {
        assert_eq!(
            s.read_obj::<u64>(g(2 * MIB + i * PAGE_SIZE_4K)).unwrap(),
            i as u64
        );
    }
    assert_eq!(
        s.write_obj(g(2 * MIB + 0x5000), &1u8),
        Err(SpaceError::PermissionDenied {
            gpa: g(2 * MIB + 0x5000),
            access: Access::WRITE,
            allowed: Access::READ
        })
    );
    assert!(
        !s.translate(g(2 * MIB + 0x6000))
            .unwrap()
            .attr
            .access
            .contains(Access::WRITE)
    );
    assert!(
        s.translate(g(2 * MIB + 0x7000))
            .unwrap()
            .attr
            .access
            .contains(Access::WRITE)
    );
    assert_eq!(s.areas().len(), 3);
    // Unmapping part of the block keeps the block until its last piece goes.
    s.unmap(g(2 * MIB), 0x10_0000).unwrap();
    assert_eq!(s.stats().ram_frames, 512);
    let in_use = arena.in_use();
    s.unmap(g(3 * MIB), 0x10_0000).unwrap();
    assert_eq!(s.stats().ram_frames, 0);
    assert!(arena.in_use() <= in_use - 512);
    s.validate().unwrap();
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn unmap_and_protect_at_quota_edge_change_nothing() {
    // A populated 2 MiB leaf; cutting it needs a table frame the quota does not allow.
    let (mut s, arena, _) = space(8192, 512 + 3);
    s.map_alloc(g(0), 2 * MIB, Access::RW, true).unwrap();
    assert_eq!(s.stats().frames(), 512 + 3);
    let before = snapshot(&s, &arena);
    assert!(matches!(
        s.unmap(g(0x1000), 0x1000),
        Err(SpaceError::OutOfMemory {
            reason: OomReason::Quota { .. },
            ..
        })
    ));
    assert!(matches!(
        s.protect(g(0x1000), 0x1000, Access::READ),
        Err(SpaceError::OutOfMemory { .. })
    ));
    assert_eq!(snapshot(&s, &arena), before);
    // Whole-leaf operations need nothing.
    s.protect(g(0), 2 * MIB, Access::READ).unwrap();
    s.unmap(g(0), 2 * MIB).unwrap();
    assert_eq!(s.stats().frames(), 1);
    s.validate().unwrap();
}

#[test]
fn guest_memory_access_rules() {
    let (mut s, arena, _) = space(4096, 4096);
    s.map_alloc(g(0x1000), 0x3000, Access::RW, false).unwrap();
    s.map_alloc(g(0x4000), 0x1000, Access::READ, false).unwrap();
    // Not yet faulted in: reads as zeros, allocates nothing.
    let mut buf = [0xffu8; 0x2000];
    s.read(g(0x1800), &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(s.stats().ram_frames, 0);
    // A write across pages populates them as the guest would.
    let data: Vec<u8> = (0..0x1800).map(|i| (i % 251) as u8).collect();
    s.write(g(0x1ffc), &data).unwrap();
    assert_eq!(s.stats().ram_frames, 3, "pages 0x1000, 0x2000, 0x3000");
    let mut back = vec![0u8; data.len()];
    s.read(g(0x1ffc), &mut back).unwrap();
    assert_eq!(back, data);
    let before = snapshot(&s, &arena);
    // Unmapped byte at the end: nothing is written.
    assert_eq!(
        s.write(g(0x3ff0), &[1u8; 0x20]),
        Err(SpaceError::PermissionDenied {
            gpa: g(0x4000),
            access: Access::WRITE,
            allowed: Access::READ
        })
    );
    assert_eq!(
        s.write(g(0xff0), &[1u8; 0x20]),
        Err(SpaceError::NotMapped { gpa: g(0xff0) })
    );
    let mut b = [0u8; 0x20];
    assert_eq!(
        s.read(g(0x4ff0), &mut b),
        Err(SpaceError::NotMapped { gpa: g(0x5000) })
    );
    assert_eq!(
        s.read(g(usize::MAX - 4), &mut b),
        Err(SpaceError::InvalidRange {
            start: usize::MAX - 4,
            size: 0x20,
            problem: RangeProblem::Overflow
        })
    );
    assert_eq!(snapshot(&s, &arena), before);
    assert_eq!(
        s.read_obj::<u32>(g(0x3ff0)).unwrap(),
        0,
        "untouched by the failed write"
    );
    // Objects, unaligned, across a page boundary.
    s.write_obj(g(0x2ffd), &[0xabcd_u16, 0x1234, 0x5678])
        .unwrap();
    assert_eq!(
        s.read_obj::<[u16; 3]>(g(0x2ffd)).unwrap(),
        [0xabcd, 0x1234, 0x5678]
    );
    // Empty accesses succeed anywhere.
    s.read(g(1 << 40), &mut []).unwrap();
    // Write into a not-yet-faulted page with the host out of frames: nothing changes.
    s.map_alloc(g(0x10000), 0x4000, Access::RW, false).unwrap();
    let before = snapshot(&s, &arena);
    arena.fail_after(2);
    assert!(matches!(
        s.write(g(0x10000), &[7u8; 0x4000]),
        Err(SpaceError::OutOfMemory { .. })
    ));
    arena.clear_failures();
    assert_eq!(snapshot(&s, &arena), before);
    s.validate().unwrap();
}

#[test]
fn check_region_access_and_find_free_area() {
    let (mut s, _arena, _) = space(4096, 4096);
    s.map_alloc(g(0x1000), 0x2000, Access::RW, false).unwrap();
    s.map_alloc(g(0x3000), 0x1000, Access::RX, false).unwrap();
    s.check_region_access(range(0x1000, 0x3000), Access::READ)
        .unwrap();
    assert_eq!(
        s.check_region_access(range(0x1000, 0x3000), Access::WRITE),
        Err(SpaceError::PermissionDenied {
            gpa: g(0x3000),
            access: Access::WRITE,
            allowed: Access::RX
        })
    );
    assert_eq!(
        s.check_region_access(range(0x800, 0x1000), Access::READ),
        Err(SpaceError::NotMapped { gpa: g(0x800) })
    );
    assert_eq!(
        s.find_free_area(g(0), 0x2000, range(0, 64 * MIB), PAGE_SIZE_4K),
        Ok(g(0x4000))
    );
    assert_eq!(
        s.find_free_area(g(0), 0x2000, range(0, 64 * MIB), PAGE_SIZE_2M),
        Ok(g(2 * MIB))
    );
    assert_eq!(
        s.find_free_area(g(0), 0x1000, range(0x1000, 0x3000), PAGE_SIZE_4K),
        Err(SpaceError::NoFreeArea { size: 0x1000 })
    );
    // The limit is clipped to the window.
    assert_eq!(
        s.find_free_area(g(0), 0x1000, range(64 * MIB, MIB), PAGE_SIZE_4K),
        Err(SpaceError::NoFreeArea { size: 0x1000 })
    );
    assert!(matches!(
        s.find_free_area(g(0), 0x1001, range(0, 64 * MIB), PAGE_SIZE_4K),
        Err(SpaceError::Unaligned { .. })
    ));
}

#[test]
fn clone_shares_copy_on_write() {
    let (mut a, arena, _) = space(8192, 8192);
    a.map_alloc(g(0), 0x4000, Access::RW, true).unwrap();
    a.map_alloc(g(2 * MIB), 2 * MIB, Access::RW, true).unwrap();
    a.map_linear(
        g(8 * MIB),
        HostPhysAddr::new(0xfee0_0000),
        0x1000,
        Access::RW,
        MemType::Uncacheable,
    )
    .unwrap();
    a.write_obj(g(0x10), &1u64).unwrap();
    a.write_obj(g(2 * MIB + 0x10), &2u64).unwrap();
    let in_use = arena.in_use();
    let mut b = a.try_clone().unwrap();
    let child_tables = b.stats().table_frames;
    assert_eq!(arena.in_use(), in_use + child_tables, "no RAM copied");
    assert_eq!(b.stats().ram_frames, a.stats().ram_frames);
    assert_eq!(a.stats().shared_frames, 4 + 512);
    a.validate().unwrap();
    b.validate().unwrap();
    assert_eq!(b.read_obj::<u64>(g(0x10)).unwrap(), 1);
    assert_eq!(
        b.translate(g(8 * MIB)).unwrap().hpa,
        HostPhysAddr::new(0xfee0_0000)
    );
    // Both sides are read-only now; a guest write copies the page.
    assert!(
        !a.translate(g(0))
            .unwrap()
            .attr
            .access
            .contains(Access::WRITE)
    );
    assert_eq!(
        b.handle_fault(perm_fault(0x18, Access::WRITE)),
        Ok(FaultOutcome::CopiedOnWrite)
    );
    b.write_obj(g(0x10), &10u64).unwrap();
    assert_eq!(a.read_obj::<u64>(g(0x10)).unwrap(), 1);
    assert_eq!(b.read_obj::<u64>(g(0x10)).unwrap(), 10);
    // The other side still shares the page's frame count until it writes: only
    // the copy's owner has a new frame.
    assert_eq!(b.stats().cow_copies, 1);
    // The original side writing the same page: count is 1 now, so write access is
    // just restored.
    assert_eq!(
        a.handle_fault(perm_fault(0x18, Access::WRITE)),
        Ok(FaultOutcome::Reprotected)
    );
    // A write into the shared 2 MiB leaf splits it in the writer only.
    b.write_obj(g(2 * MIB + 0x10), &20u64).unwrap();
    assert_eq!(a.read_obj::<u64>(g(2 * MIB + 0x10)).unwrap(), 2);
    assert_eq!(b.read_obj::<u64>(g(2 * MIB + 0x10)).unwrap(), 20);
    assert_eq!(a.translate(g(2 * MIB)).unwrap().size, LeafSize::Size2M);
    assert_eq!(b.translate(g(2 * MIB)).unwrap().size, LeafSize::Size4K);
    a.validate().unwrap();
    b.validate().unwrap();
    // Dropping the parent frees only what it alone held.
    let b_view: Vec<u64> = (0..4)
        .map(|i| b.read_obj::<u64>(g(i * 0x1000)).unwrap())
        .collect();
    drop(a);
    let after: Vec<u64> = (0..4)
        .map(|i| b.read_obj::<u64>(g(i * 0x1000)).unwrap())
        .collect();
    assert_eq!(b_view, after);
    assert_eq!(b.read_obj::<u64>(g(2 * MIB + 0x10)).unwrap(), 20);
    assert_eq!(b.read_obj::<u64>(g(2 * MIB + 0x1010)).unwrap(), 0);
    assert_eq!(arena.in_use(), b.stats().frames());
    // Now unique: a write to the formerly shared block restores write access.
    assert_eq!(
        b.handle_fault(perm_fault(2 * MIB + 0x3000, Access::WRITE)),
        Ok(FaultOutcome::Reprotected)
    );
    drop(b);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn clone_is_transactional() {
    for n in 0..12 {
        let (mut a, arena, _) = space(8192, 8192);
        a.map_alloc(g(0), 0x4000, Access::RW, true).unwrap();
        a.map_alloc(g(32 * MIB), 0x1000, Access::RW, true).unwrap();
        let r = a
            .alloc_region(Some(g(0x10_0000)), 0x3000, Access::RW)
            .unwrap();
        a.write_obj(g(0x10), &5u64).unwrap();
        let before = snapshot(&a, &arena);
        let w_before = a.translate(g(0)).unwrap().attr;
        arena.fail_after(n);
        match a.try_clone() {
            Ok(b) => {
                arena.clear_failures();
                assert_eq!(b.read_obj::<u64>(g(0x10)).unwrap(), 5);
                drop(b);
            }
            Err(e) => {
                assert!(matches!(e, SpaceError::OutOfMemory { .. }), "{e}");
                arena.clear_failures();
                assert_eq!(snapshot(&a, &arena), before, "after {n} allocations");
                assert_eq!(a.translate(g(0)).unwrap().attr, w_before);
                assert_eq!(a.stats().shared_frames, 0);
            }
        }
        a.validate().unwrap();
        drop(r);
        drop(a);
        assert_eq!(arena.in_use(), 0);
    }
    // The clone's tables come out of the family's quota: with 16 populated frames
    // and 4 tables held, a quota of 22 leaves 2 frames, fewer than the clone's 4
    // tables; the parent is untouched.
    let (mut a, arena, _) = space(8192, 22);
    a.map_alloc(g(0), 0x10000, Access::RW, true).unwrap();
    assert_eq!(a.stats().frames(), 20);
    let before = snapshot(&a, &arena);
    assert!(matches!(
        a.try_clone_with(Inv::default()),
        Err(SpaceError::OutOfMemory {
            reason: OomReason::Quota { .. },
            ..
        })
    ));
    assert_eq!(snapshot(&a, &arena), before);
}

#[test]
fn owned_region_lifecycle() {
    let (mut s, arena, _) = space(8192, 8192);
    let mut r = s.alloc_region(None, 0x3000, Access::RW).unwrap();
    assert_eq!(r.size(), 0x3000);
    assert!(matches!(
        s.areas()[0].kind,
        AreaKind::Ram {
            populate: true,
            owned: true
        }
    ));
    // The space refuses to touch it.
    assert_eq!(
        s.unmap(r.start(), 0x1000),
        Err(SpaceError::Owned { gpa: r.start() })
    );
    assert_eq!(
        s.protect(r.start(), 0x1000, Access::READ),
        Err(SpaceError::Owned { gpa: r.start() })
    );
    let mut b = [0u8; 4];
    assert_eq!(
        s.read(r.start(), &mut b),
        Err(SpaceError::Owned { gpa: r.start() })
    );
    // Views.
    r.write_type::<u32>(0x1000, 0xfeed).unwrap();
    r.write_slice::<u16>(0x2000, &[1, 2, 3, 4]).unwrap();
    assert_eq!(r.read_type::<u32>(0x1000).unwrap(), 0xfeed);
    let mut four = [0u16; 4];
    r.read_slice(0x2000, &mut four).unwrap();
    assert_eq!(four, [1, 2, 3, 4]);
    r.read_slice::<u64>(0, &mut []).unwrap();
    assert_eq!(
        r.read_type::<u64>(0x3000).unwrap_err(),
        ViewError::OutOfBounds {
            offset: 0x3000,
            len: 8,
            size: 0x3000
        }
    );
    assert_eq!(
        r.read_type::<u64>(0xffc).unwrap_err(),
        ViewError::CrossesPage {
            offset: 0xffc,
            len: 8
        }
    );
    assert!(matches!(
        r.read_type::<u64>(0x1001).unwrap_err(),
        ViewError::Misaligned { align: 8, .. }
    ));
    assert!(matches!(
        r.read_slice(0x10, &mut [0u64; 0x1000]).unwrap_err(),
        ViewError::OutOfBounds { .. }
    ));
    // Remap read-only: mutable views are refused.
    r.remap(Access::READ).unwrap();
    assert_eq!(
        r.write_type::<u32>(0, 0).unwrap_err(),
        ViewError::NotWritable
    );
    assert!(
        !s.translate(r.start())
            .unwrap()
            .attr
            .access
            .contains(Access::WRITE)
    );
    assert_eq!(r.read_type::<u32>(0x1000).unwrap(), 0xfeed);
    // Deep copy with new rights.
    let mut c = r.deep_copy(Some(Access::RW)).unwrap();
    assert_ne!(c.start(), r.start());
    assert_eq!(c.read_type::<u32>(0x1000).unwrap(), 0xfeed);
    c.write_type::<u32>(0x1000, 1).unwrap();
    assert_eq!(r.read_type::<u32>(0x1000).unwrap(), 0xfeed);
    let frames_with_copy = s.stats().ram_frames;
    drop(c);
    assert_eq!(s.stats().ram_frames, frames_with_copy - 3);
    // Dropping the region unmaps and frees it.
    drop(r);
    assert_eq!(s.stats().ram_frames, 0);
    assert!(s.areas().is_empty());
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn owned_region_split_and_merge() {
    let (mut s, arena, _) = space(8192, 8192);
    let r = s
        .alloc_region(Some(g(2 * MIB)), 2 * MIB, Access::RW)
        .unwrap();
    assert_eq!(s.translate(g(2 * MIB)).unwrap().size, LeafSize::Size2M);
    // Out of bounds and unaligned give the region back.
    let (r, e) = r.split_at(2 * MIB + 0x1000).unwrap_err();
    assert!(matches!(e, SpaceError::InvalidRange { .. }));
    let (r, e) = r.split_at(0x800).unwrap_err();
    assert!(matches!(e, SpaceError::Unaligned { .. }));
    // Either side may be empty.
    let (empty, r) = r.split_at(0).unwrap();
    assert!(empty.is_empty());
    assert_eq!(r.size(), 2 * MIB);
    let (r, empty2) = r.split_at(2 * MIB).unwrap();
    assert!(empty2.is_empty());
    drop((empty, empty2));
    assert_eq!(s.stats().ram_frames, 512);
    // A split in the middle splits the 2 MiB leaf; contents survive.
    let (mut left, mut right) = r.split_at(0x5000).unwrap();
    assert_eq!(left.size(), 0x5000);
    assert_eq!(right.start(), g(2 * MIB + 0x5000));
    assert_eq!(s.translate(g(2 * MIB)).unwrap().size, LeafSize::Size4K);
    assert_eq!(s.areas().len(), 2);
    right.write_type::<u64>(0, 99).unwrap();
    // Merge fails for different rights or non-adjacent regions, returning the other.
    right.remap(Access::READ).unwrap();
    let right = left.merge(right).unwrap_err();
    assert_eq!(right.start(), g(2 * MIB + 0x5000));
    let mut far = s
        .alloc_region(Some(g(8 * MIB)), 0x1000, Access::READ)
        .unwrap();
    let far_back = far_merge(&mut far, right);
    let (mut right, far) = (far_back, far);
    // Same rights and adjacent: merge works in either order.
    right.remap(Access::RW).unwrap();
    right.merge(left).unwrap();
    assert_eq!(right.start(), g(2 * MIB));
    assert_eq!(right.size(), 2 * MIB);
    assert_eq!(right.read_type::<u64>(0x5000).unwrap(), 99);
    // The merged region owns both parts: dropping it frees the whole block.
    drop(right);
    drop(far);
    assert_eq!(s.stats().ram_frames, 0);
    s.validate().unwrap();
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

/// `far` and `right` are not adjacent: the merge fails and hands `right` back.
fn far_merge<F, M, A, I>(
    far: &mut ept::space::OwnedRegion<F, M, A, I>,
    right: ept::space::OwnedRegion<F, M, A, I>,
) -> ept::space::OwnedRegion<F, M, A, I>
where
    F: ept::format::Stage2Format,
    M: ept::frame::PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    let back = far.merge(right).unwrap_err();
    assert_eq!(far.size(), 0x1000);
    back
}

#[test]
fn regions_of_other_spaces_do_not_merge() {
    let (mut s, _arena, _) = space(4096, 4096);
    let (mut t, _arena2, _) = space(4096, 4096);
    let mut a = s.alloc_region(Some(g(0)), 0x1000, Access::RW).unwrap();
    let b = t.alloc_region(Some(g(0x1000)), 0x1000, Access::RW).unwrap();
    let b = a.merge(b).unwrap_err();
    assert_eq!(b.start(), g(0x1000));
}

#[test]
fn clone_copies_owned_regions_privately() {
    let (mut a, arena, _) = space(8192, 8192);
    let mut r = a.alloc_region(Some(g(0)), 0x2000, Access::RW).unwrap();
    r.write_type::<u32>(0, 3).unwrap();
    let mut b = a.try_clone().unwrap();
    assert_eq!(b.read_obj::<u32>(g(0)).unwrap(), 3);
    assert_ne!(
        a.translate(g(0)).unwrap().hpa,
        b.translate(g(0)).unwrap().hpa
    );
    // In the clone it is plain RAM.
    b.write_obj(g(0), &4u32).unwrap();
    assert_eq!(r.read_type::<u32>(0).unwrap(), 3);
    assert!(
        a.translate(g(0))
            .unwrap()
            .attr
            .access
            .contains(Access::WRITE)
    );
    drop(b);
    drop(r);
    drop(a);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn clear_keeps_owned_regions_and_report_prints() {
    let (mut s, arena, _) = space(8192, 8192);
    s.map_alloc(g(0), 0x4000, Access::RW, true).unwrap();
    s.map_alloc(g(4 * MIB), 4 * MIB, Access::RX, false).unwrap();
    s.map_linear(
        g(16 * MIB),
        HostPhysAddr::new(0xfee0_0000),
        0x1000,
        Access::RW,
        MemType::Uncacheable,
    )
    .unwrap();
    let r = s
        .alloc_region(Some(g(32 * MIB)), 0x1000, Access::READ)
        .unwrap();
    s.handle_fault(fault(4 * MIB, Access::EXECUTE)).unwrap();
    let report = s.report().to_string();
    for needle in [
        "stage-2 NPT space",
        "4 area(s)",
        "linear -> 0xfee00000",
        "on demand",
        "owned region",
        "1 x 2M",
        "faults handled: 1",
        "r-x",
    ] {
        assert!(report.contains(needle), "{needle:?} missing in\n{report}");
    }
    assert!(report.lines().count() < 25);
    s.clear().unwrap();
    assert_eq!(s.areas().len(), 1);
    assert_eq!(s.stats().ram_frames, 1);
    drop(r);
    assert_eq!(s.stats().frames(), 1);
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn region_outlives_space_handle() {
    let (mut s, arena, _) = space(4096, 4096);
    let mut r = s.alloc_region(None, 0x1000, Access::RW).unwrap();
    drop(s);
    r.write_type::<u8>(0, 1).unwrap();
    assert!(arena.in_use() > 0);
    drop(r);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn closures_invalidate() {
    let arena = HeapArena::new(64);
    let n = Rc::new(Cell::new(0));
    let n2 = n.clone();
    let mut s = AddressSpace::<Npt, _, _, _>::new(
        g(0),
        MIB,
        Stage2Caps::npt(false),
        arena.clone(),
        arena.clone(),
        move |_: FlushScope| n2.set(n2.get() + 1),
        64,
    )
    .unwrap();
    s.map_alloc(g(0), 0x2000, Access::RW, true).unwrap();
    s.unmap(g(0), 0x1000).unwrap();
    assert!(n.get() >= 1);
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn linear_1g_leaf_split_at_an_unmap_cut() {
    let arena = HeapArena::new(64);
    let mut s: Space = new_space(&arena, 4 << 30, Stage2Caps::all(), Inv::default(), 3);
    let hpa = HostPhysAddr::new(0x80_0000_0000);
    s.map_linear(g(1 << 30), hpa, 1 << 30, Access::RW, MemType::WriteBack)
        .unwrap();
    assert_eq!(s.stats().leaves_1g, 1);
    assert_eq!(s.stats().table_frames, 2);
    // Cutting out a 4 KiB page inside the 1 GiB leaf needs two tables (the 2M and
    // the 4K level; both cuts share them); the quota leaves one: refused, unchanged.
    let before = snapshot(&s, &arena);
    assert!(matches!(
        s.unmap(g((1 << 30) + 0x20_1000), 0x1000),
        Err(SpaceError::OutOfMemory {
            reason: OomReason::Quota { .. },
            ..
        })
    ));
    assert_eq!(snapshot(&s, &arena), before);
    // Cuts on 2 MiB boundaries need only the 2M-level table.
    s.unmap(g((1 << 30) + 0x20_0000), 0x20_0000).unwrap();
    let st = s.stats();
    assert_eq!((st.leaves_1g, st.leaves_2m, st.table_frames), (0, 511, 3));
    assert_eq!(
        s.translate(g((1 << 30) + 0x40_0000 + 0x123)).unwrap().hpa,
        HostPhysAddr::new(0x80_0040_0123)
    );
    assert!(s.translate(g((1 << 30) + 0x30_0000)).is_none());
    assert_eq!(s.areas().len(), 2);
    s.validate().unwrap();
    drop(s);
    // With room for two tables the 4 KiB cut works.
    let mut s: Space = new_space(&arena, 4 << 30, Stage2Caps::all(), Inv::default(), 4);
    s.map_linear(g(1 << 30), hpa, 1 << 30, Access::RW, MemType::WriteBack)
        .unwrap();
    s.unmap(g((1 << 30) + 0x20_1000), 0x1000).unwrap();
    let st = s.stats();
    assert_eq!((st.leaves_2m, st.leaves_4k, st.table_frames), (511, 511, 4));
    drop(s);
    assert_eq!(arena.in_use(), 0);
}
