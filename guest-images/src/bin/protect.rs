//! Scenario `protect`: writes to its RAM area, asks the hypervisor to make one page
//! read-only, reads it (the old value), then writes it again: the write must fault at
//! exactly that page (`expect=fault:write@0x1001000`). A hypervisor that forgets to
//! flush the stale writable translation lets the write through where TLBs are tagged
//! by ASID (hardware, KVM; QEMU's TCG flushes on every world switch anyway).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::abi::access;
use guest_images::rt::{protect, read_u64, write_u64};
use guest_images::{check, println};

const AREA: u64 = 0x100_0000;

fn scenario() {
    write_u64(AREA, 1);
    write_u64(AREA + 0x1000, 2);
    check!(read_u64(AREA + 0x1000) == 2, "write lost");
    let r = protect(AREA + 0x1000, 0x1000, access::READ);
    check!(r == 0, "protect failed: {r}");
    check!(
        protect(AREA + 1, 0x1000, access::READ) < 0,
        "unaligned protect accepted"
    );
    check!(protect(AREA, 0x1000, 8) < 0, "unknown rights accepted");
    check!(read_u64(AREA + 0x1000) == 2, "value lost by protect");
    write_u64(AREA, 3);
    check!(read_u64(AREA) == 3, "neighbour page no longer writable");
    println!("page 0x1001000 is read-only now; writing it");
    write_u64(AREA + 0x1000, 4);
    check!(
        false,
        "write to a page made read-only succeeded (missing TLB flush?)"
    );
}

guest_images::guest_main!(scenario);
