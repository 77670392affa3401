//! Set-up shared by the address-space integration tests.

// Each test crate includes this module and uses part of it.
#![allow(dead_code)]

use ept::caps::Stage2Caps;
use ept::fault::{FaultKind, Stage2Fault};
use ept::format::{Access, Stage2Format};
use ept::frame::HeapArena;
use ept::space::{AddressSpace, Invalidate};
use memory_set::GuestPhysAddr;

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
