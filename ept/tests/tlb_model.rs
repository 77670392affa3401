//! A fake vCPU with a TLB over the real stage-2 table: it caches the translation of
//! every 4 KiB page the guest uses (host page and rights), uses the cached entry for
//! later accesses, and drops entries only when the address space asks for an
//! invalidation (or, as hardware does, when an access faults). An access through a
//! cached entry that no longer matches the table (another frame, or rights the table
//! no longer grants) is a stale use: the test fails.
//!
//! Emulators flush their TLBs far more often than hardware must, so boot tests
//! cannot see a missing invalidation; this model can. Removing any invalidation of
//! the space (the flush token's, a split's, a copy-on-write break's, a clone's
//! write-protect) makes one of these tests fail (see the closing note of issue 10).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

mod common;

use common::{MIB, g};
use ept::caps::Stage2Caps;
use ept::fault::{FaultKind, Stage2Fault};
use ept::flush::FlushScope;
use ept::format::{Access, Npt};
use ept::frame::HeapArena;
use ept::space::{AddressSpace, Invalidate};
use memory_set::{HostPhysAddr, MemoryAddr, PAGE_SIZE_4K};

/// Cached translations of one vCPU: 4 KiB page number -> (host page, rights).
#[derive(Default)]
struct Tlb {
    entries: BTreeMap<usize, (HostPhysAddr, Access)>,
    invalidations: usize,
}

/// The space's invalidation handle: drops what the space asks to drop.
#[derive(Clone, Default)]
struct TlbFlush(Rc<RefCell<Tlb>>);

impl Invalidate for TlbFlush {
    fn invalidate(&mut self, scope: FlushScope) {
        let mut tlb = self.0.borrow_mut();
        tlb.invalidations += 1;
        match scope {
            FlushScope::All => tlb.entries.clear(),
            FlushScope::Range(r) => {
                let first = r.start().as_usize() / PAGE_SIZE_4K;
                let pages = r.size().div_ceil(PAGE_SIZE_4K);
                let keys: Vec<usize> = tlb
                    .entries
                    .range(first..first.saturating_add(pages))
                    .map(|(&k, _)| k)
                    .collect();
                for k in keys {
                    tlb.entries.remove(&k);
                }
            }
        }
    }
}

type Space = AddressSpace<Npt, HeapArena, HeapArena, TlbFlush>;

/// A guest (space + its vCPU's TLB).
struct Guest {
    space: Space,
    tlb: TlbFlush,
}

/// How a guest access ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Done, through this host page.
    Done(HostPhysAddr),
    /// The space refused the access (the guest would end).
    Refused,
}

impl Guest {
    fn new(arena: &HeapArena, caps: Stage2Caps) -> Self {
        let tlb = TlbFlush::default();
        let space = AddressSpace::new(
            g(0),
            64 * MIB,
            caps,
            arena.clone(),
            arena.clone(),
            tlb.clone(),
            4096,
        )
        .unwrap();
        Self { space, tlb }
    }

    fn clone_guest(&self) -> Self {
        self.try_clone_guest().unwrap()
    }

    fn try_clone_guest(&self) -> Option<Self> {
        let tlb = TlbFlush::default();
        let space = self.space.try_clone_with(tlb.clone()).ok()?;
        Some(Self { space, tlb })
    }

    /// One guest access at `gpa`, as the hardware does it: through a cached entry
    /// when one allows the access (checked against the table: a mismatch panics),
    /// else a table walk, caching the result, with a stage-2 fault when the table
    /// does not allow it.
    #[track_caller]
    fn access(&mut self, gpa: usize, access: Access) -> Outcome {
        let page = gpa / PAGE_SIZE_4K;
        for _ in 0..4 {
            let cached = self.tlb.0.borrow().entries.get(&page).copied();
            if let Some((hpa, rights)) = cached {
                if rights.contains(access) {
                    let now = self.space.translate(g(gpa));
                    let fresh = now.is_some_and(|t| {
                        t.hpa.align_down(PAGE_SIZE_4K) == hpa && t.attr.access.contains(access)
                    });
                    assert!(
                        fresh,
                        "stale TLB entry used: {access:?} at {gpa:#x} through {hpa:#x} \
                         ({rights:?}); the table says {now:?}"
                    );
                    return Outcome::Done(hpa);
                }
                // A fault drops the entry that caused it.
                self.tlb.0.borrow_mut().entries.remove(&page);
            }
            match self.space.translate(g(gpa)) {
                Some(t) if t.attr.access.contains(access) => {
                    let hpa = t.hpa.align_down(PAGE_SIZE_4K);
                    self.tlb
                        .0
                        .borrow_mut()
                        .entries
                        .insert(page, (hpa, t.attr.access));
                    return Outcome::Done(hpa);
                }
                present => {
                    let fault = Stage2Fault {
                        gpa: g(gpa),
                        access,
                        kind: if present.is_some() {
                            FaultKind::Permission
                        } else {
                            FaultKind::NotPresent
                        },
                        in_guest_walk: false,
                    };
                    if self.space.handle_fault(fault).is_err() {
                        return Outcome::Refused;
                    }
                }
            }
        }
        panic!("the access at {gpa:#x} kept faulting");
    }

    fn write(&mut self, gpa: usize) -> Outcome {
        self.access(gpa, Access::WRITE)
    }

    fn read(&mut self, gpa: usize) -> Outcome {
        self.access(gpa, Access::READ)
    }
}

const RAM: usize = 8 * MIB;

fn guest(arena: &HeapArena) -> Guest {
    guest_with(arena, Stage2Caps::all())
}

fn guest_with(arena: &HeapArena, caps: Stage2Caps) -> Guest {
    let mut gu = Guest::new(arena, caps);
    gu.space.map_alloc(g(0), RAM, Access::RWX, false).unwrap();
    gu
}

#[test]
fn protect_drops_cached_write_rights() {
    let arena = HeapArena::new(4096);
    let mut gu = guest(&arena);
    // 4 KiB pages and a 2 MiB leaf, both cached writable.
    for at in [0x1000, 2 * MIB + 0x3000] {
        assert!(matches!(gu.write(at), Outcome::Done(_)));
        gu.space
            .protect(g(at & !0xfff), PAGE_SIZE_4K, Access::READ)
            .unwrap();
        assert_eq!(gu.write(at), Outcome::Refused);
        assert!(matches!(gu.read(at), Outcome::Done(_)));
    }
    // Execute rights too.
    assert!(matches!(
        gu.access(0x5000, Access::EXECUTE),
        Outcome::Done(_)
    ));
    gu.space
        .protect(g(0x5000), PAGE_SIZE_4K, Access::RW)
        .unwrap();
    assert_eq!(gu.access(0x5000, Access::EXECUTE), Outcome::Refused);
}

#[test]
fn unmap_drops_cached_translations_before_the_frames_are_reused() {
    let arena = HeapArena::new(4096);
    // 4 KiB leaves only: no split invalidates on the unmap's behalf.
    let mut gu = guest_with(&arena, common::caps_4k_only());
    for at in [0x7000, 4 * MIB + 0x1000] {
        assert!(matches!(gu.read(at), Outcome::Done(_)));
        gu.space.unmap(g(at & !0xfff), PAGE_SIZE_4K).unwrap();
        assert_eq!(gu.read(at), Outcome::Refused);
        // Mapped again: a new frame, never the stale one.
        gu.space
            .map_alloc(g(at & !0xfff), PAGE_SIZE_4K, Access::RW, false)
            .unwrap();
        assert!(matches!(gu.write(at), Outcome::Done(_)));
    }
}

#[test]
fn clone_write_protects_the_parent_in_its_tlb_too() {
    let arena = HeapArena::new(4096);
    let mut parent = guest(&arena);
    for at in [0x2000, 2 * MIB] {
        assert!(matches!(parent.write(at), Outcome::Done(_)));
    }
    let mut child = parent.clone_guest();
    // The parent's cached writable entries must be gone: its next write copies.
    let Outcome::Done(p) = parent.write(0x2000) else {
        panic!()
    };
    let Outcome::Done(c) = child.read(0x2000) else {
        panic!()
    };
    assert_ne!(
        p, c,
        "the parent wrote into the frame it shares with the child"
    );
    let Outcome::Done(p) = parent.write(2 * MIB + 0x1000) else {
        panic!()
    };
    let Outcome::Done(c) = child.read(2 * MIB + 0x1000) else {
        panic!()
    };
    assert_ne!(p, c);
}

#[test]
fn copy_on_write_breaks_drop_the_old_translation() {
    let arena = HeapArena::new(4096);
    let mut parent = guest(&arena);
    parent.write(0x3000);
    parent.write(2 * MIB + 0x4000);
    let mut child = parent.clone_guest();
    for at in [0x3000, 2 * MIB + 0x4000] {
        // The child caches the shared frame for reading, then writes: a copy.
        let Outcome::Done(shared) = child.read(at) else {
            panic!()
        };
        let Outcome::Done(own) = child.write(at) else {
            panic!()
        };
        assert_ne!(shared, own);
        // Reads must now go to the copy, not the cached shared frame.
        assert_eq!(child.read(at), Outcome::Done(own));
        // The parent writes too (through a copy of its own, or in place once it
        // alone holds the frame): the child still reads its copy.
        assert!(matches!(parent.write(at), Outcome::Done(_)));
        assert_eq!(child.read(at), Outcome::Done(own));
    }
    // Neighbours in the split 2 MiB leaf stay readable through fresh entries.
    assert!(matches!(child.read(2 * MIB + 0x5000), Outcome::Done(_)));
}

#[test]
fn huge_leaf_splits_and_protects_leave_no_stale_entry() {
    let arena = HeapArena::new(4096);
    let mut gu = guest(&arena);
    // Cache every page of a 2 MiB leaf, then cut it up in several ways.
    gu.write(2 * MIB);
    for p in 0..512 {
        gu.write(2 * MIB + p * PAGE_SIZE_4K);
    }
    gu.space
        .protect(g(2 * MIB + 0x10_0000), 0x1000, Access::READ)
        .unwrap();
    gu.space.unmap(g(2 * MIB + 0x8000), 0x2000).unwrap();
    for p in 0..512 {
        let at = 2 * MIB + p * PAGE_SIZE_4K;
        let expected_refused = at == 2 * MIB + 0x10_0000 || (0x8000..0xa000).contains(&(p * 4096));
        assert_eq!(
            gu.write(at) == Outcome::Refused,
            expected_refused,
            "page {at:#x}"
        );
    }
}

/// A long pseudo-random run of guest accesses and space operations over a parent
/// and its clones: every access is checked against the table.
#[test]
fn random_operations_never_use_a_stale_entry() {
    let arena = HeapArena::new(8192);
    let mut guests = vec![guest(&arena)];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let rights = [Access::READ, Access::RW, Access::RX, Access::RWX];
    for _ in 0..4000 {
        let i = next(guests.len());
        let page = next(RAM / PAGE_SIZE_4K);
        let at = page * PAGE_SIZE_4K + next(PAGE_SIZE_4K / 8) * 8;
        match next(20) {
            0..=11 => {
                let access = [Access::READ, Access::WRITE, Access::EXECUTE][next(3)];
                guests[i].access(at, access);
            }
            12..=13 => {
                let pages = 1 + next(600);
                let _ = guests[i].space.protect(
                    g(page * PAGE_SIZE_4K),
                    (pages * PAGE_SIZE_4K).min(RAM - page * PAGE_SIZE_4K),
                    rights[next(4)],
                );
            }
            14 => {
                let pages = 1 + next(8);
                let _ = guests[i].space.unmap(
                    g(page * PAGE_SIZE_4K),
                    (pages * PAGE_SIZE_4K).min(RAM - page * PAGE_SIZE_4K),
                );
            }
            15..=16 => {
                // Remap what is missing around the page.
                let base = page & !7;
                for p in base..base + 8 {
                    let _ = guests[i].space.map_alloc(
                        g(p * PAGE_SIZE_4K),
                        PAGE_SIZE_4K,
                        rights[next(4)],
                        false,
                    );
                }
            }
            17 if guests.len() < 4 => {
                if let Some(c) = guests[i].try_clone_guest() {
                    guests.push(c);
                }
            }
            18 if guests.len() > 1 => {
                guests.remove(i);
            }
            _ => {
                let _ = guests[i].space.write(g(at), &[1, 2, 3]);
            }
        }
    }
    assert!(guests[0].tlb.0.borrow().invalidations > 0);
    drop(guests);
    assert_eq!(arena.in_use(), 0);
}
