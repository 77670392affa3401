//! Host-testable parts of the hypervisor.
#![cfg_attr(not(test), no_std)]
