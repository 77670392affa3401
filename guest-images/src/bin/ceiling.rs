//! Scenario `ceiling`: the rights the host configured are the most a guest may get.
//! PROTECT must refuse (`Denied`) making the `ro=` area writable or executable, the
//! `nx=` area executable and the device window executable; lowering rights and
//! raising them back is fine. PROTECT and UNMAP of a range with nothing mapped are
//! `NotMapped`; HOST_READ of a window page the guest unmapped is `NotMapped` (the
//! hypervisor's view follows the guest's stage-2 mapping). At the end the guest
//! writes its `ro=` area, which must still end it (`fault:write@0x1000000`).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::abi::{HypercallStatus, access};
use guest_images::rt::{host_read, protect, read_u64, unmap, write_u64};
use guest_images::{check, println};

/// `ro=0x1000000+64K`, `nx=0x1100000+64K`, `mmio=0x2000000+64K`.
const RO: u64 = 0x100_0000;
const NX: u64 = 0x110_0000;
const MMIO: u64 = 0x200_0000;
/// Where nothing is mapped.
const HOLE: u64 = 0x3000_0000;

const DENIED: i64 = HypercallStatus::Denied as i64;
const NOT_MAPPED: i64 = HypercallStatus::NotMapped as i64;
const RWX: u64 = access::READ | access::WRITE | access::EXECUTE;

fn scenario() {
    let refused: [(&str, u64, u64, i64); 6] = [
        (
            "ro= made writable",
            RO,
            access::READ | access::WRITE,
            DENIED,
        ),
        (
            "ro= made executable",
            RO,
            access::READ | access::EXECUTE,
            DENIED,
        ),
        ("nx= made executable", NX, RWX, DENIED),
        ("window made executable", MMIO, RWX, DENIED),
        ("protect of nothing", HOLE, access::READ, NOT_MAPPED),
        ("protect beyond 4 GiB", 1 << 40, access::READ, NOT_MAPPED),
    ];
    for (what, gpa, rights, want) in refused {
        let got = protect(gpa, 0x1000, rights);
        check!(got == want, "{what}: {got}, not {want}");
    }
    check!(unmap(HOLE, 0x1000) == NOT_MAPPED, "unmap of nothing");
    // Down and back up to the ceiling: allowed.
    check!(protect(NX, 0x1000, access::READ) == 0, "nx= read-only");
    check!(
        protect(NX, 0x1000, access::READ | access::WRITE) == 0,
        "nx= back to read-write"
    );
    check!(protect(RO, 0x1000, access::READ) == 0, "ro= unchanged");
    // The hypervisor's view of a window follows the mapping.
    check!(
        read_u64(MMIO + 0x1000) == host_read(MMIO + 0x1000) as u64,
        "host view"
    );
    check!(unmap(MMIO + 0x1000, 0x1000) == 0, "unmap of a window page");
    let got = host_read(MMIO + 0x1000);
    check!(
        got == NOT_MAPPED,
        "host read of an unmapped window page: {got:#x}"
    );
    check!(host_read(MMIO) > 0, "the rest of the window reads");
    println!("every right above the host's was refused; writing the ro= area");
    write_u64(RO, 1);
    println!("FAIL: the ro= area took a write");
}

guest_images::guest_main!(scenario);
