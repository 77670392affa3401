//! Scenario `hog` (with `nibble`): takes 180 MiB of RAM (a write to every 4 KiB page;
//! 2 MiB leaves where they fit), then keeps it while yielding 400 times, then exits 0. Started
//! without `quota=` (with `mem=1G`), the default quota (its RAM, at most half the
//! host's frames) must end it (`fault:quota`) long before it can starve the others;
//! with `quota=1G` it holds what it took while `nibble` runs out of host frames.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::println;
use guest_images::rt::{write_u64, yield_now};

const FROM: u64 = 16 << 20;
const TAKE: u64 = 180 << 20;

fn scenario() {
    for page in (FROM..FROM + TAKE).step_by(4096) {
        write_u64(page, page);
    }
    println!("holding {} MiB", TAKE >> 20);
    for _ in 0..400 {
        yield_now();
    }
    println!("done holding");
}

guest_images::guest_main!(scenario);
