//! Stage-2 page tables for Intel EPT and AMD NPT.
#![cfg_attr(not(test), no_std)]
