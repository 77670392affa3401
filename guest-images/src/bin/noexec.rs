//! Scenario `noexec`: writes a `ret` into a read-write, no-execute area (settings
//! `nx=0x1000000+64K`) and calls it: the hypervisor must end the guest with an execute
//! fault at that address (`expect=fault:exec@0x1000000`).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{call_at, read_u64, write_u64};
use guest_images::{check, println};

const AREA: u64 = 0x100_0000;

fn scenario() {
    write_u64(AREA, 0xC3); // ret
    check!(read_u64(AREA) == 0xC3, "no-execute area not writable");
    println!("no-execute area writable; now calling into it");
    call_at(AREA);
    check!(false, "code ran in a no-execute area");
}

guest_images::guest_main!(scenario);
