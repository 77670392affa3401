#![doc = include_str!("../README.md")]
//!
//! # Modules
//! * [`addr`]: [`GuestPhysAddr`], [`HostPhysAddr`], the [`MemoryAddr`] trait with
//!   checked arithmetic, [`AddrRange`] and [`PageIter`].
//! * [`MappingBackend`]: what an area does to the page table, and the contract the
//!   transactional operations rely on.
//! * [`MemoryArea`] and [`MemorySet`]: the areas of an address space.
//! * [`MemorySetError`]: the one error type.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod addr;
mod area;
mod backend;
mod error;
mod set;

pub use addr::{
    AddrRange, GuestPhysAddr, HostPhysAddr, MemoryAddr, PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4K,
    PageIter, PageIter1G, PageIter2M, PageIter4K,
};
pub use area::{MemoryArea, SetResult};
pub use backend::MappingBackend;
pub use error::{InvalidParam, MemorySetError};
pub use set::MemorySet;
