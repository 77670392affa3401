//! The [`MappingBackend`] trait: what an area does to the page table.

use core::fmt;

use crate::addr::{AddrRange, MemoryAddr, PAGE_SIZE_4K};

/// The page-table side of a [`MemoryArea`](crate::MemoryArea): how a range of the area
/// is mapped, unmapped, re-protected, and how a fault inside it is served.
///
/// A backend is a cheap `Clone` value (for example "linear, offset X" or "allocate on
/// demand"); splitting an area clones it. All mutable state lives in
/// [`Self::PageTable`], which every call receives.
///
/// # Contract
/// [`MemorySet`](crate::MemorySet) relies on the following; tests in this crate
/// check it with a strict model backend.
/// 1. **Atomic calls**: a call that returns `Err` changed nothing.
/// 2. **Undo never fails**: right after a successful call, its inverse succeeds:
///    `map(r, f)` is undone by `unmap(r)`, `protect(r, old, new)` by
///    `protect(r, new, old)`, `unmap(r)` of a range mapped with flags `f` by `map(r, f)`.
///    (Undoing an unmap restores the mapping, not necessarily its contents: a linear
///    window comes back identical, on-demand RAM comes back untouched.)
/// 3. **Cuts are prepared**: before the set cuts an area at `at` (unmap, protect or a
///    replacing map that ends inside it) it calls [`Self::prepare_split`]; that call may
///    fail (e.g. no frame for a page table that splits a huge leaf) but never changes
///    what any address translates to, so it is never undone. After it, operations on
///    whole pieces should not fail for lack of resources.
/// 4. **Granularity**: every `start` and `size` the set passes is a multiple of
///    [`Self::PAGE_SIZE`], and each call covers a range inside one area.
pub trait MappingBackend: Clone {
    /// The address type of the space being managed.
    type Addr: MemoryAddr;
    /// The per-area flags (permissions, memory type, ...).
    type Flags: Copy + Eq + fmt::Debug;
    /// The page table (and whatever state the backend mutates, e.g. a frame allocator).
    type PageTable;
    /// The backend's own typed error.
    type Error: fmt::Debug;

    /// The smallest unit the backend maps (a power of two); the set rejects starts and
    /// sizes that are not multiples of it with
    /// [`InvalidParam::Unaligned`](crate::InvalidParam::Unaligned).
    const PAGE_SIZE: usize = PAGE_SIZE_4K;

    /// Maps `[start, start + size)` (currently unmapped) with `flags`.
    fn map(
        &self,
        start: Self::Addr,
        size: usize,
        flags: Self::Flags,
        page_table: &mut Self::PageTable,
    ) -> Result<(), Self::Error>;

    /// Unmaps `[start, start + size)` (currently part of one area).
    fn unmap(
        &self,
        start: Self::Addr,
        size: usize,
        page_table: &mut Self::PageTable,
    ) -> Result<(), Self::Error>;

    /// Changes the flags of `[start, start + size)` from `old_flags` to `new_flags`.
    fn protect(
        &self,
        start: Self::Addr,
        size: usize,
        old_flags: Self::Flags,
        new_flags: Self::Flags,
        page_table: &mut Self::PageTable,
    ) -> Result<(), Self::Error>;

    /// Serves a fault at `addr` with the attempted `access`, inside the area `area` whose
    /// flags are `area_flags`. The backend decides whether the access is allowed and may
    /// map more than one page (any leaf that stays inside `area`).
    fn handle_fault(
        &self,
        area: AddrRange<Self::Addr>,
        area_flags: Self::Flags,
        addr: Self::Addr,
        access: Self::Flags,
        page_table: &mut Self::PageTable,
    ) -> Result<(), Self::Error>;

    /// Prepares cutting the area `area` (flags `flags`) at `at` (strictly inside it): for
    /// example splits a huge leaf that spans `at`. Must not change any translation.
    /// The default does nothing (right for backends that map only base pages).
    fn prepare_split(
        &self,
        area: AddrRange<Self::Addr>,
        flags: Self::Flags,
        at: Self::Addr,
        page_table: &mut Self::PageTable,
    ) -> Result<(), Self::Error> {
        let _ = (area, flags, at, page_table);
        Ok(())
    }
}
