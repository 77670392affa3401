//! Scenario `balloon`: within a quota of 72 MiB, touches 64 MiB, gives 48 MiB of it
//! back with the balloon hypercall, checks that a given-back page reads as zeros
//! again and that the kept 16 MiB kept their contents, then touches 32 MiB more:
//! 96 MiB in all, which the quota only allows because the balloon returned frames.
//! Then it gives a given-back page back 100 times more (0 frames each): the
//! hypervisor logs the first notices about a guest and only counts the rest.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{balloon, read_u64, write_u64};
use guest_images::{check, println};

const MIB: u64 = 1 << 20;
const FIRST: (u64, u64) = (16 * MIB, 80 * MIB);
const GIVEN_BACK: (u64, u64) = (16 * MIB, 64 * MIB);
const MORE: (u64, u64) = (80 * MIB, 112 * MIB);

fn pattern(page: u64) -> u64 {
    page.rotate_left(23) ^ 0xBA11_00B0_0000_0001
}

fn touch((start, end): (u64, u64)) {
    for page in (start..end).step_by(4096) {
        write_u64(page, pattern(page));
    }
}

fn scenario() {
    touch(FIRST);
    let frames = balloon(GIVEN_BACK.0, GIVEN_BACK.1 - GIVEN_BACK.0);
    check!(
        frames == ((GIVEN_BACK.1 - GIVEN_BACK.0) / 4096) as i64,
        "balloon gave back {frames} frames"
    );
    check!(
        read_u64(GIVEN_BACK.0 + 4096) == 0,
        "a given-back page is not zero"
    );
    for page in (GIVEN_BACK.1..FIRST.1).step_by(4096) {
        check!(
            read_u64(page) == pattern(page),
            "kept page {page:#x} lost its contents"
        );
    }
    touch(MORE);
    for page in (MORE.0..MORE.1).step_by(4096) {
        check!(
            read_u64(page) == pattern(page),
            "page {page:#x} lost its contents"
        );
    }
    println!("balloon: 64 MiB touched, 48 MiB given back ({frames} frames), 32 MiB more touched");
    for _ in 0..REPEATS {
        let again = balloon(GIVEN_BACK.0, 4096);
        check!(again == 0, "a given-back page gave back {again} frames");
    }
    println!("balloon: {REPEATS} more calls over a given-back page gave back nothing");
}

/// Balloon calls after the first, each a notice the hypervisor may log.
const REPEATS: u32 = 100;

guest_images::guest_main!(scenario);
