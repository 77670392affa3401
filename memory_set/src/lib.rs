//! Address types and the area bookkeeping of a guest-physical address space.
//!
//! * [`addr`]: [`GuestPhysAddr`], [`HostPhysAddr`], the [`MemoryAddr`] trait with
//!   checked arithmetic, [`AddrRange`] and [`PageIter`].
//!
//! The crate is `no_std` and forbids `unsafe`: it is pure bookkeeping, tested on the host.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod addr;

pub use addr::{
    AddrRange, GuestPhysAddr, HostPhysAddr, MemoryAddr, PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4K,
    PageIter, PageIter1G, PageIter2M, PageIter4K,
};
