//! Tiny test guests and the library they share.
//!
//! * [`abi`]: the contract between the hypervisor, the guests and the build tool (image
//!   header, hypercall numbers, run statuses); plain data, used on the host too. It is
//!   the `hv-abi` crate, which the hypervisor links too.
//! * [`rt`]: the guest side (serial output, hypercalls, raw memory access, entry point),
//!   built on the safe hardware primitives of [`guest_rt`].
//!
//! The C runtime symbols a bare-metal binary needs (`memcpy` and family) come with
//! `guest-rt`, from the `baremetal` crate shared with the hypervisor kernel. No guest
//! links the hypervisor crate.
//!
//! Each binary in `src/bin/` is one scenario; `cargo xtask build` links them at their
//! load address with `guest.ld`, flattens them with `objcopy` and seals their header.
//!
//! The crate has no `unsafe` code (`forbid(unsafe_code)`, here and in every binary):
//! what needs it lives in `guest-rt`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub use hv_abi as abi;
pub mod messages;
pub mod rt;
