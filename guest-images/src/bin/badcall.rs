//! Scenario `badcall`: issues an unknown hypercall (`expect=fault:hypercall`).
#![forbid(unsafe_code)]
#![no_std]
#![no_main]

use guest_images::rt::hypercall;
use guest_images::{check, println};

fn main() {
    println!("calling hypercall 999");
    hypercall(999, 0, 0, 0);
    check!(false, "unknown hypercall returned");
}

guest_images::guest_main!(main);
