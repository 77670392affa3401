//! Tiny test guests and the library they share.
//!
//! * [`abi`]: the contract between the hypervisor, the guests and the build tool (image
//!   header, hypercall numbers, run statuses); plain data, used on the host too.
//! * [`rt`]: the guest side (serial output, hypercalls, raw memory access, entry point).
//! * [`baremetal`]: the runtime symbols every bare-metal binary of the project needs.
//!
//! Each binary in `src/bin/` is one scenario; `cargo xtask build` links them at their
//! load address with `guest.ld`, flattens them with `objcopy` and seals their header.
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod baremetal;
pub mod rt;
