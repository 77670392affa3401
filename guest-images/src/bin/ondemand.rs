//! Scenario `ondemand`: touches every 4 KiB page of 48 MiB of RAM that the hypervisor
//! backs only on first touch, writing a per-page pattern, then reads every page back.
#![no_std]
#![no_main]

use guest_images::rt::{read_u64, write_u64};
use guest_images::{check, println};

const START: u64 = 8 << 20;
const END: u64 = 56 << 20;

fn pattern(gpa: u64) -> u64 {
    gpa.rotate_left(17) ^ 0x5EED_0000_C0DE_0001
}

fn main() {
    let mut page = START;
    while page < END {
        check!(
            read_u64(page) == 0,
            "page {page:#x} not zero on first touch"
        );
        write_u64(page, pattern(page));
        write_u64(page + 4088, !pattern(page));
        page += 4096;
    }
    let mut page = START;
    while page < END {
        check!(
            read_u64(page) == pattern(page),
            "page {page:#x} lost its pattern"
        );
        check!(
            read_u64(page + 4088) == !pattern(page),
            "page {page:#x} tail lost"
        );
        page += 4096;
    }
    println!("{} MiB touched on demand and verified", (END - START) >> 20);
}

guest_images::guest_main!(main);
