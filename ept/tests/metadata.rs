//! Bookkeeping a guest can grow (areas, the gap index, entries for shared frames) is
//! bounded by its family's budget and the host pool, and costs at most
//! [`ENTRY_BYTES`] of heap per entry, as the hypervisor's size-class heap would count
//! it (every allocation rounded up to a power of two).
//!
//! A counting global allocator measures the heap; the tests in this file run one at a
//! time (a lock) so that they measure only themselves.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

use common::{MIB, NoFlush, caps_4k_only, fault, g, limited_space};
use ept::caps::Stage2Caps;
use ept::format::{Access, Npt};
use ept::frame::HeapArena;
use ept::space::{AddressSpace, ENTRY_BYTES, Limits, MetadataPool, SpaceError};
use memory_set::PAGE_SIZE_4K;

/// Bytes live on the heap, each allocation rounded up to a power of two (at least 16)
/// like the hypervisor's heap.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static SERIAL: Mutex<()> = Mutex::new(());

struct Counting;

fn class(layout: Layout) -> usize {
    layout
        .size()
        .max(layout.align())
        .max(16)
        .next_power_of_two()
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(class(layout), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(class(layout), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type Space = AddressSpace<Npt, HeapArena, HeapArena, NoFlush>;

fn space(arena: &HeapArena, caps: Stage2Caps, limits: Limits) -> Space {
    limited_space(arena, caps, limits).unwrap()
}

/// Protects every other page of `[0, size)` until `stop` pages are done or the space
/// refuses; returns the number done and the refusal.
fn protect_every_other(s: &mut Space, size: usize, stop: usize) -> (usize, Option<SpaceError>) {
    let mut done = 0;
    for page in (0..size / PAGE_SIZE_4K).step_by(2) {
        if done == stop {
            return (done, None);
        }
        match s.protect(g(page * PAGE_SIZE_4K), PAGE_SIZE_4K, Access::READ) {
            Ok(()) => done += 1,
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

#[test]
fn an_area_costs_at_most_entry_bytes_of_heap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let arena = HeapArena::new(64);
    let mut s = space(&arena, caps_4k_only(), Limits::quota(64).metadata(1 << 20));
    s.map_alloc(g(0), 256 * MIB, Access::RW, false).unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    let (done, refused) = protect_every_other(&mut s, 256 * MIB, 20_000);
    assert_eq!((done, refused), (20_000, None));
    let entries = s.stats().metadata_entries;
    assert!(entries >= 40_000, "{entries}");
    let per_entry = (LIVE.load(Ordering::Relaxed) - before) / entries;
    println!("{per_entry} bytes of heap per area");
    assert!(per_entry <= ENTRY_BYTES, "{per_entry} > {ENTRY_BYTES}");
}

#[test]
fn a_shared_frame_costs_at_most_entry_bytes_of_heap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let frames = 8192;
    let arena = HeapArena::new(frames + 64);
    let mut s = space(
        &arena,
        caps_4k_only(),
        Limits::quota(frames + 64).metadata(1 << 20),
    );
    s.map_alloc(g(0), frames * PAGE_SIZE_4K, Access::RW, false)
        .unwrap();
    for page in 0..frames {
        s.handle_fault(fault(page * PAGE_SIZE_4K, Access::WRITE))
            .unwrap();
    }
    let before = LIVE.load(Ordering::Relaxed);
    let child = s.try_clone().unwrap();
    // Entries: one area in the child, one per shared frame in each space.
    let entries = s.stats().metadata_entries;
    assert_eq!(entries, 2 + 2 * frames);
    let per_entry = (LIVE.load(Ordering::Relaxed) - before) / (entries / 2);
    println!("{per_entry} bytes of heap per shared frame (both spaces)");
    assert!(per_entry <= ENTRY_BYTES, "{per_entry} > {ENTRY_BYTES}");
    drop(child);
    assert_eq!(s.stats().metadata_entries, 1 + frames);
}

#[test]
fn protecting_every_other_page_ends_at_the_budget_with_a_typed_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let arena = HeapArena::new(64);
    let limit = 1000;
    let mut s = space(&arena, Stage2Caps::all(), Limits::quota(64).metadata(limit));
    s.map_alloc(g(0), 256 * MIB, Access::RW, false).unwrap();
    let heap = LIVE.load(Ordering::Relaxed);
    let (done, refused) = protect_every_other(&mut s, 256 * MIB, usize::MAX);
    let Some(SpaceError::OutOfMetadata {
        used,
        limit: l,
        host_pool: false,
    }) = refused
    else {
        panic!("{refused:?}");
    };
    assert_eq!(l, limit);
    assert!(used <= limit && used + 2 > limit, "{used}");
    assert!(done > 400, "{done}");
    let st = s.stats();
    assert!(st.metadata_entries <= limit);
    assert_eq!(st.areas, st.metadata_entries);
    assert!(LIVE.load(Ordering::Relaxed) - heap <= limit * ENTRY_BYTES);
    // The refused protect changed nothing; unmapping still works (it shrinks).
    let areas = st.areas;
    s.unmap(g(0), 64 * MIB).unwrap();
    assert!(s.stats().areas < areas);
    s.validate().unwrap();
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn unmapping_every_other_page_ends_at_the_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let arena = HeapArena::new(64);
    let mut s = space(&arena, Stage2Caps::all(), Limits::quota(64).metadata(500));
    s.map_alloc(g(0), 256 * MIB, Access::RW, false).unwrap();
    let mut refused = None;
    for page in (0..256 * MIB / PAGE_SIZE_4K).step_by(2) {
        if let Err(e) = s.unmap(g(page * PAGE_SIZE_4K), PAGE_SIZE_4K) {
            refused = Some(e);
            break;
        }
    }
    assert!(
        matches!(refused, Some(SpaceError::OutOfMetadata { .. })),
        "{refused:?}"
    );
    assert!(s.stats().metadata_entries <= 500);
}

#[test]
fn clones_of_a_guest_touched_in_4k_pieces_end_at_the_family_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pages = 1024;
    let arena = HeapArena::new(8 * pages);
    let limit = 4 * pages;
    let mut s = space(
        &arena,
        caps_4k_only(),
        Limits::quota(8 * pages).metadata(limit),
    );
    s.map_alloc(g(0), pages * PAGE_SIZE_4K, Access::RW, false)
        .unwrap();
    for page in 0..pages {
        s.handle_fault(fault(page * PAGE_SIZE_4K, Access::WRITE))
            .unwrap();
    }
    let mut family = Vec::new();
    let refused = loop {
        match s.try_clone() {
            Ok(c) => family.push(c),
            Err(e) => break e,
        }
        assert!(family.len() < 10, "never refused");
    };
    assert!(
        matches!(refused, SpaceError::OutOfMetadata { .. }),
        "{refused}"
    );
    // Parent and first clone: 2 x (pages + 1); each further clone: pages + 1.
    assert_eq!(family.len(), 2);
    assert!(s.stats().metadata_entries <= limit);
    // The family holds the parent's frames once, plus each clone's tables.
    let st = s.stats();
    assert!(st.family_frames < pages + 3 * 8, "{st:?}");
    drop(family);
    drop(s);
    assert_eq!(arena.in_use(), 0);
}

#[test]
fn the_host_pool_bounds_all_families_together() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    static POOL: MetadataPool = MetadataPool::new(300);
    let arena = HeapArena::new(256);
    let limits = Limits {
        pool: Some(&POOL),
        ..Limits::quota(64).metadata(200)
    };
    let mut a = space(&arena, Stage2Caps::all(), limits);
    let mut b = space(&arena, Stage2Caps::all(), limits);
    a.map_alloc(g(0), 64 * MIB, Access::RW, false).unwrap();
    b.map_alloc(g(0), 64 * MIB, Access::RW, false).unwrap();
    let (_, refused) = protect_every_other(&mut a, 64 * MIB, usize::MAX);
    assert!(matches!(
        refused,
        Some(SpaceError::OutOfMetadata {
            host_pool: false,
            ..
        })
    ));
    let (_, refused) = protect_every_other(&mut b, 64 * MIB, usize::MAX);
    assert!(
        matches!(
            refused,
            Some(SpaceError::OutOfMetadata {
                host_pool: true,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(POOL.used() <= POOL.limit());
    drop(a);
    drop(b);
    assert_eq!(POOL.used(), 0, "every entry went back to the pool");
}
