//! Scenario `badcall`: issues an unknown hypercall (`expect=fault:hypercall`).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::hypercall;
use guest_images::{check, println};

fn scenario() {
    println!("calling hypercall 999");
    hypercall(999, 0, 0, 0);
    check!(false, "unknown hypercall returned");
}

guest_images::guest_main!(scenario);
