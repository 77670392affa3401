#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
//!
//! Modules: [`settings`], [`outcome`], [`frames`], [`platform`], [`layout`], [`vcpu`]
//! (with the per-vCPU state), [`cpu`] (the virtual CPU: CPUID, MSRs, instruction
//! decoding), [`svm`], [`vmx`] (with their shared `switch` module), [`memory`], [`space_memory`],
//! [`vm`], [`hypervisor`]; shared with the guest images: [`abi`] (the image format and
//! hypercalls), [`baremetal`] (the C runtime symbols of every bare-metal binary) and
//! [`guest_rt`] (the guest-side hardware primitives, so that guest images are free of
//! `unsafe`).

extern crate alloc;

pub mod abi;
pub mod baremetal;
pub mod cpu;
pub mod frames;
pub mod guest_rt;
pub mod hypervisor;
pub mod layout;
pub mod memory;
pub mod outcome;
pub mod platform;
pub mod settings;
pub mod space_memory;
pub mod svm;
mod switch;
#[cfg(test)]
pub(crate) mod testing;
pub mod vcpu;
pub mod vm;
pub mod vmx;
