//! A model of the guest side of the hardware for dirty-log and snapshot tests: a TLB
//! that caches translations with their write permission and dirty flag, and guest
//! accesses that go through it, walking the table (setting A/D like the MMU) on a
//! miss and raising stage-2 faults that the space serves.
//!
//! The TLB is what makes a missing invalidation visible: a translation cached as
//! writable (write-protect mode) or as already dirty (A/D mode) lets writes through
//! without a fault or a dirty flag, exactly as on the hardware.

// Each test crate includes this module and uses part of it.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use ept::flush::FlushScope;
use ept::format::{Access, Stage2Format};
use ept::frame::{HeapArena, read_phys, write_phys};
use ept::space::{AddressSpace, Invalidate, SpaceError};
use memory_set::{GuestPhysAddr, HostPhysAddr};

/// One cached translation of a 4 KiB page.
#[derive(Clone, Copy, Debug)]
struct Cached {
    hpa: usize,
    writable: bool,
    dirty: bool,
}

/// The TLB of one vCPU.
#[derive(Debug, Default)]
pub struct Tlb {
    entries: HashMap<usize, Cached>,
    /// Invalidations received.
    pub invalidations: usize,
}

impl Tlb {
    fn invalidate(&mut self, scope: FlushScope) {
        self.invalidations += 1;
        match scope {
            FlushScope::All => self.entries.clear(),
            FlushScope::Range(r) => self
                .entries
                .retain(|&p, _| !r.contains(GuestPhysAddr::new(p))),
        }
    }
}

/// A TLB shared with the space's invalidation handle.
#[derive(Clone, Debug, Default)]
pub struct SharedTlb(pub Rc<RefCell<Tlb>>);

impl Invalidate for SharedTlb {
    fn invalidate(&mut self, scope: FlushScope) {
        self.0.borrow_mut().invalidate(scope);
    }
}

/// A space whose invalidations reach a TLB model.
pub type TlbSpace<F> = AddressSpace<F, HeapArena, HeapArena, SharedTlb>;

/// A guest vCPU: the TLB and the memory behind the space.
pub struct Guest {
    pub tlb: SharedTlb,
    pub arena: HeapArena,
    /// Whether the hardware sets dirty flags (else only permissions matter).
    pub accessed_dirty: bool,
}

/// What a guest access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Through a cached translation or a walk, without a fault.
    NoFault,
    /// After the space served one or more faults.
    Faulted,
}

impl Guest {
    /// Writes `byte` at `gpa` as the guest would; a fault the space refuses ends it.
    pub fn write<F: Stage2Format>(
        &self,
        space: &mut TlbSpace<F>,
        gpa: usize,
        byte: u8,
    ) -> Result<Served, SpaceError> {
        let hpa_of = |c: Cached| c.hpa + (gpa & 0xfff);
        let page = gpa & !0xfff;
        let mut served = Served::NoFault;
        for _ in 0..4 {
            let hit = self.tlb.0.borrow().entries.get(&page).copied();
            if let Some(c) = hit {
                if c.writable && (c.dirty || !self.accessed_dirty) {
                    write_phys(&self.arena, HostPhysAddr::new(hpa_of(c)), &[byte]).unwrap();
                    return Ok(served);
                }
                // A write through a read-only or clean cached entry walks again.
                self.tlb.0.borrow_mut().entries.remove(&page);
            }
            match space.guest_access(GuestPhysAddr::new(gpa), Access::WRITE) {
                Ok(t) => {
                    let c = Cached {
                        hpa: t.hpa.as_usize() & !0xfff,
                        writable: true,
                        dirty: true,
                    };
                    self.tlb.0.borrow_mut().entries.insert(page, c);
                    write_phys(&self.arena, HostPhysAddr::new(hpa_of(c)), &[byte]).unwrap();
                    return Ok(served);
                }
                Err(fault) => {
                    space.handle_fault(fault)?;
                    served = Served::Faulted;
                }
            }
        }
        panic!("write at {gpa:#x} still faults after the space served it");
    }

    /// Reads the byte at `gpa` as the guest would (faulting pages in).
    pub fn read<F: Stage2Format>(
        &self,
        space: &mut TlbSpace<F>,
        gpa: usize,
    ) -> Result<u8, SpaceError> {
        let page = gpa & !0xfff;
        for _ in 0..4 {
            let hit = self.tlb.0.borrow().entries.get(&page).copied();
            let c = match hit {
                Some(c) => c,
                None => match space.guest_access(GuestPhysAddr::new(gpa), Access::READ) {
                    Ok(t) => {
                        let c = Cached {
                            hpa: t.hpa.as_usize() & !0xfff,
                            writable: t.attr.access.contains(Access::WRITE),
                            dirty: false,
                        };
                        self.tlb.0.borrow_mut().entries.insert(page, c);
                        c
                    }
                    Err(fault) => {
                        space.handle_fault(fault)?;
                        continue;
                    }
                },
            };
            let mut b = [0u8];
            read_phys(
                &self.arena,
                HostPhysAddr::new(c.hpa + (gpa & 0xfff)),
                &mut b,
            )
            .unwrap();
            return Ok(b[0]);
        }
        panic!("read at {gpa:#x} still faults after the space served it");
    }
}
