//! Tests of [`super::super::SpaceMemory`] against host policy: rights ceilings, the
//! host-read view following the stage-2 mapping, the PROTECT/UNMAP error codes, the
//! default quota, family quotas of clones and host exhaustion.

use super::tests::{ArenaMemory, in_use, memory, read_u64};
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
