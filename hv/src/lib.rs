#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
//!
//! Modules: [`settings`], [`outcome`], [`frames`], [`platform`], [`layout`], [`vcpu`]
//! (with the per-vCPU state), [`cpu`] (the virtual CPU: CPUID, MSRs, instruction
//! decoding), [`svm`], [`vmx`] (with their shared `switch` module), [`memory`],
//! [`space_memory`], [`vm`], [`reset`] (whole-guest snapshot and reset), [`hypervisor`]. The contract with the guests and the build
//! tool is the `hv-abi` crate, re-exported as [`abi`]; the C runtime symbols of every
//! bare-metal binary come from the `baremetal` crate, shared with the guests' runtime
//! (`guest-rt`).

extern crate alloc;
// The C runtime symbols (`memcpy` and family) the kernel binary needs.
use baremetal as _;

pub use hv_abi as abi;
pub mod clock;
pub mod cpu;
pub mod devices;
pub mod exit_stats;
pub mod frames;
pub mod hypervisor;
pub mod irq;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod notices;
pub mod outcome;
pub mod platform;
pub mod reset;
pub mod settings;
pub mod sharing;
pub mod space_memory;
pub mod svm;
mod switch;
pub mod system;
#[cfg(test)]
pub(crate) mod testing;
pub mod vcpu;
pub mod vm;
pub mod vmx;
