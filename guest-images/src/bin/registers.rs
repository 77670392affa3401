//! Scenario `registers`: clones itself, then parent and child each fill every
//! general-purpose and XMM register with their own values and yield to the other
//! several times: each must find its registers intact (the world switch saves and
//! restores the whole register state, SSE included).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::{clone_guest, yield_keeps_registers, yield_now};
use guest_images::{check, println};

fn scenario() {
    let id = clone_guest();
    check!(id >= 0, "clone failed: {id}");
    let (seed, who) = if id == 0 {
        (0x1111_2222_3333_4444, "child")
    } else {
        (0xAAAA_BBBB_CCCC_DDDD, "parent")
    };
    for round in 0..4u64 {
        let errors = yield_keeps_registers(seed ^ (round << 40));
        check!(
            errors == 0,
            "{who}: {errors} register(s) changed across a yield in round {round}"
        );
    }
    yield_now();
    println!("{who}: every register survived 4 switches");
}

guest_images::guest_main!(scenario);
