//! Scenario `portio`: writes to the emulator's debug-exit port 0xf4, which would end
//! the whole machine if it reached the device: the hypervisor must refuse it and end
//! only this guest (`expect=fault:io`).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::{check, println};

fn scenario() {
    println!("writing port 0xf4");
    guest_images::rt::port_write(0xf4, 0);
    check!(false, "port 0xf4 write was allowed");
}

guest_images::guest_main!(scenario);
