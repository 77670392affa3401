//! Scenario `nibble` (with `hog`): lets the others run for 100 turns, then touches
//! 64 MiB of RAM (a write to every 4 KiB page) and exits 0. Beside a `hog` that holds
//! most of the host's frames it is the guest that asks when the host has none left:
//! it must end with `fault:host-memory` (the host ran out, not its quota).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::println;
use guest_images::rt::{write_u64, yield_now};

const FROM: u64 = 4 << 20;
const TAKE: u64 = 64 << 20;

fn scenario() {
    for _ in 0..100 {
        yield_now();
    }
    for page in (FROM..FROM + TAKE).step_by(4096) {
        write_u64(page, page);
    }
    println!("touched {} MiB", TAKE >> 20);
}

guest_images::guest_main!(scenario);
