//! Scenario `populated`: its RAM and a 2 MiB-aligned area are backed up front
//! (settings `populate area=0x4000000+4M:rwp`), so stage 2 maps them before the guest
//! touches anything: leaves exist already and read as zeros.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{leaf_size, read_u64, write_u64};
use guest_images::{check, println};

const AREA: u64 = 64 << 20;

fn scenario() {
    check!(
        leaf_size(AREA) == 2 << 20,
        "area not populated with a 2 MiB leaf"
    );
    check!(
        leaf_size(AREA + (2 << 20)) == 2 << 20,
        "second half not populated"
    );
    check!(
        leaf_size(0x30_0000) == 2 << 20,
        "RAM above 2 MiB not populated"
    );
    check!(
        leaf_size(0x18_0000) == 4096,
        "low RAM not populated with 4 KiB leaves"
    );
    check!(read_u64(AREA + 0x1000) == 0, "populated memory not zeroed");
    write_u64(AREA + 0x1000, 42);
    check!(read_u64(AREA + 0x1000) == 42, "write lost");
    println!("RAM and area were mapped before the first touch");
}

guest_images::guest_main!(scenario);
