//! Scenario `zeroscan`: a read-mostly guest. It scans 48 MiB of RAM it never wrote
//! (one word per 4 KiB page, all zero), writes one page in 64, and scans again
//! checking both. Run with `zeropage`, the reads are served by one shared page of
//! zeros and only the written pages take frames; the report counts both.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{read_u64, write_u64};
use guest_images::{check, println};

const START: u64 = 8 << 20;
const END: u64 = 56 << 20;
const WRITE_EVERY: u64 = 64;

fn written(page: u64) -> bool {
    (page / 4096).is_multiple_of(WRITE_EVERY)
}

fn scenario() {
    let mut sum = 0u64;
    for page in (START..END).step_by(4096) {
        sum |= read_u64(page) | read_u64(page + 2048);
    }
    check!(sum == 0, "never-written memory is not zero");
    let mut writes = 0;
    for page in (START..END).step_by(4096).filter(|&p| written(p)) {
        write_u64(page + 8, page);
        writes += 1;
    }
    for page in (START..END).step_by(4096) {
        let want = if written(page) { page } else { 0 };
        check!(read_u64(page + 8) == want, "page {page:#x} reads wrong");
        check!(
            read_u64(page + 16) == 0,
            "page {page:#x} is not zero beside the write"
        );
    }
    println!(
        "zeroscan: {} pages scanned twice, {writes} written",
        (END - START) / 4096
    );
}

guest_images::guest_main!(scenario);
