//! Scenario `cloneflood`: touches 16 MiB in 4 KiB pieces (one page of every 2 MiB
//! block unmapped first, so no 2 MiB leaf fits), then clones itself again and again:
//! every clone shares every frame copy-on-write, which costs the hypervisor one
//! bookkeeping entry per frame in each space. The family's budget must end the parent
//! (`fault:metadata`); each child then cuts a large area into pieces until the same
//! family budget ends it too. No clone may fail with a status (the budget must end the
//! guest, not let it retry), and no guest may get to its end.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{clone_guest, cut_every_other_page, unmap, write_u64};
use guest_images::{check, println};

/// RAM touched page by page (`area=0x4000000+16M:rw`).
const TOUCHED: u64 = 0x400_0000;
const TOUCHED_SIZE: u64 = 16 << 20;
/// The area children cut (`area=0x40000000+1G:rw`).
const CUT: u64 = 0x4000_0000;
const CUT_SIZE: u64 = 1 << 30;

fn scenario() {
    for block in (TOUCHED..TOUCHED + TOUCHED_SIZE).step_by(2 << 20) {
        check!(unmap(block, 4096) == 0, "unmap of {block:#x} refused");
    }
    let mut pages = 0;
    for page in (TOUCHED..TOUCHED + TOUCHED_SIZE).step_by(4096) {
        if page % (2 << 20) != 0 {
            write_u64(page, page);
            pages += 1;
        }
    }
    println!("{pages} pages touched; cloning until the hypervisor stops me");
    let mut clones = 0;
    loop {
        let id = clone_guest();
        check!(id >= 0, "clone {clones} refused with {id}");
        if id == 0 {
            break;
        }
        clones += 1;
        println!("clone {clones} made");
    }
    // A child: spend what is left of the family's bookkeeping.
    let (done, status) = cut_every_other_page(CUT, CUT_SIZE);
    check!(status == 0, "child: call {done} refused with {status}");
    println!("FAIL: child made {done} cuts and was never stopped");
}

guest_images::guest_main!(scenario);
