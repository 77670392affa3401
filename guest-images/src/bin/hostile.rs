//! Scenario `hostile`: feeds the hypervisor malformed hypercall arguments (overflowing,
//! unaligned, empty, beyond the address space, unknown rights) and checks that each is
//! refused with an error while the guest keeps running; the hypervisor must not crash.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::abi::access;
use guest_images::rt::{host_read, leaf_size, protect, read_u64, unmap, write_u64};
use guest_images::{check, println};

const AREA: u64 = 0x100_0000;

fn scenario() {
    write_u64(AREA, 0x1111);
    let cases: [(&str, i64); 10] = [
        (
            "protect overflowing",
            protect(u64::MAX - 0xfff, 0x2000, access::READ),
        ),
        (
            "protect huge size",
            protect(0x1000, !0xfffu64, access::READ),
        ),
        ("protect unaligned", protect(AREA + 8, 0x1000, access::READ)),
        ("protect empty", protect(AREA, 0, access::READ)),
        ("protect no rights", protect(AREA, 0x1000, 0)),
        ("protect write-only", protect(AREA, 0x1000, access::WRITE)),
        ("unmap beyond 4 GiB", unmap(1 << 48, 0x1000)),
        ("unmap empty", unmap(AREA, 0)),
        ("host_read unmapped", host_read(0x2000_0000_0000)),
        ("host_read at the top", host_read(u64::MAX - 3)),
    ];
    for (what, result) in cases {
        check!(result < 0, "{what} was accepted ({result})");
    }
    check!(
        leaf_size(u64::MAX) == 0,
        "leaf at the top of the address space"
    );
    check!(leaf_size(0) == 0, "page 0 is mapped");
    check!(read_u64(AREA) == 0x1111, "memory changed by refused calls");
    write_u64(AREA, 0x2222);
    check!(
        read_u64(AREA) == 0x2222,
        "area no longer writable after refused calls"
    );
    println!("every malformed hypercall was refused");
}

guest_images::guest_main!(scenario);
