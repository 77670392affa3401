//! Scenario `spin`: loops forever without a single exit. The timer preempts it so the
//! other guests keep running, and it is stopped once it has used its CPU budget
//! (`expect=fault:timeout`).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::println;

fn scenario() {
    println!("spinning forever");
    loop {
        core::hint::spin_loop();
    }
}

guest_images::guest_main!(scenario);
