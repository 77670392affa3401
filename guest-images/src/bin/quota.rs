//! Scenario `quota`: touches ever more memory of a large on-demand RAM while its frame
//! quota is small (settings `mem=64M quota=1M`): the hypervisor must end it with a
//! quota fault (`expect=fault:quota`), and the other guests go on.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::write_u64;
use guest_images::{check, println};

fn scenario() {
    println!("touching 60 MiB with a 1 MiB quota");
    let mut page = 4 << 20;
    while page < 64 << 20 {
        write_u64(page, page);
        page += 4096;
    }
    check!(false, "60 MiB touched within a 1 MiB quota");
}

guest_images::guest_main!(scenario);
