//! The hypervisor's library: everything except booting.
//!
//! * [`settings`]: the hypervisor and guest command lines.
//! * [`outcome`]: how guests end and what they were expected to do.
//! * [`frames`]: the host frame allocator (a bitmap in 2 MiB chunks).
//! * [`platform`]: identity-mapped host memory, the global frame pool, the console.
//! * [`vcpu`]: the vendor-neutral vCPU trait and exits.
//! * [`svm`]: AMD SVM with nested paging.
//!
//! Host-testable logic (parsing, validation, decoding, reports) has unit tests; the
//! hardware paths run in the boot tests (`cargo xtask boot-test`).
#![cfg_attr(not(test), no_std)]

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
