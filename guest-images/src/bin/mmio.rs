//! Scenario `mmio`: reads a linear window onto a host buffer (settings
//! `mmio=0x2000000+64K`) that the hypervisor filled with a known pattern, writes into
//! it, and asks the hypervisor to read the value back from its side.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{host_read, read_u64, write_u64};
use guest_images::{check, println};

const WINDOW: u64 = 0x200_0000;
const SIZE: u64 = 64 << 10;

/// Must match the hypervisor's `memory::mmio_pattern`.
fn pattern(offset: u64) -> u64 {
    0x4D4D_494F_0000_0000 | (offset & 0xFFFF_FFFF)
}

fn scenario() {
    let mut offset = 0;
    while offset < SIZE {
        check!(
            read_u64(WINDOW + offset) == pattern(offset),
            "window byte {offset:#x} differs"
        );
        offset += 4096 + 8;
    }
    write_u64(WINDOW + 0x100, 0x600D_CAFE);
    check!(
        host_read(WINDOW + 0x100) == 0x600D_CAFE,
        "the host does not see the guest's write"
    );
    check!(
        host_read(WINDOW + 0x108) as u64 == pattern(0x108),
        "host view differs"
    );
    println!("linear window: host pattern seen, guest write seen by the host");
}

guest_images::guest_main!(scenario);
