//! [`MemoryArea`]: one contiguous range with one set of flags and one backend.

use core::fmt;

use crate::addr::{AddrRange, MemoryAddr};
use crate::backend::MappingBackend;
use crate::error::{InvalidParam, MemorySetError};

/// Result of area and set operations, with the backend's error type.
pub type SetResult<B, T = ()> = Result<T, MemorySetError<<B as MappingBackend>::Error>>;

/// A non-empty, page-aligned range `[start, start + size)` mapped with one set of flags
/// by one backend. A range ending exactly at the top of the address space is allowed.
pub struct MemoryArea<B: MappingBackend> {
    range: AddrRange<B::Addr>,
    flags: B::Flags,
    backend: B,
}

/// Checks that `[start, start + size)` is non-empty, does not pass the top of the
/// address space and is aligned to the backend's page size.
pub(crate) fn checked_range<B: MappingBackend>(
    start: B::Addr,
    size: usize,
) -> SetResult<B, AddrRange<B::Addr>> {
    if size == 0 {
        return Err(MemorySetError::invalid(InvalidParam::ZeroSize));
    }
    if !start.is_aligned(B::PAGE_SIZE) || !size.is_aligned(B::PAGE_SIZE) {
        return Err(MemorySetError::invalid(InvalidParam::Unaligned {
            page_size: B::PAGE_SIZE,
        }));
    }
    AddrRange::from_start_size(start, size).ok_or(MemorySetError::invalid(InvalidParam::Overflow))
}

impl<B: MappingBackend> MemoryArea<B> {
    /// A new area (not yet mapped). Errors: [`InvalidParam::ZeroSize`],
    /// [`InvalidParam::Unaligned`] (start or size not a multiple of
    /// [`MappingBackend::PAGE_SIZE`]), [`InvalidParam::Overflow`].
    pub fn new(start: B::Addr, size: usize, flags: B::Flags, backend: B) -> SetResult<B, Self> {
        let range = checked_range::<B>(start, size)?;
        Ok(Self {
            range,
            flags,
            backend,
        })
    }

    /// An area over an already checked, non-empty range.
    pub(crate) fn from_range(range: AddrRange<B::Addr>, flags: B::Flags, backend: B) -> Self {
        debug_assert!(!range.is_empty());
        Self {
            range,
            flags,
            backend,
        }
    }

    /// Replaces the range (bookkeeping only; the caller keeps the page table in step).
    pub(crate) fn set_range(&mut self, range: AddrRange<B::Addr>) {
        debug_assert!(!range.is_empty());
        self.range = range;
    }

    /// Replaces the flags (bookkeeping only; the caller keeps the page table in step).
    pub(crate) fn set_flags(&mut self, flags: B::Flags) {
        self.flags = flags;
    }

    /// The range `[start, end)`.
    #[inline]
    pub fn va_range(&self) -> AddrRange<B::Addr> {
        self.range
    }

    /// The first address.
    #[inline]
    pub fn start(&self) -> B::Addr {
        self.range.start()
    }

    /// The exclusive end, or `None` when the area ends exactly at `2^64`.
    #[inline]
    pub fn end(&self) -> Option<B::Addr> {
        self.range.end()
    }

    /// The inclusive last address (an area is never empty).
    #[inline]
    pub fn last(&self) -> B::Addr {
        // `start + size - 1` was checked at construction and size > 0.
        B::Addr::from(self.start().as_usize() + (self.size() - 1))
    }

    /// The size in bytes (never zero).
    #[inline]
    pub fn size(&self) -> usize {
        self.range.size()
    }

    /// The flags every page of the area is mapped with.
    #[inline]
    pub fn flags(&self) -> B::Flags {
        self.flags
    }

    /// The backend.
    #[inline]
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Maps the whole area.
    pub fn map_area(&self, page_table: &mut B::PageTable) -> SetResult<B> {
        self.backend
            .map(self.start(), self.size(), self.flags, page_table)
            .map_err(MemorySetError::Backend)
    }

    /// Unmaps the whole area.
    pub fn unmap_area(&self, page_table: &mut B::PageTable) -> SetResult<B> {
        self.backend
            .unmap(self.start(), self.size(), page_table)
            .map_err(MemorySetError::Backend)
    }

    /// Changes the flags of the whole area; on error nothing changed.
    pub fn protect_area(
        &mut self,
        new_flags: B::Flags,
        page_table: &mut B::PageTable,
    ) -> SetResult<B> {
        self.backend
            .protect(self.start(), self.size(), self.flags, new_flags, page_table)
            .map_err(MemorySetError::Backend)?;
        self.flags = new_flags;
        Ok(())
    }

    /// Checks `0 < new_size < size` and alignment; returns the size of the cut part.
    fn cut_size(&self, new_size: usize) -> SetResult<B, usize> {
        if new_size == 0 || new_size >= self.size() {
            return Err(MemorySetError::invalid(InvalidParam::ShrinkSize {
                new_size,
                size: self.size(),
            }));
        }
        if !new_size.is_aligned(B::PAGE_SIZE) {
            return Err(MemorySetError::invalid(InvalidParam::Unaligned {
                page_size: B::PAGE_SIZE,
            }));
        }
        Ok(self.size() - new_size)
    }

    /// Keeps the right `new_size` bytes and unmaps the part on the left
    /// (`0 < new_size < size`, page aligned). On error nothing changed.
    pub fn shrink_left(&mut self, new_size: usize, page_table: &mut B::PageTable) -> SetResult<B> {
        let cut = self.cut_size(new_size)?;
        let new_start = B::Addr::from(self.start().as_usize() + cut);
        self.backend
            .prepare_split(self.range, self.flags, new_start, page_table)
            .map_err(MemorySetError::Backend)?;
        self.backend
            .unmap(self.start(), cut, page_table)
            .map_err(MemorySetError::Backend)?;
        self.range = AddrRange::from_start_size(new_start, new_size)
            .ok_or(MemorySetError::invalid(InvalidParam::Overflow))?;
        Ok(())
    }

    /// Keeps the left `new_size` bytes and unmaps the part on the right
    /// (`0 < new_size < size`, page aligned). On error nothing changed.
    pub fn shrink_right(&mut self, new_size: usize, page_table: &mut B::PageTable) -> SetResult<B> {
        let cut = self.cut_size(new_size)?;
        let cut_start = B::Addr::from(self.start().as_usize() + new_size);
        self.backend
            .prepare_split(self.range, self.flags, cut_start, page_table)
            .map_err(MemorySetError::Backend)?;
        self.backend
            .unmap(cut_start, cut, page_table)
            .map_err(MemorySetError::Backend)?;
        self.range = AddrRange::from_start_size(self.start(), new_size)
            .ok_or(MemorySetError::invalid(InvalidParam::Overflow))?;
        Ok(())
    }

    /// Splits the area at `pos`: `self` keeps `[start, pos)` and the returned area
    /// (with a clone of the backend) holds `[pos, end)`. `None`, changing nothing,
    /// unless `start < pos <= last` and `pos` is page aligned.
    ///
    /// This is bookkeeping only; a backend that maps huge leaves wants
    /// [`MappingBackend::prepare_split`] called first ([`MemorySet`](crate::MemorySet)
    /// does).
    pub fn split(&mut self, pos: B::Addr) -> Option<Self> {
        if pos <= self.start() || pos > self.last() || !pos.is_aligned(B::PAGE_SIZE) {
            return None;
        }
        let left_size = pos.as_usize() - self.start().as_usize();
        let right = Self {
            range: AddrRange::from_start_size(pos, self.size() - left_size)?,
            flags: self.flags,
            backend: self.backend.clone(),
        };
        self.range = AddrRange::from_start_size(self.start(), left_size)?;
        Some(right)
    }
}

impl<B: MappingBackend> Clone for MemoryArea<B> {
    fn clone(&self) -> Self {
        Self {
            range: self.range,
            flags: self.flags,
            backend: self.backend.clone(),
        }
    }
}

impl<B: MappingBackend> fmt::Debug for MemoryArea<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryArea")
            .field("range", &self.range)
            .field("flags", &self.flags)
            .finish()
    }
}
