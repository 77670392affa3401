//! Scenario `unmap`: asks the hypervisor to unmap a page it has used, then reads it:
//! the read must fault at that page (`expect=fault:unmapped@0x1002000`).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{read_u64, unmap, write_u64};
use guest_images::{check, println};

const AREA: u64 = 0x100_0000;

fn scenario() {
    write_u64(AREA + 0x2000, 7);
    write_u64(AREA + 0x3000, 8);
    let r = unmap(AREA + 0x2000, 0x1000);
    check!(r == 0, "unmap failed: {r}");
    check!(read_u64(AREA + 0x3000) == 8, "neighbour page lost");
    println!("page 0x1002000 unmapped; reading it");
    let v = read_u64(AREA + 0x2000);
    check!(false, "read {v} from an unmapped page (missing TLB flush?)");
}

guest_images::guest_main!(scenario);
