//! Scenario `snapshot`: fills 4 pages with a pattern, fills its registers (and an
//! MSR) with known values and asks for a snapshot; then, 1,000 times, dirties a
//! varying set of those pages and of pages it never touched before, scribbles over
//! every register and asks for a reset. After each reset it resumes at the snapshot
//! point with the reset count in RAX and checks that its registers, its memory
//! (checksum) and its stage-2 mappings (the fresh pages are gone again) are exactly
//! those of the snapshot.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{leaf_size, read_u64, reset_scribbled, snapshot_point, write_u64};
use guest_images::{check, println};

/// The RAM area of the scenario (`area=0x1000000+1M:rw`).
const DATA: u64 = 0x100_0000;
/// Pages filled before the snapshot and checksummed after every reset.
const DATA_PAGES: u64 = 4;
/// Pages first touched after the snapshot: a reset must unmap them again.
const FRESH: u64 = DATA + 128 * 4096;
const FRESH_PAGES: u64 = 8;
const RESETS: i64 = 1000;
const SEED: u64 = 0x5EED_0014_C0DE_F00D;

fn pattern(page: u64, word: u64) -> u64 {
    (page << 32 | word).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn checksum() -> u64 {
    let mut sum = 0u64;
    for page in 0..DATA_PAGES {
        for word in 0..512 {
            let v = read_u64(DATA + page * 4096 + word * 8);
            sum = sum.rotate_left(7) ^ v;
        }
    }
    sum
}

fn scenario() {
    for page in 0..DATA_PAGES {
        for word in 0..512 {
            write_u64(DATA + page * 4096 + word * 8, pattern(page, word));
        }
    }
    let expected = checksum();
    let (n, errors) = snapshot_point(SEED);
    check!(n >= 0, "snapshot refused: {n}");
    check!(
        errors == 0,
        "after reset {n}: {errors} register(s) differ from the snapshot's"
    );
    check!(
        checksum() == expected,
        "after reset {n}: memory differs from the snapshot"
    );
    // The fresh pages the iteration before this reset touched (see below) are gone.
    if n > 0 {
        let last = n as u64 - 1;
        for j in 0..last % 3 {
            check!(
                leaf_size(FRESH + (last + j) % FRESH_PAGES * 4096) == 0,
                "after reset {n}: a page first touched after the snapshot is still mapped"
            );
        }
    }
    if n == RESETS {
        println!("{n} resets: registers, memory and mappings matched the snapshot every time");
        return;
    }
    let n = n as u64;
    // A varying set of pages and offsets each iteration.
    for j in 0..1 + n % 4 {
        let page = (n * 5 + j * 3) % DATA_PAGES;
        let offset = (n * 8 + j * 520) % 4096;
        write_u64(DATA + page * 4096 + offset, n ^ 0xD1E7);
    }
    for j in 0..n % 3 {
        write_u64(FRESH + (n + j) % FRESH_PAGES * 4096, n);
    }
    check!(
        read_u64(DATA + (n * 5 % DATA_PAGES) * 4096 + (n * 8 % 4096)) == n ^ 0xD1E7,
        "write lost"
    );
    let status = reset_scribbled(n.wrapping_mul(0xBAD0_BAD0_BAD0_BAD1));
    check!(false, "reset {} refused: {status}", n + 1);
}

guest_images::guest_main!(scenario);
