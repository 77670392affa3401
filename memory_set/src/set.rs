//! [`MemorySet`]: the areas of one address space, kept in step with its page table.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{AddrRange, MemoryAddr};
use crate::area::{MemoryArea, SetResult, checked_range};
use crate::backend::MappingBackend;
use crate::error::{InvalidParam, MemorySetError};

/// A set of non-overlapping [`MemoryArea`]s, ordered by start address, plus an index of
/// the free gaps between them.
///
/// Costs (n areas, k areas touched by the call): [`find`](Self::find),
/// [`overlaps`](Self::overlaps) O(log n); [`map`](Self::map) O(log n) (+ k log n when it
/// replaces k areas); [`unmap`](Self::unmap), [`protect`](Self::protect) O((k + 1) log n),
/// never a scan of all areas; [`find_free_area`](Self::find_free_area) see there.
///
/// Every operation is transactional: on error the set and the page table are as before
/// (given the backend contract in [`MappingBackend`]).
pub struct MemorySet<B: MappingBackend> {
    areas: BTreeMap<B::Addr, MemoryArea<B>>,
    /// Every maximal free range, as `(last - first, first)` (inclusive ends, raw
    /// addresses), so the gaps of at least a given size form a suffix of the set.
    gaps: BTreeSet<(usize, usize)>,
}

/// The free gap between `lo` (first free address; `None` when the area before ends at
/// `2^64`) and `hi` (start of the next area; `None` for the top of the space), as a
/// gap-index key; `None` if the gap is empty.
fn gap_key(lo: Option<usize>, hi: Option<usize>) -> Option<(usize, usize)> {
    let first = lo?;
    let last = match hi {
        Some(h) if h <= first => return None,
        Some(h) => h - 1,
        None => usize::MAX,
    };
    Some((last - first, first))
}

/// One backend call already made by the current operation, with what undoes it.
enum Step<'a, B: MappingBackend> {
    Unmapped {
        backend: &'a B,
        range: AddrRange<B::Addr>,
        flags: B::Flags,
    },
    Protected {
        backend: &'a B,
        range: AddrRange<B::Addr>,
        old: B::Flags,
        new: B::Flags,
    },
}

/// The undo log of one operation.
struct Log<'a, B: MappingBackend> {
    steps: Vec<Step<'a, B>>,
}

impl<'a, B: MappingBackend> Log<'a, B> {
    fn new() -> Self {
        Self { steps: Vec::new() }
    }

    /// Undoes every logged step, newest first, and turns `cause` into the error to return.
    fn rollback(self, page_table: &mut B::PageTable, cause: B::Error) -> MemorySetError<B::Error> {
        for step in self.steps.into_iter().rev() {
            let undone = match step {
                Step::Unmapped {
                    backend,
                    range,
                    flags,
                } => backend.map(range.start(), range.size(), flags, page_table),
                Step::Protected {
                    backend,
                    range,
                    old,
                    new,
                } => backend.protect(range.start(), range.size(), new, old, page_table),
            };
            if let Err(undo) = undone {
                return MemorySetError::UndoFailed { cause, undo };
            }
        }
        MemorySetError::Backend(cause)
    }
}

/// Part `piece` of `area` that an operation acts on.
struct Piece<'a, B: MappingBackend> {
    area: &'a MemoryArea<B>,
    piece: AddrRange<B::Addr>,
}

/// What the bookkeeping phase needs of a [`Piece`]: the area's key and the piece.
type Cut<A> = (A, AddrRange<A>);

impl<B: MappingBackend> MemorySet<B> {
    /// An empty set.
    pub fn new() -> Self {
        let mut gaps = BTreeSet::new();
        gaps.insert((usize::MAX, 0));
        Self {
            areas: BTreeMap::new(),
            gaps,
        }
    }

    /// The number of areas.
    pub fn len(&self) -> usize {
        self.areas.len()
    }

    /// Whether the set holds no area.
    pub fn is_empty(&self) -> bool {
        self.areas.is_empty()
    }

    /// The areas in address order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &MemoryArea<B>> + ExactSizeIterator {
        self.areas.values()
    }

    /// The areas that share at least one address with `range`, in address order.
    /// O(log n) to start, O(1) per area.
    pub fn iter_overlapping(
        &self,
        range: AddrRange<B::Addr>,
    ) -> impl DoubleEndedIterator<Item = &MemoryArea<B>> {
        let start = range.start();
        let (from, last) = match range.last() {
            Some(last) => match self.areas.range(..start).next_back() {
                Some((&key, area)) if area.last() >= start => (key, last),
                _ => (start, last),
            },
            // Empty range: an empty iteration.
            None => (start, start),
        };
        let inner = if range.is_empty() {
            self.areas.range(from..from)
        } else {
            self.areas.range(from..=last)
        };
        inner.map(|(_, area)| area)
    }

    /// Whether any area shares an address with `range`. O(log n).
    pub fn overlaps(&self, range: AddrRange<B::Addr>) -> bool {
        self.iter_overlapping(range).next().is_some()
    }

    /// The area containing `addr`. O(log n).
    pub fn find(&self, addr: B::Addr) -> Option<&MemoryArea<B>> {
        self.areas
            .range(..=addr)
            .next_back()
            .map(|(_, area)| area)
            .filter(|area| area.last() >= addr)
    }

    /// Inserts an area (no overlap with existing ones) and updates the gap index.
    fn insert_area(&mut self, area: MemoryArea<B>) {
        let start = area.start();
        let prev_end = match self.areas.range(..start).next_back() {
            Some((_, prev)) => prev.end().map(MemoryAddr::as_usize),
            None => Some(0),
        };
        let next_start = self.areas.range(start..).next().map(|(k, _)| k.as_usize());
        if let Some(key) = gap_key(prev_end, next_start) {
            self.gaps.remove(&key);
        }
        if let Some(key) = gap_key(prev_end, Some(start.as_usize())) {
            self.gaps.insert(key);
        }
        if let Some(key) = gap_key(area.end().map(MemoryAddr::as_usize), next_start) {
            self.gaps.insert(key);
        }
        self.areas.insert(start, area);
    }

    /// Removes the area starting at `start` and updates the gap index.
    fn remove_area(&mut self, start: B::Addr) -> Option<MemoryArea<B>> {
        let area = self.areas.remove(&start)?;
        let prev_end = match self.areas.range(..start).next_back() {
            Some((_, prev)) => prev.end().map(MemoryAddr::as_usize),
            None => Some(0),
        };
        let next_start = self.areas.range(start..).next().map(|(k, _)| k.as_usize());
        if let Some(key) = gap_key(prev_end, Some(start.as_usize())) {
            self.gaps.remove(&key);
        }
        if let Some(key) = gap_key(area.end().map(MemoryAddr::as_usize), next_start) {
            self.gaps.remove(&key);
        }
        if let Some(key) = gap_key(prev_end, next_start) {
            self.gaps.insert(key);
        }
        Some(area)
    }

    /// The parts of existing areas inside `range`, in address order.
    fn pieces(&self, range: AddrRange<B::Addr>) -> Vec<Piece<'_, B>> {
        self.iter_overlapping(range)
            .filter_map(|area| {
                let piece = area.va_range().intersection(&range)?;
                Some(Piece { area, piece })
            })
            .collect()
    }

    /// Asks the backend to prepare the cuts that acting on `piece` alone will make in
    /// `area` (at most one on each side).
    fn prepare_cuts(
        area: &MemoryArea<B>,
        piece: AddrRange<B::Addr>,
        page_table: &mut B::PageTable,
    ) -> Result<(), B::Error> {
        if piece.start() > area.start() {
            area.backend().prepare_split(
                area.va_range(),
                area.flags(),
                piece.start(),
                page_table,
            )?;
        }
        if let Some(end) = piece.end()
            && end <= area.last()
        {
            area.backend()
                .prepare_split(area.va_range(), area.flags(), end, page_table)?;
        }
        Ok(())
    }

    /// Backend phase of removing `pieces`: cuts first (fallible, nothing to undo), then
    /// one unmap per piece, each logged.
    fn unmap_pieces<'a>(
        pieces: &[Piece<'a, B>],
        page_table: &mut B::PageTable,
        log: &mut Log<'a, B>,
    ) -> Result<(), B::Error> {
        for p in pieces {
            Self::prepare_cuts(p.area, p.piece, page_table)?;
        }
        for p in pieces {
            let backend = p.area.backend();
            backend.unmap(p.piece.start(), p.piece.size(), page_table)?;
            log.steps.push(Step::Unmapped {
                backend,
                range: p.piece,
                flags: p.area.flags(),
            });
        }
        Ok(())
    }

    /// Bookkeeping phase: replaces each cut area by what is left of it outside its piece,
    /// and, with `new_flags`, by the piece itself carrying the new flags.
    fn commit_cuts(&mut self, cuts: &[Cut<B::Addr>], new_flags: Option<&[B::Flags]>) {
        for (i, &(key, piece)) in cuts.iter().enumerate() {
            let Some(area) = self.remove_area(key) else {
                continue;
            };
            let (a_first, a_last) = (area.start().as_usize(), area.last().as_usize());
            let p_first = piece.start().as_usize();
            let p_last = p_first + (piece.size() - 1);
            if p_first > a_first
                && let Some(r) = AddrRange::from_inclusive(area.start(), (p_first - 1).into())
            {
                let left = MemoryArea::from_range(r, area.flags(), area.backend().clone());
                self.insert_area(left);
            }
            if p_last < a_last
                && let Some(r) = AddrRange::from_inclusive((p_last + 1).into(), area.last())
            {
                let right = MemoryArea::from_range(r, area.flags(), area.backend().clone());
                self.insert_area(right);
            }
            if let Some(&flags) = new_flags.and_then(|f| f.get(i)) {
                self.insert_area(MemoryArea::from_range(piece, flags, area.backend().clone()));
            }
        }
    }

    /// Adds `area` and maps it.
    ///
    /// If it overlaps existing areas: with `unmap_overlap` they are cut back (unmapped,
    /// shrunk or split) first, otherwise [`MemorySetError::AlreadyExists`] names one of
    /// them. On a backend error everything is undone (a replaced range is mapped back).
    pub fn map(
        &mut self,
        area: MemoryArea<B>,
        page_table: &mut B::PageTable,
        unmap_overlap: bool,
    ) -> SetResult<B> {
        let range = area.va_range();
        let cuts: Vec<Cut<B::Addr>> = {
            let pieces = self.pieces(range);
            if let Some(p) = pieces.first()
                && !unmap_overlap
            {
                return Err(MemorySetError::AlreadyExists {
                    existing_start: p.area.start().as_usize(),
                });
            }
            let mut log = Log::new();
            if let Err(e) = Self::unmap_pieces(&pieces, page_table, &mut log) {
                return Err(log.rollback(page_table, e));
            }
            if let Err(e) = area
                .backend()
                .map(area.start(), area.size(), area.flags(), page_table)
            {
                return Err(log.rollback(page_table, e));
            }
            pieces.iter().map(|p| (p.area.start(), p.piece)).collect()
        };
        self.commit_cuts(&cuts, None);
        self.insert_area(area);
        Ok(())
    }

    /// Unmaps `[start, start + size)`: areas inside it are removed, areas crossing an end
    /// are shrunk, an area containing the whole range is split in two. Addresses without
    /// an area are skipped (unmapping nothing is `Ok`). On a backend error everything is
    /// undone (unmapped pieces are mapped back).
    ///
    /// Errors: [`InvalidParam`] for a zero size, unaligned input or a range past the top.
    pub fn unmap(
        &mut self,
        start: B::Addr,
        size: usize,
        page_table: &mut B::PageTable,
    ) -> SetResult<B> {
        let range = checked_range::<B>(start, size)?;
        let cuts: Vec<Cut<B::Addr>> = {
            let pieces = self.pieces(range);
            let mut log = Log::new();
            if let Err(e) = Self::unmap_pieces(&pieces, page_table, &mut log) {
                return Err(log.rollback(page_table, e));
            }
            pieces.iter().map(|p| (p.area.start(), p.piece)).collect()
        };
        self.commit_cuts(&cuts, None);
        Ok(())
    }

    /// Changes the flags inside `[start, start + size)`.
    ///
    /// `update` gets each overlapping area's flags and returns the new ones, or `None` to
    /// leave that area alone. An area whose flags do not change (`None`, or the same
    /// flags) is neither split nor passed to the backend. A changed area that crosses an
    /// end of the range is split there (up to three pieces for one area). On a backend
    /// error everything is undone.
    pub fn protect(
        &mut self,
        start: B::Addr,
        size: usize,
        mut update: impl FnMut(B::Flags) -> Option<B::Flags>,
        page_table: &mut B::PageTable,
    ) -> SetResult<B> {
        let range = checked_range::<B>(start, size)?;
        let (cuts, flags): (Vec<Cut<B::Addr>>, Vec<B::Flags>) = {
            let mut pieces = self.pieces(range);
            let mut flags = Vec::with_capacity(pieces.len());
            pieces.retain(|p| match update(p.area.flags()) {
                Some(new) if new != p.area.flags() => {
                    flags.push(new);
                    true
                }
                _ => false,
            });
            let mut log = Log::new();
            for p in &pieces {
                if let Err(e) = Self::prepare_cuts(p.area, p.piece, page_table) {
                    return Err(log.rollback(page_table, e));
                }
            }
            for (p, &new) in pieces.iter().zip(&flags) {
                let backend = p.area.backend();
                let old = p.area.flags();
                if let Err(e) =
                    backend.protect(p.piece.start(), p.piece.size(), old, new, page_table)
                {
                    return Err(log.rollback(page_table, e));
                }
                log.steps.push(Step::Protected {
                    backend,
                    range: p.piece,
                    old,
                    new,
                });
            }
            let cuts = pieces.iter().map(|p| (p.area.start(), p.piece)).collect();
            (cuts, flags)
        };
        self.commit_cuts(&cuts, Some(&flags));
        Ok(())
    }

    /// Unmaps and removes every area; on a backend error everything is mapped back. O(n).
    pub fn clear(&mut self, page_table: &mut B::PageTable) -> SetResult<B> {
        {
            let mut log = Log::new();
            for area in self.areas.values() {
                let backend = area.backend();
                if let Err(e) = backend.unmap(area.start(), area.size(), page_table) {
                    return Err(log.rollback(page_table, e));
                }
                log.steps.push(Step::Unmapped {
                    backend,
                    range: area.va_range(),
                    flags: area.flags(),
                });
            }
        }
        *self = Self::new();
        Ok(())
    }

    /// Serves a fault at `addr` with the attempted `access`: finds the area and lets its
    /// backend decide. [`MemorySetError::NotFound`] if no area contains `addr`.
    pub fn handle_fault(
        &self,
        addr: B::Addr,
        access: B::Flags,
        page_table: &mut B::PageTable,
    ) -> SetResult<B> {
        let area = self.find(addr).ok_or(MemorySetError::NotFound {
            addr: addr.as_usize(),
        })?;
        area.backend()
            .handle_fault(area.va_range(), area.flags(), addr, access, page_table)
            .map_err(MemorySetError::Backend)
    }

    /// The lowest start `s >= hint` such that `s` is a multiple of `align` (and of the
    /// backend page size), `[s, s + size)` lies inside `limit`, and no area overlaps it.
    ///
    /// Errors: [`InvalidParam`] for a zero or unaligned size or an `align` that is not a
    /// power of two; [`MemorySetError::NoMemory`] when no such range exists.
    ///
    /// Cost: O(log n + min(a, g)), where a is the number of areas between `hint` and the
    /// result and g the number of free gaps at least `size` long: the set walks forward
    /// from `hint` and, in lock step, through its gap index from the gaps of at least
    /// `size` bytes, and stops as soon as either walk is complete. So a free `hint` costs
    /// O(log n), and so does a large request (few gaps are that large) or one that
    /// cannot be met.
    pub fn find_free_area(
        &self,
        hint: B::Addr,
        size: usize,
        limit: AddrRange<B::Addr>,
        align: usize,
    ) -> SetResult<B, B::Addr> {
        if size == 0 {
            return Err(MemorySetError::invalid(InvalidParam::ZeroSize));
        }
        if !align.is_power_of_two() {
            return Err(MemorySetError::invalid(InvalidParam::AlignNotPowerOfTwo {
                align,
            }));
        }
        if !size.is_aligned(B::PAGE_SIZE) {
            return Err(MemorySetError::invalid(InvalidParam::Unaligned {
                page_size: B::PAGE_SIZE,
            }));
        }
        let no_memory = || MemorySetError::NoMemory { size };
        let align = align.max(B::PAGE_SIZE);
        let limit_last = limit.last().ok_or_else(no_memory)?.as_usize();
        let lo = hint
            .max(limit.start())
            .checked_align_up(align)
            .ok_or_else(no_memory)?
            .as_usize();
        if lo > limit_last {
            return Err(no_memory());
        }
        // Where a range of `size` bytes would start in the free gap [first, last], if it fits.
        let fit = |first: usize, last: usize| -> Option<usize> {
            let s = first.max(lo).checked_next_multiple_of(align)?;
            let s_last = s.checked_add(size - 1)?;
            (s_last <= last && s_last <= limit_last).then_some(s)
        };

        // Walk 1: the free gaps from `lo` upwards, in address order; the first fit wins.
        let mut by_address = self
            .gaps_from(lo.into())
            .take_while(|&(first, _)| first <= limit_last);
        // Walk 2: every gap of at least `size` bytes; the lowest fit wins.
        let mut by_size = self.gaps.range((size - 1, 0)..);
        let mut best: Option<usize> = None;
        loop {
            match by_address.next() {
                Some((first, last)) => {
                    if let Some(s) = fit(first, last) {
                        return Ok(s.into());
                    }
                }
                None => return Err(no_memory()),
            }
            match by_size.next() {
                Some(&(len, first)) => {
                    if let Some(s) = fit(first, first + len) {
                        best = Some(best.map_or(s, |b| b.min(s)));
                    }
                }
                None => return best.map(Into::into).ok_or_else(no_memory),
            }
        }
    }

    /// The free gaps `(first, last)` (inclusive, raw) that end at or after `lo`, in
    /// address order; the first one is clipped to start at `lo`.
    fn gaps_from(&self, lo: B::Addr) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut pos: Option<usize> = match self.find(lo) {
            Some(area) => area.end().map(MemoryAddr::as_usize),
            None => Some(lo.as_usize()),
        };
        let mut after = self.areas.range(lo..);
        core::iter::from_fn(move || {
            loop {
                let first = pos?;
                match after.next() {
                    Some((&start, area)) => {
                        pos = area.end().map(MemoryAddr::as_usize);
                        if start.as_usize() > first {
                            return Some((first, start.as_usize() - 1));
                        }
                    }
                    None => {
                        pos = None;
                        return Some((first, usize::MAX));
                    }
                }
            }
        })
    }
}

impl<B: MappingBackend> Default for MemorySet<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: MappingBackend> fmt::Debug for MemorySet<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.areas.values()).finish()
    }
}

#[cfg(test)]
mod tests;
