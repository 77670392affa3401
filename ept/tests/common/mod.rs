//! Set-up shared by the address-space integration tests.

// Each test crate includes this module and uses part of it.
#![allow(dead_code)]

use ept::caps::Stage2Caps;
use ept::fault::{FaultKind, Stage2Fault};
use ept::flush::FlushScope;
use ept::format::{Access, Stage2Format};
use ept::frame::HeapArena;
use ept::space::{AddressSpace, Invalidate, Limits, SpaceError};
use memory_set::GuestPhysAddr;

/// Proptest cases per test: `PROPTEST_CASES` from the environment, else `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// The guest-physical address `a`.
pub fn g(a: usize) -> GuestPhysAddr {
    GuestPhysAddr::new(a)
}

/// Every capability but 2 MiB and 1 GiB leaves: every fault takes the 4 KiB path.
pub fn caps_4k_only() -> Stage2Caps {
    Stage2Caps {
        leaf_2m: false,
        leaf_1g: false,
        ..Stage2Caps::all()
    }
}

/// A space over the window `[0, size)` whose tables and frames come from `arena`.
pub fn new_space<F: Stage2Format, I: Invalidate>(
    arena: &HeapArena,
    size: usize,
    caps: Stage2Caps,
    invalidate: I,
    quota: usize,
) -> AddressSpace<F, HeapArena, HeapArena, I> {
    AddressSpace::new(
        g(0),
        size,
        caps,
        arena.clone(),
        arena.clone(),
        invalidate,
        quota,
    )
    .unwrap()
}

/// A not-present fault at `gpa` for `access`, outside a guest page walk.
pub fn fault(gpa: usize, access: Access) -> Stage2Fault {
    Stage2Fault {
        gpa: g(gpa),
        access,
        kind: FaultKind::NotPresent,
        in_guest_walk: false,
    }
}

/// An invalidation that does nothing (for tests that do not look at flushes).
pub type NoFlush = fn(FlushScope);

/// The [`NoFlush`] function.
pub fn no_flush(_: FlushScope) {}

/// A 1 GiB space at 0 whose frames come from `arena`, with `limits`, flushing
/// nothing.
pub fn limited_space<F: Stage2Format>(
    arena: &HeapArena,
    caps: Stage2Caps,
    limits: Limits,
) -> Result<AddressSpace<F, HeapArena, HeapArena, NoFlush>, SpaceError> {
    AddressSpace::with_limits(
        g(0),
        1 << 30,
        caps,
        arena.clone(),
        arena.clone(),
        no_flush as NoFlush,
        limits,
    )
}

/// Everything observable that a refused operation must not change: arena frames,
/// RAM and table frames, areas.
pub fn snapshot<F: Stage2Format, I: Invalidate>(
    s: &AddressSpace<F, HeapArena, HeapArena, I>,
    arena: &HeapArena,
) -> (usize, usize, usize, String) {
    let st = s.stats();
    (
        arena.in_use(),
        st.ram_frames,
        st.table_frames,
        format!("{:?}", s.areas()),
    )
}
