//! Scenario `hello`: prints a greeting over the serial port and exits with 0.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::println;

fn scenario() {
    println!("hello from a guest in long mode");
}

guest_images::guest_main!(scenario);
