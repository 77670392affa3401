//! Scenario `hello`: prints a greeting over the serial port and exits with 0.
#![forbid(unsafe_code)]
#![no_std]
#![no_main]

use guest_images::println;

fn main() {
    println!("hello from a guest in long mode");
}

guest_images::guest_main!(main);
