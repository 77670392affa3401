//! Scenario `areaflood`: cuts a large on-demand RAM area into tens of thousands of
//! areas, protecting and unmapping every other page, as a hostile guest growing the
//! hypervisor's bookkeeping would. The hypervisor must end this guest alone
//! (`fault:metadata`) once its bookkeeping budget is spent; every call before that
//! must succeed, and the guest must never get to the end of the area.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::cut_every_other_page;
use guest_images::{check, println};

/// The area the settings map (`area=0x40000000+1G:rw`).
const AREA: u64 = 0x4000_0000;
const SIZE: u64 = 1 << 30;

fn scenario() {
    println!("cutting {} MiB into 4 KiB areas", SIZE >> 20);
    let (done, status) = cut_every_other_page(AREA, SIZE);
    check!(status == 0, "call {done} refused with {status}");
    println!("FAIL: {done} cuts and the hypervisor never stopped this guest");
}

guest_images::guest_main!(scenario);
