//! Scenario `clone`: writes a value, asks the hypervisor to clone the guest
//! copy-on-write, then parent and child each write their own value to the same
//! address, yield to each other, and check that each still sees only its own.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{clone_guest, host_read, read_u64, write_u64, yield_now};
use guest_images::{check, println};

const SHARED: u64 = 0x100_0000;
const UNTOUCHED: u64 = 0x100_1000;

fn scenario() {
    write_u64(SHARED, 0xAAAA);
    write_u64(UNTOUCHED, 0x5555);
    let id = clone_guest();
    check!(id >= 0, "clone failed: {id}");
    let (mine, who) = if id == 0 {
        (0xC41D, "child")
    } else {
        (0x9A7E, "parent")
    };
    check!(read_u64(SHARED) == 0xAAAA, "{who}: value before clone lost");
    write_u64(SHARED, mine);
    yield_now();
    check!(
        read_u64(SHARED) == mine,
        "{who}: sees the other side's write"
    );
    check!(host_read(SHARED) as u64 == mine, "{who}: host view differs");
    check!(read_u64(UNTOUCHED) == 0x5555, "{who}: shared page changed");
    yield_now();
    check!(
        read_u64(SHARED) == mine,
        "{who}: value changed after yielding"
    );
    println!("{who}: sees its own write only");
}

guest_images::guest_main!(scenario);
