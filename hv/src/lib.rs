#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
//!
//! Modules: [`settings`], [`outcome`], [`frames`], [`platform`], [`layout`], [`vcpu`],
//! [`svm`], [`memory`], [`space_memory`], [`vm`], [`hypervisor`].

extern crate alloc;

pub mod frames;
pub mod hypervisor;
pub mod layout;
pub mod memory;
pub mod outcome;
pub mod platform;
pub mod settings;
pub mod space_memory;
pub mod svm;
#[cfg(test)]
pub(crate) mod testing;
pub mod vcpu;
pub mod vm;
