//! [`MemorySet`]: the areas of one address space, kept in step with its page table.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Bound;

use crate::addr::{AddrRange, MemoryAddr};
use crate::area::{MemoryArea, SetResult, checked_range};
use crate::backend::MappingBackend;
use crate::error::{InvalidParam, MemorySetError};

mod gaps;
use gaps::{GapIndex, GapRef};

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
///
/// `Clone` copies the bookkeeping only (areas with clones of their backends, and the gap
/// index); it calls no backend and touches no page table.
#[derive(Clone)]
pub struct MemorySet<B: MappingBackend> {
    areas: BTreeMap<B::Addr, Slot<B>>,
    /// The free gap that starts at address 0 (before the first area), if any.
    head: Option<GapRef>,
    /// Every maximal free range once, by size class; each is referred to by the area it
    /// follows ([`Slot::gap`]) or by `head`.
    gaps: GapIndex,
}

/// An area and the free gap right after it (`None` when the next area is adjacent or
/// the area ends at `2^64`).
#[derive(Clone)]
struct Slot<B: MappingBackend> {
    area: MemoryArea<B>,
    gap: Option<GapRef>,
}

/// The free gap between `lo` (first free address; `None` when the area before ends at
/// `2^64`) and `hi` (start of the next area; `None` for the top of the space), as
/// `(first, last)` (inclusive, raw); `None` if the gap is empty.
fn gap_key(lo: Option<usize>, hi: Option<usize>) -> Option<(usize, usize)> {
    let first = lo?;
    let last = match hi {
        Some(h) if h <= first => return None,
        Some(h) => h - 1,
        None => usize::MAX,
    };
    Some((first, last))
}

/// Puts `area` into the free gap `gap` refers to (which must contain it): that gap
/// shrinks to the part before the area; the part after it is returned, for the area.
fn fill_gap<B: MappingBackend>(
    gaps: &mut GapIndex,
    gap: &mut Option<GapRef>,
    area: &MemoryArea<B>,
) -> Option<GapRef> {
    let (first, last) = gaps.get((*gap)?);
    let (start, area_last) = (area.start().as_usize(), area.last().as_usize());
    gaps.set(gap, (first < start).then(|| (first, start - 1)));
    let mut right = None;
    gaps.set(
        &mut right,
        (area_last < last).then(|| (area_last + 1, last)),
    );
    right
}

/// The part `piece` of an existing area that an operation acts on, with copies of what
/// the backend calls, their undo and the bookkeeping need (so the set itself is not
/// borrowed while the page table is edited). `new` is the target flags of `protect`.
struct Piece<B: MappingBackend> {
    area: AddrRange<B::Addr>,
    flags: B::Flags,
    backend: B,
    piece: AddrRange<B::Addr>,
    new: B::Flags,
}

impl<B: MappingBackend> Piece<B> {
    /// Whether part of the area is left before / after the piece.
    fn keeps(&self) -> (bool, bool) {
        let area_last = self.area.last().map(MemoryAddr::as_usize);
        let piece_last = self.piece.last().map(MemoryAddr::as_usize);
        (
            self.piece.start() > self.area.start(),
            piece_last < area_last,
        )
    }

    /// Raw inclusive ends of the area and of the piece.
    fn ends(&self) -> (usize, usize, usize, usize) {
        let first = |r: &AddrRange<B::Addr>| r.start().as_usize();
        let last = |r: &AddrRange<B::Addr>| first(r) + (r.size() - 1);
        (
            first(&self.area),
            last(&self.area),
            first(&self.piece),
            last(&self.piece),
        )
    }

    /// Asks the backend to prepare the cuts that acting on the piece alone makes in its
    /// area (at most one on each side).
    fn prepare_cuts(&self, page_table: &mut B::PageTable) -> Result<(), B::Error> {
        let (keep_left, keep_right) = self.keeps();
        if keep_left {
            self.backend
                .prepare_split(self.area, self.flags, self.piece.start(), page_table)?;
        }
        if keep_right && let Some(end) = self.piece.end() {
            self.backend
                .prepare_split(self.area, self.flags, end, page_table)?;
        }
        Ok(())
    }
}

/// Undoes the unmapping of `done` (newest first) after `cause`; the error to return.
fn undo_unmaps<B: MappingBackend>(
    done: &[Piece<B>],
    page_table: &mut B::PageTable,
    cause: B::Error,
) -> MemorySetError<B::Error> {
    for p in done.iter().rev() {
        if let Err(undo) = p
            .backend
            .map(p.piece.start(), p.piece.size(), p.flags, page_table)
        {
            return MemorySetError::UndoFailed { cause, undo };
        }
    }
    MemorySetError::Backend(cause)
}

/// Undoes the re-protection of `done` (newest first) after `cause`; the error to return.
fn undo_protects<B: MappingBackend>(
    done: &[Piece<B>],
    page_table: &mut B::PageTable,
    cause: B::Error,
) -> MemorySetError<B::Error> {
    for p in done.iter().rev() {
        if let Err(undo) =
            p.backend
                .protect(p.piece.start(), p.piece.size(), p.new, p.flags, page_table)
        {
            return MemorySetError::UndoFailed { cause, undo };
        }
    }
    MemorySetError::Backend(cause)
}

/// Prepares the cuts of every piece, then unmaps them in order; on error undoes the
/// unmaps already done (prepared cuts need no undo).
fn unmap_pieces<B: MappingBackend>(
    pieces: &[Piece<B>],
    page_table: &mut B::PageTable,
) -> Result<(), MemorySetError<B::Error>> {
    for p in pieces {
        p.prepare_cuts(page_table)
            .map_err(MemorySetError::Backend)?;
    }
    for (i, p) in pieces.iter().enumerate() {
        if let Err(e) = p.backend.unmap(p.piece.start(), p.piece.size(), page_table) {
            return Err(undo_unmaps(&pieces[..i], page_table, e));
        }
    }
    Ok(())
}

impl<B: MappingBackend> MemorySet<B> {
    /// An empty set.
    pub fn new() -> Self {
        let mut gaps = GapIndex::new();
        let mut head = None;
        gaps.set(&mut head, Some((0, usize::MAX)));
        Self {
            areas: BTreeMap::new(),
            head,
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
        self.areas.values().map(|slot| &slot.area)
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
                Some((&key, slot)) if slot.area.last() >= start => (key, last),
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
        inner.map(|(_, slot)| &slot.area)
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
            .map(|(_, slot)| &slot.area)
            .filter(|area| area.last() >= addr)
    }

    /// Checks the set's internal invariants in O(n log n): keys equal area starts, areas
    /// are non-empty and do not overlap, and the gap index holds exactly the free gaps.
    /// For tests and debugging; `Err` names the first broken invariant.
    pub fn validate(&self) -> Result<(), &'static str> {
        let mut free_from = Some(0usize);
        // The gap each area (and the head) refers to, with the free gap that follows it.
        let mut refs = Vec::with_capacity(self.areas.len() + 1);
        let mut before = self.head;
        for (&key, slot) in &self.areas {
            let area = &slot.area;
            if key != area.start() {
                return Err("an area is filed under a key other than its start");
            }
            if area.size() == 0 {
                return Err("an empty area");
            }
            let first = free_from.ok_or("an area after one that ends at 2^64")?;
            if area.start().as_usize() < first {
                return Err("two areas overlap");
            }
            refs.push((
                before,
                gap_key(Some(first), Some(area.start().as_usize())),
                "a free gap is missing from the gap index",
            ));
            before = slot.gap;
            free_from = area.end().map(MemoryAddr::as_usize);
        }
        refs.push((
            before,
            gap_key(free_from, None),
            "the free gap at the top is missing from the gap index",
        ));
        self.gaps.check(refs.into_iter())
    }

    /// Re-points the owners of the gaps a compaction of the gap index moved; run at the
    /// end of every operation that may free gaps. Amortized O(log n) per freed gap, and
    /// nothing at all unless some size class holds many holes.
    fn tidy(&mut self) {
        if !self.gaps.is_dirty() {
            return;
        }
        let (areas, head) = (&mut self.areas, &mut self.head);
        self.gaps.compact(|(first, _), r| {
            // A gap is owned by the area that ends where it starts, or by the head.
            let owner = match areas.range_mut(..B::Addr::from(first)).next_back() {
                Some((_, slot)) if first > 0 => &mut slot.gap,
                _ => &mut *head,
            };
            *owner = Some(r);
        });
    }

    /// Inserts an area that lies inside a free gap, updating the gap index.
    fn insert_area(&mut self, area: MemoryArea<B>) {
        let gap = match self.areas.range_mut(..area.start()).next_back() {
            Some((_, prev)) => &mut prev.gap,
            None => &mut self.head,
        };
        let right = fill_gap(&mut self.gaps, gap, &area);
        self.areas.insert(area.start(), Slot { area, gap: right });
    }

    /// The parts of existing areas inside `range`, in address order, each with the
    /// flags `new_flags` gives it; areas for which it returns `None` are left out.
    fn pieces(
        &self,
        range: AddrRange<B::Addr>,
        mut new_flags: impl FnMut(B::Flags) -> Option<B::Flags>,
    ) -> Vec<Piece<B>> {
        self.iter_overlapping(range)
            .filter_map(|area| {
                let new = new_flags(area.flags())?;
                Some(Piece {
                    area: area.va_range(),
                    flags: area.flags(),
                    backend: area.backend().clone(),
                    piece: area.va_range().intersection(&range)?,
                    new,
                })
            })
            .collect()
    }

    /// Bookkeeping of an unmap: what is left of each cut area stays (the left part in
    /// place, the right part with the gap that followed the area), each piece becomes
    /// free and merges with the free gaps on either side. Per piece: one lookup of the
    /// area, one insert for a right part, one lookup of the area before for a piece
    /// that starts the area; the gap index changes in O(1).
    fn commit_unmap(&mut self, pieces: Vec<Piece<B>>) {
        for p in pieces {
            let (keep_left, keep_right) = p.keeps();
            let (_, a_last, p_first, p_last) = p.ends();
            let key = p.area.start();
            let right = if keep_right {
                AddrRange::from_inclusive((p_last + 1).into(), a_last.into())
            } else {
                None
            };
            if keep_left {
                let Some(slot) = self.areas.get_mut(&key) else {
                    continue;
                };
                if let Some(left) = AddrRange::from_inclusive(key, (p_first - 1).into()) {
                    slot.area.set_range(left);
                }
                // The gap after the area moves to the right part, or joins the hole.
                let after = slot.gap;
                let hole_last = match (right, after) {
                    (Some(_), _) => {
                        slot.gap = None;
                        p_last
                    }
                    (None, Some(r)) => self.gaps.get(r).1,
                    (None, None) => p_last,
                };
                self.gaps.set(&mut slot.gap, Some((p_first, hole_last)));
                if let Some(right) = right {
                    let area = MemoryArea::from_range(right, p.flags, p.backend);
                    self.areas.insert(right.start(), Slot { area, gap: after });
                }
            } else {
                let Some(slot) = self.areas.remove(&key) else {
                    continue;
                };
                let hole_last = match (right, slot.gap) {
                    (Some(right), after) => {
                        let area = MemoryArea::from_range(right, p.flags, p.backend);
                        self.areas.insert(right.start(), Slot { area, gap: after });
                        p_last
                    }
                    (None, Some(r)) => {
                        let last = self.gaps.get(r).1;
                        self.gaps.remove(r);
                        last
                    }
                    (None, None) => p_last,
                };
                // The hole joins the gap before the area, held by the area before.
                let before = match self.areas.range_mut(..key).next_back() {
                    Some((_, prev)) => &mut prev.gap,
                    None => &mut self.head,
                };
                let hole_first = before.map_or(p_first, |r| self.gaps.get(r).0);
                self.gaps.set(before, Some((hole_first, hole_last)));
            }
        }
    }

    /// Bookkeeping of a protect: each piece becomes an area with its new flags, what is
    /// left on either side keeps the old ones. No free gap changes; the gap after a cut
    /// area moves to its last part.
    fn commit_protect(&mut self, pieces: Vec<Piece<B>>) {
        for p in pieces {
            let (keep_left, keep_right) = p.keeps();
            let (_, a_last, p_first, p_last) = p.ends();
            let key = p.area.start();
            let Some(slot) = self.areas.get_mut(&key) else {
                continue;
            };
            let mut after = if keep_left || keep_right {
                slot.gap.take()
            } else {
                None
            };
            if keep_left {
                if let Some(left) = AddrRange::from_inclusive(key, (p_first - 1).into()) {
                    slot.area.set_range(left);
                }
                let area = MemoryArea::from_range(p.piece, p.new, p.backend.clone());
                let gap = if keep_right { None } else { after.take() };
                self.areas.insert(p.piece.start(), Slot { area, gap });
            } else {
                slot.area.set_range(p.piece);
                slot.area.set_flags(p.new);
            }
            if keep_right
                && let Some(right) = AddrRange::from_inclusive((p_last + 1).into(), a_last.into())
            {
                let area = MemoryArea::from_range(right, p.flags, p.backend);
                self.areas.insert(right.start(), Slot { area, gap: after });
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
        if !unmap_overlap {
            // One lookup: the last area starting at or before the area's last address
            // must end before its start; then the area lies in the gap after that one.
            let gap = match self.areas.range_mut(..=area.last()).next_back() {
                Some((_, prev)) if prev.area.last() >= area.start() => None,
                Some((_, prev)) => Some(&mut prev.gap),
                None => Some(&mut self.head),
            };
            let Some(gap) = gap else {
                let existing = self.iter_overlapping(range).next().map(MemoryArea::start);
                return Err(MemorySetError::AlreadyExists {
                    existing_start: existing.unwrap_or(area.start()).as_usize(),
                });
            };
            area.map_area(page_table)?;
            let right = fill_gap(&mut self.gaps, gap, &area);
            self.areas.insert(area.start(), Slot { area, gap: right });
            self.tidy();
            return Ok(());
        }
        let pieces = self.pieces(range, Some);
        unmap_pieces(&pieces, page_table)?;
        if let Err(e) = area
            .backend()
            .map(area.start(), area.size(), area.flags(), page_table)
        {
            return Err(undo_unmaps(&pieces, page_table, e));
        }
        self.commit_unmap(pieces);
        self.insert_area(area);
        self.tidy();
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
        let pieces = self.pieces(range, Some);
        unmap_pieces(&pieces, page_table)?;
        self.commit_unmap(pieces);
        self.tidy();
        Ok(())
    }

    /// Changes the flags inside `[start, start + size)`.
    ///
    /// `update` gets each overlapping area's flags and returns the new ones, or `None` to
    /// leave that area alone; it is called once per area. An area whose flags do not
    /// change (`None`, or the same flags) is neither split nor passed to the backend. A
    /// changed area that crosses an end of the range is split there (up to three pieces
    /// for one area). On a backend error everything is undone.
    pub fn protect(
        &mut self,
        start: B::Addr,
        size: usize,
        mut update: impl FnMut(B::Flags) -> Option<B::Flags>,
        page_table: &mut B::PageTable,
    ) -> SetResult<B> {
        let range = checked_range::<B>(start, size)?;
        let pieces = self.pieces(range, |old| update(old).filter(|&new| new != old));
        for p in &pieces {
            p.prepare_cuts(page_table)
                .map_err(MemorySetError::Backend)?;
        }
        for (i, p) in pieces.iter().enumerate() {
            if let Err(e) =
                p.backend
                    .protect(p.piece.start(), p.piece.size(), p.flags, p.new, page_table)
            {
                return Err(undo_protects(&pieces[..i], page_table, e));
            }
        }
        self.commit_protect(pieces);
        Ok(())
    }

    /// Unmaps and removes every area; on a backend error everything is mapped back. O(n).
    pub fn clear(&mut self, page_table: &mut B::PageTable) -> SetResult<B> {
        for (i, area) in self.iter().enumerate() {
            if let Err(cause) = area.backend().unmap(area.start(), area.size(), page_table) {
                for done in self.iter().take(i).rev() {
                    let backend = done.backend();
                    if let Err(undo) =
                        backend.map(done.start(), done.size(), done.flags(), page_table)
                    {
                        return Err(MemorySetError::UndoFailed { cause, undo });
                    }
                }
                return Err(MemorySetError::Backend(cause));
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
    /// result and g the number of free gaps at least half as long as `size`: the set walks
    /// forward from `hint` and, in lock step, through the size classes of its gap index
    /// (powers of two) from the class of `size` up, and stops as soon as either walk is
    /// complete. So a free `hint` costs one O(log n) lookup, and so does a large request
    /// (few gaps are that large) or one that cannot be met.
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
        let mut by_size = self.gaps.at_least(size - 1);
        let mut best: Option<usize> = None;
        loop {
            // The size walk steps first: for a large request it is over after a few gaps,
            // before the address walk needs its second lookup.
            match by_size.next() {
                Some((first, last)) => {
                    if let Some(s) = fit(first, last) {
                        best = Some(best.map_or(s, |b| b.min(s)));
                    }
                }
                None => return best.map(Into::into).ok_or_else(no_memory),
            }
            match by_address.next() {
                Some((first, last)) => {
                    if let Some(s) = fit(first, last) {
                        return Ok(s.into());
                    }
                }
                None => return Err(no_memory()),
            }
        }
    }

    /// The free gaps `(first, last)` (inclusive, raw) that end at or after `lo`, in
    /// address order (the first one may start before `lo`). The first gap costs one
    /// lookup (the area at or before `lo` refers to the gap after it); the walk goes on
    /// through the following areas, one more lookup to start.
    fn gaps_from(&self, lo: B::Addr) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (mut first_gap, from, mut pos) = match self.areas.range(..=lo).next_back() {
            Some((&key, slot)) => (
                slot.gap,
                Bound::Excluded(key),
                slot.area.end().map(MemoryAddr::as_usize),
            ),
            None => (self.head, Bound::Unbounded, Some(0)),
        };
        // Whether the area after the gap taken from the index is still to be passed.
        let mut skip = false;
        let mut rest = None;
        core::iter::from_fn(move || {
            if let Some(r) = first_gap.take() {
                skip = true;
                return Some(self.gaps.get(r));
            }
            let rest = rest.get_or_insert_with(|| self.areas.range((from, Bound::Unbounded)));
            if skip {
                skip = false;
                // No area after the gap: it reached the top.
                pos = rest.next()?.1.area.end().map(MemoryAddr::as_usize);
            }
            loop {
                let first = pos?;
                match rest.next() {
                    Some((&start, slot)) => {
                        pos = slot.area.end().map(MemoryAddr::as_usize);
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
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests;
