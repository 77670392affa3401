//! Scenario `outofrange`: reads a GPA that no area covers: the hypervisor must end the
//! guest with an unmapped fault there (`expect=fault:unmapped@0x3000000`).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::read_u64;
use guest_images::{check, println};

fn scenario() {
    println!("reading 0x3000000, outside every area");
    let v = read_u64(0x300_0000);
    check!(false, "read {v:#x} from an unmapped address");
}

guest_images::guest_main!(scenario);
