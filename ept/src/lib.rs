//! Stage-2 page tables for Intel EPT and AMD NPT.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod space;
