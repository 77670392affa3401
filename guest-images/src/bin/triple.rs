//! Scenario `triple`: executes `ud2` without an IDT, which escalates to a triple fault
//! (shutdown): the hypervisor must end only this guest (`expect=fault:shutdown`).
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::println;

fn scenario() {
    println!("executing ud2 without an IDT");
    guest_images::rt::invalid_opcode();
}

guest_images::guest_main!(scenario);
