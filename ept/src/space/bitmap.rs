//! [`DirtyBitmap`]: one bit per 4 KiB page of a guest-physical range, with a summary
//! level so that finding and clearing the set bits costs what is set, not the range.

use alloc::vec::Vec;

use memory_set::{AddrRange, GuestPhysAddr, PAGE_SIZE_4K};

/// A set of 4 KiB pages of one guest-physical range: what a dirty-log harvest returns
/// (and what the space keeps between harvests).
///
/// Bit `i` stands for the page at `base + i * 4 KiB`. A summary word per 64 words
/// says which words are non-zero, so iterating and clearing skip empty parts: for
/// 1 GiB (262,144 pages) the bits take 32 KiB and the summary 512 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    base: usize,
    pages: usize,
    words: Vec<u64>,
    summary: Vec<u64>,
    count: usize,
}

impl DirtyBitmap {
    /// An empty bitmap covering no range (harvests size it).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty bitmap covering `range` (4 KiB aligned).
    pub fn for_range(range: AddrRange<GuestPhysAddr>) -> Self {
        let mut b = Self::new();
        b.reset(range);
        b
    }

    /// Makes this the empty bitmap of `range`, reusing its memory.
    pub fn reset(&mut self, range: AddrRange<GuestPhysAddr>) {
        let pages = range.size() / PAGE_SIZE_4K;
        let words = pages.div_ceil(64);
        if self.base == range.start().as_usize() && self.pages == pages {
            self.clear();
            return;
        }
        self.base = range.start().as_usize();
        self.pages = pages;
        self.words.clear();
        self.words.resize(words, 0);
        self.summary.clear();
        self.summary.resize(words.div_ceil(64), 0);
        self.count = 0;
    }

    /// The first page covered.
    pub fn base(&self) -> GuestPhysAddr {
        GuestPhysAddr::new(self.base)
    }

    /// The number of pages covered.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// The number of pages set.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether no page is set.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the page holding `gpa` is set (false outside the range).
    pub fn contains(&self, gpa: GuestPhysAddr) -> bool {
        self.index_of(gpa.as_usize())
            .is_some_and(|i| self.words[i / 64] & (1 << (i % 64)) != 0)
    }

    /// The set pages, in address order.
    pub fn iter(&self) -> impl Iterator<Item = GuestPhysAddr> + '_ {
        let mut next = 0;
        core::iter::from_fn(move || {
            let i = self.next_set(next)?;
            next = i + 1;
            Some(GuestPhysAddr::new(self.base + i * PAGE_SIZE_4K))
        })
    }

    /// The page index of `addr`, if it lies in the range.
    #[inline]
    fn index_of(&self, addr: usize) -> Option<usize> {
        let i = addr.checked_sub(self.base)? / PAGE_SIZE_4K;
        (i < self.pages).then_some(i)
    }

    /// Sets every page of `[start, start + size)` that lies in the range.
    #[inline]
    pub(crate) fn set_span(&mut self, start: usize, size: usize) {
        let end_addr = self.base + self.pages * PAGE_SIZE_4K;
        let lo = start.max(self.base);
        let hi = start.saturating_add(size).min(end_addr);
        if lo >= hi {
            return;
        }
        let (mut i, end) = (
            (lo - self.base) / PAGE_SIZE_4K,
            (hi - self.base).div_ceil(PAGE_SIZE_4K),
        );
        while i < end {
            let w = i / 64;
            let n = (end - i).min(64 - i % 64);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << (i % 64)
            };
            let old = self.words[w];
            self.words[w] = old | mask;
            self.count += (mask & !old).count_ones() as usize;
            self.summary[w / 64] |= 1 << (w % 64);
            i += n;
        }
    }

    /// The first set page index at or after `from`.
    pub(crate) fn next_set(&self, from: usize) -> Option<usize> {
        if from >= self.pages {
            return None;
        }
        let mut w = from / 64;
        let mut bits = self.words[w] & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            // The next non-empty word, through the summary.
            let s = (w + 1) / 64;
            let first = (w + 1) % 64;
            let mut sum = self.summary.get(s)?
                & if first == 0 {
                    u64::MAX
                } else {
                    u64::MAX << first
                };
            let mut si = s;
            while sum == 0 {
                si += 1;
                sum = *self.summary.get(si)?;
            }
            w = si * 64 + sum.trailing_zeros() as usize;
            bits = self.words[w];
        }
    }

    /// Clears every bit, touching only the words the summary marks.
    pub fn clear(&mut self) {
        for (si, s) in self.summary.iter_mut().enumerate() {
            let mut m = *s;
            while m != 0 {
                let w = si * 64 + m.trailing_zeros() as usize;
                self.words[w] = 0;
                m &= m - 1;
            }
            *s = 0;
        }
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: usize, size: usize) -> AddrRange<GuestPhysAddr> {
        AddrRange::from_start_size(GuestPhysAddr::new(start), size).unwrap()
    }

    #[test]
    fn set_iterate_clear() {
        let mut b = DirtyBitmap::for_range(range(0x10_0000, 1 << 30));
        b.set_span(0x10_0000, 0x1000);
        b.set_span(0x10_0000 + 0x3f_f000, 0x3000); // crosses a word
        b.set_span(0x10_0000 + (1 << 29), 0x20_0000); // 512 pages
        b.set_span(0, 0x20_0000); // partly below the range
        b.set_span(0x10_0000 + (1 << 30) - 0x1000, 0x10_0000); // partly above
        let v: Vec<usize> = b.iter().map(|g| g.as_usize()).collect();
        assert_eq!(b.count(), v.len());
        assert_eq!(v.len(), 1 + 3 + 512 + 0xff + 1);
        assert_eq!(v[0], 0x10_0000);
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        assert!(b.contains(GuestPhysAddr::new(0x10_0000 + (1 << 29) + 0x1f_f000)));
        assert!(!b.contains(GuestPhysAddr::new(0xf_f000)));
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.iter().count(), 0);
        assert!(b.words.iter().all(|&w| w == 0));
    }

    #[test]
    fn next_set_matches_a_scan() {
        let mut b = DirtyBitmap::for_range(range(0, 64 * 64 * 3 * 4096 + 5 * 4096));
        let picks = [0usize, 63, 64, 4095, 4096, 8191, 12000, 12292];
        for p in picks {
            b.set_span(p * 4096, 4096);
        }
        let v: Vec<usize> = b.iter().map(|g| g.as_usize() / 4096).collect();
        assert_eq!(v, picks);
        assert_eq!(b.next_set(12001), Some(12292));
        assert_eq!(b.next_set(12293), None);
    }
}
