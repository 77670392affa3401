//! Scenario `ondemand`: touches every 4 KiB page of two ranges that the hypervisor
//! backs only on first touch, writing a per-page pattern, then reads every page back:
//! 48 MiB of RAM (2 MiB-aligned: served with 2 MiB leaves) and an 8 MiB area that
//! starts 4 KiB past a 2 MiB boundary (settings `area=0x8001000+8M:rw`: served page by
//! page with 4 KiB leaves).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{read_u64, write_u64};
use guest_images::{check, println};

const RANGES: [(u64, u64); 2] = [(8 << 20, 56 << 20), (0x800_1000, 0x800_1000 + (8 << 20))];

fn pattern(gpa: u64) -> u64 {
    gpa.rotate_left(17) ^ 0x5EED_0000_C0DE_0001
}

fn scenario() {
    for (start, end) in RANGES {
        let mut page = start;
        while page < end {
            check!(
                read_u64(page) == 0,
                "page {page:#x} not zero on first touch"
            );
            write_u64(page, pattern(page));
            write_u64(page + 4088, !pattern(page));
            page += 4096;
        }
    }
    for (start, end) in RANGES {
        let mut page = start;
        while page < end {
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
    }
    println!("56 MiB touched on demand (2 MiB and 4 KiB leaves) and verified");
}

guest_images::guest_main!(scenario);
