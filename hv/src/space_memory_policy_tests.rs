//! Tests of [`super::super::SpaceMemory`] against host policy: rights ceilings, the
//! host-read view following the stage-2 mapping, the PROTECT/UNMAP error codes, the
//! default quota, family quotas of clones and host exhaustion.

use super::tests::{ArenaMemory, Mem, in_use, memory, read_u64};
use super::*;
use crate::settings::{default_quota_frames, parse_guest_cmdline};
use crate::vm::status_or_end;
use hv_abi::HypercallStatus;

fn status(e: MemoryError) -> HypercallStatus {
    status_or_end(e).expect("a status, not the guest's end")
}

#[test]
fn host_rights_are_a_ceiling_for_protect() {
    let mut m = memory("t.bin mem=8M ro=0x1000000+64K nx=0x1100000+64K mmio=0x2000000+64K");
    // ro= is read-only: never writable.
    let e = m.protect(0x100_0000, 0x1000, Access::RW).unwrap_err();
    assert_eq!((e.kind, e.gpa), (FaultKind::Write, Some(0x100_0000)));
    assert_eq!(status(e), HypercallStatus::Denied);
    // nx= is never executable; the device window neither.
    for at in [0x110_0000, 0x200_0000] {
        let e = m.protect(at, 0x1000, Access::RWX).unwrap_err();
        assert_eq!(e.kind, FaultKind::Exec, "{e:?}");
        assert!(e.detail.contains("exceed"), "{}", e.detail);
    }
    // A range that touches a ceiling anywhere is refused whole; nothing changed.
    let e = m.protect(0x10_0000, 0x100_0000, Access::RWX).unwrap_err();
    assert_eq!((e.kind, e.gpa), (FaultKind::Exec, Some(0x100_0000)));
    m.write(0x10_0000, &[1]).unwrap();
    // Lowering and raising back up to the ceiling is fine.
    m.protect(0x200_0000, 0x1000, Access::READ).unwrap();
    m.protect(0x200_0000, 0x1000, Access::RW).unwrap();
    m.protect(0x10_0000, 0x1000, Access::READ).unwrap();
    m.protect(0x10_0000, 0x1000, Access::RWX).unwrap();
    // A clone inherits the ceilings.
    let mut c = m.try_clone(FlushRequest::new()).unwrap();
    assert_eq!(
        c.protect(0x100_0000, 0x1000, Access::RW).unwrap_err().kind,
        FaultKind::Write
    );
    assert!(m.report().ends_with("validator: OK"));
    drop((m, c));
    assert_eq!(in_use(), 0);
}

#[test]
fn host_reads_of_a_window_follow_the_stage2_mapping() {
    let mut m = memory("t.bin mem=8M mmio=0x2000000+64K");
    assert_eq!(read_u64(&mut m, 0x200_1000), Ok(mmio_pattern(0x1000)));
    // Read-only for the guest: the host's view may read, not write.
    m.protect(0x200_1000, 0x1000, Access::READ).unwrap();
    assert_eq!(read_u64(&mut m, 0x200_1000), Ok(mmio_pattern(0x1000)));
    let e = m.write(0x200_1000, &[0]).unwrap_err();
    assert_eq!(e.kind, FaultKind::Write);
    assert_eq!(status(e), HypercallStatus::Denied);
    // Unmapped by the guest: the host buffer is still there, the view is gone.
    m.unmap(0x200_1000, 0x1000).unwrap();
    let e = read_u64(&mut m, 0x200_1000).unwrap_err();
    assert_eq!((e.kind, e.gpa), (FaultKind::Unmapped, Some(0x200_1000)));
    assert_eq!(status(e), HypercallStatus::NotMapped);
    // The rest of the window still reads.
    assert_eq!(read_u64(&mut m, 0x200_2000), Ok(mmio_pattern(0x2000)));
    drop(m);
    assert_eq!(in_use(), 0);
}

#[test]
fn protect_and_unmap_return_the_documented_codes() {
    let mut m = memory("t.bin mem=8M");
    // Nothing mapped in the range.
    for r in [
        m.protect(0x100_0000, 0x1000, Access::READ),
        m.unmap(0x100_0000, 0x1000),
    ] {
        assert_eq!(status(r.unwrap_err()), HypercallStatus::NotMapped);
    }
    // Beyond the guest's space.
    for r in [
        m.protect(GPA_LIMIT, 0x1000, Access::READ),
        m.unmap(GPA_LIMIT - 0x1000, 0x2000),
    ] {
        assert_eq!(status(r.unwrap_err()), HypercallStatus::NotMapped);
    }
    // Malformed.
    for r in [
        m.protect(0x10_0001, 0x1000, Access::READ),
        m.unmap(0x10_0000, 0),
        m.unmap(!0xfff, 0x2000),
        m.protect(0x10_0000, 0x1000, Access::WRITE),
    ] {
        assert_eq!(status(r.unwrap_err()), HypercallStatus::InvalidArgument);
    }
    // A range with holes and areas: fine.
    m.unmap(0x70_0000, 0x20_0000).unwrap();
    m.protect(0x60_0000, 0x40_0000, Access::READ).unwrap();
    // A protect that changes nothing succeeds (and needs no frame).
    m.protect(0x60_0000, 0x10_0000, Access::READ).unwrap();
    drop(m);
    assert_eq!(in_use(), 0);
}

#[test]
fn the_default_quota_is_the_guests_ram_plus_tables_within_half_the_host() {
    let s = parse_guest_cmdline("t.bin mem=8M area=0x1000000+4M:rw mmio=0x2000000+64K").unwrap();
    let ram = (12 << 20) / 4096;
    assert_eq!(default_quota_frames(&s, 1 << 20), ram + ram / 256 + 16);
    assert_eq!(default_quota_frames(&s, 1000), 500);
    // A guest that sets none cannot take what another needs.
    let m = memory("t.bin mem=64M");
    let quota = m.space.stats().quota_frames;
    assert_eq!(quota, ArenaMemory::total_frames() / 2);
}

#[test]
fn clones_share_their_parents_quota() {
    // 64 KiB of RAM touched, a quota a little above what the parent holds.
    let mut m = memory("t.bin mem=4M quota=140K");
    for p in 0..16u64 {
        m.write(0x10_0000 + p * 4096, &[1]).unwrap();
    }
    let held = m.space.stats().family_frames;
    let mut c = m.try_clone(FlushRequest::new()).unwrap();
    assert_eq!(m.space.stats().quota_frames, 35);
    // The child's copy-on-write copies come out of the same 40 frames.
    let mut copied = 0;
    let e = loop {
        match c.write(0x10_0000 + copied * 4096, &[2]) {
            Ok(()) => copied += 1,
            Err(e) => break e,
        }
        assert!(copied < 16, "the clone took a quota of its own");
    };
    assert_eq!(e.kind, FaultKind::Quota);
    assert!(c.space.stats().family_frames <= 35);
    assert!(
        copied as usize <= 35 - held,
        "{copied} copies, parent held {held}"
    );
    drop((m, c));
    assert_eq!(in_use(), 0);
}

#[test]
fn the_guest_that_asks_when_the_host_is_out_ends_with_the_hosts_reason() {
    let m = memory("t.bin mem=4M");
    // Take every frame the arena has left, as another guest would.
    let mut alloc = ArenaMemory::alloc();
    let mut taken = Vec::new();
    while let Some(f) = alloc.alloc_frame() {
        taken.push(f);
    }
    let mut m = m;
    let e = m.write(0x10_0000, &[1]).unwrap_err();
    assert_eq!(e.kind, FaultKind::HostMemory, "{e:?}");
    assert!(
        e.detail.contains("host frame allocator exhausted"),
        "{}",
        e.detail
    );
    assert!(status_or_end(e).is_err(), "the guest ends");
    for f in taken {
        alloc.dealloc_frame(f);
    }
    drop(m);
    assert_eq!(in_use(), 0);
}

/// A fake vCPU over a [`SpaceMemory`]: caches the translation of every page it uses
/// and drops its cache only when the memory's [`FlushRequest`] is pending at the next
/// guest entry (what the SVM and VMX back-ends turn into TLB_CONTROL / INVEPT). An
/// access through a cached entry the table no longer backs fails the test.
struct FakeVcpu {
    flush: FlushRequest,
    tlb: alloc::collections::BTreeMap<u64, (HostPhysAddr, Access)>,
}

impl FakeVcpu {
    /// One guest access after an entry; `false` when the memory refused it.
    fn access(&mut self, m: &mut Mem, at: u64, access: Access) -> bool {
        for _ in 0..3 {
            if self.flush.take() {
                self.tlb.clear();
            }
            let page = at & !0xfff;
            let now = m.space.translate(gpa(at));
            if let Some(&(hpa, rights)) = self.tlb.get(&page) {
                if rights.contains(access) {
                    assert!(
                        now.is_some_and(|t| usize::from(t.hpa) & !0xfff == usize::from(hpa)
                            && t.attr.access.contains(access)),
                        "stale TLB entry used at {at:#x}: {hpa:#x} {rights:?}, table {now:?}"
                    );
                    return true;
                }
                self.tlb.remove(&page);
            }
            match now {
                Some(t) if t.attr.access.contains(access) => {
                    let hpa = HostPhysAddr::from(usize::from(t.hpa) & !0xfff);
                    self.tlb.insert(page, (hpa, t.attr.access));
                    return true;
                }
                present => {
                    let fault = Stage2Fault {
                        gpa: gpa(at),
                        access,
                        kind: if present.is_some() {
                            ept::fault::FaultKind::Permission
                        } else {
                            ept::fault::FaultKind::NotPresent
                        },
                        in_guest_walk: false,
                    };
                    if m.handle_fault(fault).is_err() {
                        return false;
                    }
                }
            }
        }
        panic!("the access at {at:#x} kept faulting");
    }
}

#[test]
fn the_flush_request_reaches_a_vcpu_before_its_next_entry() {
    let flush = FlushRequest::new();
    let settings = parse_guest_cmdline("t.bin mem=8M").unwrap();
    let mut m = Mem::create(&settings, Stage2Caps::npt(false), flush.clone()).unwrap();
    let mut cpu = FakeVcpu {
        flush,
        tlb: Default::default(),
    };
    // Protect: a cached writable entry must not outlive it.
    assert!(cpu.access(&mut m, 0x5000, Access::WRITE));
    m.protect(0x5000, 0x1000, Access::READ).unwrap();
    assert!(!cpu.access(&mut m, 0x5000, Access::WRITE));
    // Unmap, in a 2 MiB leaf and a 4 KiB one.
    for at in [0x30_0000, 0x7000] {
        assert!(cpu.access(&mut m, at, Access::READ));
        m.unmap(at, 0x1000).unwrap();
        assert!(!cpu.access(&mut m, at, Access::READ));
    }
    // A clone write-protects the parent: its next write copies.
    assert!(cpu.access(&mut m, 0x9000, Access::WRITE));
    let child_flush = FlushRequest::new();
    let mut child = m.try_clone(child_flush.clone()).unwrap();
    let before = m.space.translate(gpa(0x9000)).unwrap().hpa;
    assert!(cpu.access(&mut m, 0x9000, Access::WRITE));
    assert_ne!(m.space.translate(gpa(0x9000)).unwrap().hpa, before);
    let mut child_cpu = FakeVcpu {
        flush: child_flush,
        tlb: Default::default(),
    };
    assert!(child_cpu.access(&mut child, 0x9000, Access::WRITE));
    drop((m, child));
    assert_eq!(in_use(), 0);
}

#[test]
fn clones_of_an_untouched_guest_are_bounded_by_the_family_budget() {
    // Clones that touch nothing cost no frames worth the name, but each keeps a VM
    // and a vCPU on the heap: their charge ends the family at its budget.
    let mut m = memory("t.bin mem=4M");
    let limit = super::metadata_entries(1044, &super::tests::TEST_POOL);
    let mut family = Vec::new();
    let e = loop {
        match m.try_clone(FlushRequest::new()) {
            Ok(c) => family.push(c),
            Err(e) => break e,
        }
        assert!(family.len() < 1000, "never refused");
    };
    assert_eq!(e.kind, FaultKind::Metadata, "{e:?}");
    assert!(status_or_end(e).is_err(), "the guest that clones ends");
    // Each member: its VM's charge plus its areas.
    assert!((family.len() + 1) * super::VM_HEAP_ENTRIES <= limit);
    assert!(family.len() + 2 > limit / (super::VM_HEAP_ENTRIES + 2));
    drop((m, family));
    assert_eq!(in_use(), 0);
}
