//! Address newtypes, checked address arithmetic, half-open ranges and page iterators.
//!
//! Every operation that could overflow near the top of the 64-bit space has a
//! `checked_*` form returning `Option`; the unchecked conveniences (`align_down`,
//! `offset`) cannot overflow by construction. [`AddrRange`] keeps a start and a size,
//! so a range that ends exactly at `2^64` is representable; its inclusive
//! [`AddrRange::last`] address never overflows.

use core::fmt;

/// 4 KiB, the base page size.
pub const PAGE_SIZE_4K: usize = 0x1000;
/// 2 MiB, the size of a level-2 (PD) leaf.
pub const PAGE_SIZE_2M: usize = 0x20_0000;
/// 1 GiB, the size of a level-3 (PDPT) leaf.
pub const PAGE_SIZE_1G: usize = 0x4000_0000;

/// An address in some address space: a `usize` with alignment and checked arithmetic.
///
/// Alignment arguments must be powers of two; the functions return `None` (or `false`)
/// for anything else rather than computing a meaningless mask.
pub trait MemoryAddr: Copy + Ord + Eq + fmt::Debug + From<usize> + Into<usize> {
    /// The raw value.
    #[inline]
    fn as_usize(self) -> usize {
        self.into()
    }

    /// Rounds down to a multiple of `align` (a power of two). Never overflows.
    #[inline]
    fn align_down(self, align: usize) -> Self {
        debug_assert!(align.is_power_of_two());
        Self::from(self.as_usize() & !(align.wrapping_sub(1)))
    }

    /// Rounds up to a multiple of `align`; `None` if `align` is not a power of two or the
    /// result would pass the top of the address space.
    #[inline]
    fn checked_align_up(self, align: usize) -> Option<Self> {
        if !align.is_power_of_two() {
            return None;
        }
        let mask = align - 1;
        self.as_usize()
            .checked_add(mask)
            .map(|v| Self::from(v & !mask))
    }

    /// Offset of the address within an `align`-sized block (a power of two).
    #[inline]
    fn align_offset(self, align: usize) -> usize {
        debug_assert!(align.is_power_of_two());
        self.as_usize() & align.wrapping_sub(1)
    }

    /// Whether the address is a multiple of `align`; `false` if `align` is not a power of two.
    #[inline]
    fn is_aligned(self, align: usize) -> bool {
        align.is_power_of_two() && self.as_usize() & (align - 1) == 0
    }

    /// Whether the address is 4 KiB aligned.
    #[inline]
    fn is_aligned_4k(self) -> bool {
        self.is_aligned(PAGE_SIZE_4K)
    }

    /// `self + offset`, or `None` past the top of the address space.
    #[inline]
    fn checked_add(self, offset: usize) -> Option<Self> {
        self.as_usize().checked_add(offset).map(Self::from)
    }

    /// `self - offset`, or `None` below zero.
    #[inline]
    fn checked_sub(self, offset: usize) -> Option<Self> {
        self.as_usize().checked_sub(offset).map(Self::from)
    }

    /// The distance `self - base`, or `None` if `base > self`.
    #[inline]
    fn checked_offset_from(self, base: Self) -> Option<usize> {
        self.as_usize().checked_sub(base.as_usize())
    }
}

macro_rules! define_addr {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(usize);

        impl $name {
            /// Wraps a raw address.
            #[inline]
            pub const fn new(addr: usize) -> Self {
                Self(addr)
            }

            /// The raw value.
            #[inline]
            pub const fn as_usize(self) -> usize {
                self.0
            }

            /// The raw value as `u64` (what hardware structures hold).
            #[inline]
            pub const fn as_u64(self) -> u64 {
                self.0 as u64
            }
        }

        impl From<usize> for $name {
            #[inline]
            fn from(v: usize) -> Self {
                Self(v)
            }
        }

        impl From<$name> for usize {
            #[inline]
            fn from(v: $name) -> usize {
                v.0
            }
        }

        impl MemoryAddr for $name {}

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ":{:#x}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

define_addr!(
    /// A guest-physical address: what the guest believes is physical memory, translated
    /// by the stage-2 (EPT/NPT) tables.
    GuestPhysAddr,
    "GPA"
);
define_addr!(
    /// A host-physical address: real (or emulated-real) memory owned by the hypervisor.
    HostPhysAddr,
    "HPA"
);

impl MemoryAddr for usize {}

/// A half-open range `[start, start + size)`, stored as start and size so that a range
/// ending exactly at the top of the address space (`2^64`) is representable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrRange<A: MemoryAddr> {
    start: A,
    size: usize,
}

impl<A: MemoryAddr> AddrRange<A> {
    /// `[start, end)`; `None` if `end < start`.
    #[inline]
    pub fn new(start: A, end: A) -> Option<Self> {
        let size = end.checked_offset_from(start)?;
        Some(Self { start, size })
    }

    /// `[start, start + size)`; `None` if the range would pass the top of the space
    /// (a range ending exactly at `2^64` is accepted).
    #[inline]
    pub fn from_start_size(start: A, size: usize) -> Option<Self> {
        if size > 0 {
            start.checked_add(size - 1)?;
        }
        Some(Self { start, size })
    }

    /// `[first, last]` given by its inclusive ends; `None` if `last < first` or the range
    /// would be the whole address space (its size does not fit in `usize`).
    #[inline]
    pub fn from_inclusive(first: A, last: A) -> Option<Self> {
        let size = last.checked_offset_from(first)?.checked_add(1)?;
        Some(Self { start: first, size })
    }

    /// The first address.
    #[inline]
    pub fn start(&self) -> A {
        self.start
    }

    /// The number of bytes.
    #[inline]
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the range holds no address.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// The exclusive end, or `None` when the range ends exactly at `2^64`.
    #[inline]
    pub fn end(&self) -> Option<A> {
        self.start.checked_add(self.size)
    }

    /// The inclusive last address, or `None` for an empty range. Never overflows.
    #[inline]
    pub fn last(&self) -> Option<A> {
        if self.size == 0 {
            None
        } else {
            // Cannot overflow: checked at construction.
            self.start.checked_add(self.size - 1)
        }
    }

    /// Whether `addr` lies in the range.
    #[inline]
    pub fn contains(&self, addr: A) -> bool {
        matches!(addr.checked_offset_from(self.start), Some(off) if off < self.size)
    }

    /// Whether every address of `other` lies in `self` (an empty `other` is contained
    /// when its start lies in `[start, end]`).
    #[inline]
    pub fn contains_range(&self, other: &Self) -> bool {
        match other.start.checked_offset_from(self.start) {
            Some(off) => off <= self.size && other.size <= self.size - off,
            None => false,
        }
    }

    /// Whether the two ranges share at least one address.
    #[inline]
    pub fn overlaps(&self, other: &Self) -> bool {
        match (self.last(), other.last()) {
            (Some(a_last), Some(b_last)) => self.start <= b_last && other.start <= a_last,
            _ => false,
        }
    }

    /// The common part of two ranges, or `None` if they do not overlap.
    pub fn intersection(&self, other: &Self) -> Option<Self> {
        if !self.overlaps(other) {
            return None;
        }
        let start = self.start.max(other.start);
        let last = self.last()?.min(other.last()?);
        let size = last.checked_offset_from(start)? + 1;
        Some(Self { start, size })
    }

    /// Whether both ends are multiples of `align` (a power of two).
    #[inline]
    pub fn is_aligned(&self, align: usize) -> bool {
        self.start.is_aligned(align) && self.size.is_aligned(align)
    }
}

impl<A: MemoryAddr> fmt::Debug for AddrRange<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.end() {
            Some(end) => write!(f, "[{:?}, {:?})", self.start, end),
            None => write!(f, "[{:?}, 2^64)", self.start),
        }
    }
}

/// Iterates over the `PAGE_SIZE`-aligned pages of `[start, end)`.
#[derive(Clone, Debug)]
pub struct PageIter<const PAGE_SIZE: usize, A: MemoryAddr> {
    next: A,
    remaining: usize,
}

/// Iterator over 4 KiB pages.
pub type PageIter4K<A> = PageIter<PAGE_SIZE_4K, A>;
/// Iterator over 2 MiB pages.
pub type PageIter2M<A> = PageIter<PAGE_SIZE_2M, A>;
/// Iterator over 1 GiB pages.
pub type PageIter1G<A> = PageIter<PAGE_SIZE_1G, A>;

impl<const PAGE_SIZE: usize, A: MemoryAddr> PageIter<PAGE_SIZE, A> {
    /// Pages `start, start + PAGE_SIZE, ...` below `end`; `None` unless `PAGE_SIZE` is a
    /// power of two, both ends are aligned to it and `start <= end`.
    pub fn new(start: A, end: A) -> Option<Self> {
        if !PAGE_SIZE.is_power_of_two()
            || !start.is_aligned(PAGE_SIZE)
            || !end.is_aligned(PAGE_SIZE)
        {
            return None;
        }
        let size = end.checked_offset_from(start)?;
        Some(Self {
            next: start,
            remaining: size / PAGE_SIZE,
        })
    }

    /// The pages of an aligned range (one ending at `2^64` included).
    pub fn from_range(range: AddrRange<A>) -> Option<Self> {
        if !PAGE_SIZE.is_power_of_two() || !range.is_aligned(PAGE_SIZE) {
            return None;
        }
        Some(Self {
            next: range.start(),
            remaining: range.size() / PAGE_SIZE,
        })
    }
}

impl<const PAGE_SIZE: usize, A: MemoryAddr> Iterator for PageIter<PAGE_SIZE, A> {
    type Item = A;

    #[inline]
    fn next(&mut self) -> Option<A> {
        if self.remaining == 0 {
            return None;
        }
        let page = self.next;
        self.remaining -= 1;
        if self.remaining > 0 {
            // Cannot overflow: the last page is at most 2^64 - PAGE_SIZE.
            self.next = page.checked_add(PAGE_SIZE)?;
        }
        Some(page)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<const PAGE_SIZE: usize, A: MemoryAddr> ExactSizeIterator for PageIter<PAGE_SIZE, A> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_and_checked_arith() {
        let a = GuestPhysAddr::new(0x1234);
        assert_eq!(a.align_down(0x1000), GuestPhysAddr::new(0x1000));
        assert_eq!(a.checked_align_up(0x1000), Some(GuestPhysAddr::new(0x2000)));
        assert_eq!(a.checked_align_up(0x1001), None);
        assert_eq!(a.align_offset(0x1000), 0x234);
        assert!(!a.is_aligned_4k());
        assert!(GuestPhysAddr::new(0x2000).is_aligned_4k());
        assert!(!GuestPhysAddr::new(0x2000).is_aligned(3));
        let top = GuestPhysAddr::new(usize::MAX - 0xfff);
        assert_eq!(top.checked_align_up(0x1000), Some(top));
        assert_eq!(
            GuestPhysAddr::new(usize::MAX).checked_align_up(0x1000),
            None
        );
        assert_eq!(top.checked_add(0x1000), None);
        assert_eq!(top.checked_add(0xfff), Some(GuestPhysAddr::new(usize::MAX)));
        assert_eq!(GuestPhysAddr::new(5).checked_sub(6), None);
        assert_eq!(
            GuestPhysAddr::new(5).checked_offset_from(GuestPhysAddr::new(2)),
            Some(3)
        );
        assert_eq!(
            GuestPhysAddr::new(2).checked_offset_from(GuestPhysAddr::new(5)),
            None
        );
    }

    #[test]
    fn hex_debug() {
        assert_eq!(format!("{:?}", GuestPhysAddr::new(0x1000)), "GPA:0x1000");
        assert_eq!(format!("{:?}", HostPhysAddr::new(0xabc)), "HPA:0xabc");
        assert_eq!(format!("{}", HostPhysAddr::new(0xabc)), "0xabc");
    }

    #[test]
    fn ranges() {
        let r = |s: usize, n: usize| AddrRange::from_start_size(GuestPhysAddr::new(s), n).unwrap();
        assert!(AddrRange::new(GuestPhysAddr::new(2), GuestPhysAddr::new(1)).is_none());
        assert!(AddrRange::from_start_size(GuestPhysAddr::new(usize::MAX), 2).is_none());
        let top = r(usize::MAX - 0xfff, 0x1000);
        assert_eq!(top.end(), None);
        assert_eq!(top.last(), Some(GuestPhysAddr::new(usize::MAX)));
        assert!(top.contains(GuestPhysAddr::new(usize::MAX)));
        assert!(r(0, usize::MAX).contains_range(&r(usize::MAX - 1, 1)));
        assert!(!r(0x1000, 0x1000).overlaps(&r(0x2000, 0x1000)));
        assert!(r(0x1000, 0x1001).overlaps(&r(0x2000, 0x1000)));
        assert!(!r(0x1000, 0).overlaps(&r(0x1000, 0x1000)));
        assert_eq!(
            r(0x1000, 0x2000).intersection(&r(0x2000, 0x4000)),
            Some(r(0x2000, 0x1000))
        );
        assert_eq!(r(0x1000, 0x1000).intersection(&r(0x2000, 0x1000)), None);
        assert_eq!(top.intersection(&top), Some(top));
        assert_eq!(
            AddrRange::from_inclusive(
                GuestPhysAddr::new(usize::MAX - 0xfff),
                GuestPhysAddr::new(usize::MAX)
            ),
            Some(top)
        );
        assert!(
            AddrRange::from_inclusive(GuestPhysAddr::new(0), GuestPhysAddr::new(usize::MAX))
                .is_none()
        );
        assert!(AddrRange::from_inclusive(GuestPhysAddr::new(2), GuestPhysAddr::new(1)).is_none());
        assert_eq!(
            AddrRange::from_inclusive(GuestPhysAddr::new(1), GuestPhysAddr::new(1))
                .map(|r| r.size()),
            Some(1)
        );
        assert!(r(0x1000, 0x1000).contains_range(&r(0x2000, 0)));
        assert!(!r(0x1000, 0x1000).contains_range(&r(0x1800, 0x1000)));
        assert_eq!(
            format!("{:?}", r(0x1000, 0x1000)),
            "[GPA:0x1000, GPA:0x2000)"
        );
    }

    #[test]
    fn page_iter() {
        let g = GuestPhysAddr::new;
        let pages: Vec<_> = PageIter4K::new(g(0x1000), g(0x4000)).unwrap().collect();
        assert_eq!(pages, vec![g(0x1000), g(0x2000), g(0x3000)]);
        assert!(PageIter4K::new(g(0x1001), g(0x4000)).is_none());
        assert!(PageIter4K::new(g(0x1000), g(0x4001)).is_none());
        assert!(PageIter::<0x3000, GuestPhysAddr>::new(g(0), g(0x6000)).is_none());
        assert!(PageIter4K::new(g(0x2000), g(0x1000)).is_none());
        assert_eq!(PageIter2M::new(g(0), g(0x40_0000)).unwrap().len(), 2);
        let top = AddrRange::from_start_size(g(usize::MAX - 0x1fff), 0x2000).unwrap();
        let pages: Vec<_> = PageIter4K::from_range(top).unwrap().collect();
        assert_eq!(pages, vec![g(usize::MAX - 0x1fff), g(usize::MAX - 0xfff)]);
    }
}
