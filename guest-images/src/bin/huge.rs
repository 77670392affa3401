//! Scenario `huge`: touches a 2 MiB-aligned, 4 MiB area (settings `area=...:rw`) and
//! asks the hypervisor which leaf size maps it: both halves must be 2 MiB leaves.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{leaf_size, read_u64, write_u64};
use guest_images::{check, println};

const AREA: u64 = 64 << 20;
const TWO_MIB: u64 = 2 << 20;

fn scenario() {
    for half in 0..2 {
        let base = AREA + half * TWO_MIB;
        write_u64(base + 0x1234 * 8, base);
        let size = leaf_size(base);
        check!(
            size == TWO_MIB,
            "{base:#x} is mapped by a {size:#x}-byte leaf, not 2 MiB"
        );
        check!(
            leaf_size(base + TWO_MIB - 4096) == TWO_MIB,
            "end of {base:#x} not in the leaf"
        );
    }
    for half in 0..2 {
        let base = AREA + half * TWO_MIB;
        check!(
            read_u64(base + 0x1234 * 8) == base,
            "{base:#x} lost its value"
        );
        check!(read_u64(base + 8) == 0, "{base:#x} not zero-filled");
    }
    println!("4 MiB area mapped with two 2 MiB leaves");
}

guest_images::guest_main!(scenario);
