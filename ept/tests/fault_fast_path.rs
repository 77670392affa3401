//! The fault fast path (populate without a translation first, the last-area hint)
//! must decide exactly as the general path: these cases make it fall back or see a
//! changed area set.

mod common;

use common::{MIB, caps_4k_only, fault, g, new_space};
use ept::flush::FlushScope;
use ept::format::{Access, Ept};
use ept::frame::HeapArena;
use ept::size::LeafSize;
use ept::space::{AddressSpace, FaultOutcome, OomReason, SpaceError};
use memory_set::PAGE_SIZE_4K;

type Space = AddressSpace<Ept, HeapArena, HeapArena, fn(FlushScope)>;

fn no_flush(_: FlushScope) {}

/// A 64 MiB space at 0 with 4 KiB leaves only (so every fault takes the 4 KiB path).
fn space(frames: usize, quota: usize) -> (Space, HeapArena) {
    let arena = HeapArena::new(frames);
    let s = new_space(
        &arena,
        64 * MIB,
        caps_4k_only(),
        no_flush as fn(FlushScope),
        quota,
    );
    (s, arena)
}

const POPULATED_4K: FaultOutcome = FaultOutcome::Populated {
    size: LeafSize::Size4K,
};

#[test]
fn not_present_fault_on_a_mapped_page_is_spurious_even_at_the_quota() {
    let (mut s, arena) = space(1024, 1024);
    s.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    assert_eq!(
        s.handle_fault(fault(0x5000, Access::WRITE)),
        Ok(POPULATED_4K)
    );
    let hpa = s.translate(g(0x5000)).unwrap().hpa;
    let (frames, in_use) = (s.stats().frames(), arena.in_use());
    // A stale "not present" report for a page that is mapped: nothing is allocated
    // or replaced.
    assert_eq!(
        s.handle_fault(fault(0x5000, Access::WRITE)),
        Ok(FaultOutcome::Spurious)
    );
    assert_eq!(s.translate(g(0x5000)).unwrap().hpa, hpa);
    assert_eq!((s.stats().frames(), arena.in_use()), (frames, in_use));
    drop(s);

    // The same with no frame left under the quota: still spurious, not out of memory.
    let (mut s, arena) = space(1024, 1024);
    s.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    assert_eq!(
        s.handle_fault(fault(0x5000, Access::WRITE)),
        Ok(POPULATED_4K)
    );
    drop(s);
    let used = 4 + 1; // root, PDPT, PD, PT + the page
    let (mut s, _) = space(1024, used);
    s.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    assert_eq!(
        s.handle_fault(fault(0x5000, Access::WRITE)),
        Ok(POPULATED_4K)
    );
    assert_eq!(s.stats().frames(), used);
    assert_eq!(
        s.handle_fault(fault(0x5000, Access::READ)),
        Ok(FaultOutcome::Spurious)
    );
    assert!(matches!(
        s.handle_fault(fault(0x6000, Access::READ)),
        Err(SpaceError::OutOfMemory {
            reason: OomReason::Quota { .. },
            ..
        })
    ));
    assert_eq!(s.stats().frames(), used);
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn area_changes_are_seen_by_the_next_fault() {
    let (mut s, arena) = space(1024, 1024);
    s.map_alloc(g(0), MIB, Access::RW, false).unwrap();
    s.map_alloc(g(2 * MIB), MIB, Access::READ, false).unwrap();
    assert_eq!(
        s.handle_fault(fault(0x1000, Access::WRITE)),
        Ok(POPULATED_4K)
    );
    // Read-only now: a write to another page of the same area is refused.
    s.protect(g(0), MIB, Access::READ).unwrap();
    assert_eq!(
        s.handle_fault(fault(0x2000, Access::WRITE)),
        Err(SpaceError::PermissionDenied {
            gpa: g(0x2000),
            access: Access::WRITE,
            allowed: Access::READ
        })
    );
    assert_eq!(
        s.handle_fault(fault(0x2000, Access::READ)),
        Ok(POPULATED_4K)
    );
    // Another area in between, then the first one gone.
    assert_eq!(
        s.handle_fault(fault(2 * MIB, Access::READ)),
        Ok(POPULATED_4K)
    );
    s.unmap(g(0), MIB).unwrap();
    assert_eq!(
        s.handle_fault(fault(0x3000, Access::READ)),
        Err(SpaceError::NotMapped { gpa: g(0x3000) })
    );
    // A new area where the old one was: faults populate it with its own rights.
    s.map_alloc(g(0), 2 * PAGE_SIZE_4K, Access::RWX, false)
        .unwrap();
    assert_eq!(
        s.handle_fault(fault(0x1000, Access::EXECUTE)),
        Ok(POPULATED_4K)
    );
    assert_eq!(
        s.handle_fault(fault(0x2000, Access::READ)),
        Err(SpaceError::NotMapped { gpa: g(0x2000) })
    );
    assert_eq!(s.translate(g(0x1000)).unwrap().attr.access, Access::RWX);
    s.validate().unwrap();
    assert_eq!(s.stats().faults_handled, 4);
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn missing_tables_come_from_the_quota_and_failures_change_nothing() {
    // root + PDPT + PD + PT + page = 5 frames for the first fault; a fault in another
    // 2 MiB block needs a new PT too (2 frames).
    let (mut s, arena) = space(1024, 6);
    s.map_alloc(g(0), 8 * MIB, Access::RW, false).unwrap();
    assert_eq!(s.handle_fault(fault(0, Access::WRITE)), Ok(POPULATED_4K));
    let before = (s.stats().frames(), arena.in_use(), s.stats().leaves_4k);
    assert!(matches!(
        s.handle_fault(fault(4 * MIB, Access::WRITE)),
        Err(SpaceError::OutOfMemory {
            reason: OomReason::Quota { .. },
            ..
        })
    ));
    assert_eq!(
        (s.stats().frames(), arena.in_use(), s.stats().leaves_4k),
        before
    );
    // The last frame of the quota still serves a page whose table exists.
    assert_eq!(
        s.handle_fault(fault(0x1000, Access::WRITE)),
        Ok(POPULATED_4K)
    );
    assert_eq!(s.stats().frames(), 6);
    s.validate().unwrap();
    drop(s);
    assert_eq!(arena.in_use(), 0);
}
