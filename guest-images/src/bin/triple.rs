//! Scenario `triple`: executes `ud2` without an IDT, which escalates to a triple fault
//! (shutdown): the hypervisor must end only this guest (`expect=fault:shutdown`).
#![forbid(unsafe_code)]
#![no_std]
#![no_main]

use guest_images::println;

fn main() {
    println!("executing ud2 without an IDT");
    guest_images::rt::invalid_opcode();
}

guest_images::guest_main!(main);
