//! Scenario `readonly`: reads a read-only area (settings `ro=0x1000000+64K`), which
//! works and gives zeros, then writes to it: the hypervisor must end the guest with a
//! write fault at exactly that address (`expect=fault:write@0x1000000`).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{read_u64, write_u64};
use guest_images::{check, println};

const AREA: u64 = 0x100_0000;

fn scenario() {
    check!(read_u64(AREA) == 0, "read-only area not zero");
    check!(read_u64(AREA + 0x8000) == 0, "read-only area not zero");
    println!("read-only area readable; now writing to it");
    write_u64(AREA, 1);
    check!(false, "the write to a read-only area succeeded");
}

guest_images::guest_main!(scenario);
