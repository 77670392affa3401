//! Flush tokens: what a table change requires the caller to invalidate, and the
//! frames that left the table, handed back only once that is done.
//!
//! Every mutating table operation returns a [`Flush`]. [`Flush::complete`] runs the
//! caller's invalidation (INVEPT single-context, or the VMCB TLB_CONTROL on AMD),
//! then returns freed table frames to the allocator, then returns the unmapped
//! leaves ([`UnmappedLeaves`]) so the owner can release the memory behind them. No
//! other path hands those frames out, so none can be reused while a stale
//! translation may still reach it.

use alloc::vec::Vec;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr};

use crate::frame::FrameAlloc;
use crate::size::LeafSize;

/// What must be invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushScope {
    /// Every translation derived from this table (INVEPT single-context; NPT: flush
    /// this ASID).
    All,
    /// Translations of this guest-physical range (hardware without a by-address
    /// invalidation treats it as [`FlushScope::All`]).
    Range(AddrRange<GuestPhysAddr>),
}

/// A run of equally sized leaves that left the table, contiguous in both address
/// spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafRun {
    /// The first leaf's guest-physical address.
    pub gpa: GuestPhysAddr,
    /// The first leaf's host-physical address.
    pub hpa: HostPhysAddr,
    /// The size of each leaf.
    pub size: LeafSize,
    /// The number of leaves.
    pub count: usize,
}

/// One leaf that left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmappedLeaf {
    /// Its guest-physical address.
    pub gpa: GuestPhysAddr,
    /// The host-physical address it mapped.
    pub hpa: HostPhysAddr,
    /// Its size.
    pub size: LeafSize,
}

/// The leaves an operation removed, after their flush: the caller releases what they
/// mapped (or not: linear windows do not own their host memory).
#[must_use = "unmapped leaves may own frames that must be released"]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnmappedLeaves {
    runs: Vec<LeafRun>,
}

impl UnmappedLeaves {
    /// Whether no leaf was removed.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The number of leaves.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.count).sum()
    }

    /// The coalesced runs.
    pub fn runs(&self) -> &[LeafRun] {
        &self.runs
    }

    /// Every leaf, in removal order.
    pub fn iter(&self) -> impl Iterator<Item = UnmappedLeaf> + '_ {
        self.runs.iter().flat_map(|r| {
            (0..r.count).map(move |i| UnmappedLeaf {
                gpa: GuestPhysAddr::new(r.gpa.as_usize() + i * r.size.size()),
                hpa: HostPhysAddr::new(r.hpa.as_usize() + i * r.size.size()),
                size: r.size,
            })
        })
    }

    /// Appends `count` leaves, extending the last run when contiguous.
    pub(crate) fn push(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: LeafSize,
        count: usize,
    ) {
        if count == 0 {
            return;
        }
        if let Some(last) = self.runs.last_mut() {
            let bytes = last.count * last.size.size();
            if last.size == size
                && last.gpa.as_usize().wrapping_add(bytes) == gpa.as_usize()
                && last.hpa.as_usize().wrapping_add(bytes) == hpa.as_usize()
            {
                last.count += count;
                return;
            }
        }
        self.runs.push(LeafRun {
            gpa,
            hpa,
            size,
            count,
        });
    }

    fn append(&mut self, other: UnmappedLeaves) {
        for r in other.runs {
            self.push(r.gpa, r.hpa, r.size, r.count);
        }
    }
}

/// What a table change needs before its effects are safe: an invalidation, and
/// frames that may only be reused after it.
#[must_use = "stage-2 changes must be flushed, and the frames they free released"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flush {
    scope: Option<FlushScope>,
    freed_tables: Vec<HostPhysAddr>,
    unmapped: UnmappedLeaves,
}

impl Flush {
    /// Nothing to do.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether there is nothing to invalidate and no frame to hand back.
    pub fn is_empty(&self) -> bool {
        self.scope.is_none() && self.freed_tables.is_empty() && self.unmapped.is_empty()
    }

    /// What must be invalidated, if anything.
    pub fn scope(&self) -> Option<FlushScope> {
        self.scope
    }

    /// Table frames that will go back to the allocator on completion.
    pub fn freed_tables(&self) -> &[HostPhysAddr] {
        &self.freed_tables
    }

    /// The leaves that will be handed back on completion.
    pub fn unmapped(&self) -> &UnmappedLeaves {
        &self.unmapped
    }

    /// Combines two tokens: the union of their invalidations and frames.
    pub fn merge(mut self, other: Flush) -> Flush {
        if let Some(s) = other.scope {
            self.add_scope(s);
        }
        self.freed_tables.extend(other.freed_tables);
        self.unmapped.append(other.unmapped);
        self
    }

    /// Runs `invalidate` (only if something must be invalidated), then frees the table
    /// frames to `alloc`, then returns the unmapped leaves for the caller to release.
    pub fn complete(
        self,
        invalidate: impl FnOnce(FlushScope),
        alloc: &mut (impl FrameAlloc + ?Sized),
    ) -> UnmappedLeaves {
        if let Some(scope) = self.scope {
            invalidate(scope);
        }
        for f in self.freed_tables {
            alloc.dealloc_frame(f);
        }
        self.unmapped
    }

    /// Adds an invalidation of `range` (widening to the hull of both ranges).
    pub(crate) fn add_range(&mut self, start: GuestPhysAddr, size: usize) {
        if size == 0 {
            return;
        }
        match AddrRange::from_start_size(start, size) {
            Some(r) => self.add_scope(FlushScope::Range(r)),
            None => self.add_scope(FlushScope::All),
        }
    }

    /// Adds an invalidation of everything.
    pub(crate) fn add_all(&mut self) {
        self.scope = Some(FlushScope::All);
    }

    fn add_scope(&mut self, s: FlushScope) {
        self.scope = Some(match (self.scope, s) {
            (None, s) => s,
            (Some(FlushScope::All), _) | (_, FlushScope::All) => FlushScope::All,
            (Some(FlushScope::Range(a)), FlushScope::Range(b)) => {
                let start = a.start().min(b.start());
                let (Some(al), Some(bl)) = (a.last(), b.last()) else {
                    return;
                };
                let span = al.max(bl).as_usize() - start.as_usize();
                match span
                    .checked_add(1)
                    .and_then(|n| AddrRange::from_start_size(start, n))
                {
                    Some(r) => FlushScope::Range(r),
                    None => FlushScope::All,
                }
            }
        });
    }

    /// Records a table frame to free after the invalidation.
    pub(crate) fn add_freed_table(&mut self, frame: HostPhysAddr) {
        self.freed_tables.push(frame);
    }

    /// Records unmapped leaves (and their invalidation is recorded separately).
    pub(crate) fn add_unmapped(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: LeafSize,
        count: usize,
    ) {
        self.unmapped.push(gpa, hpa, size, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(a: usize) -> GuestPhysAddr {
        GuestPhysAddr::new(a)
    }

    #[test]
    fn empty_flush_does_not_invalidate() {
        let mut called = false;
        let mut a = crate::frame::HeapArena::new(4);
        let left = Flush::none().complete(|_| called = true, &mut a);
        assert!(!called);
        assert!(left.is_empty());
    }

    #[test]
    fn merge_hull_and_all() {
        let mut a = Flush::none();
        a.add_range(g(0x1000), 0x1000);
        let mut b = Flush::none();
        b.add_range(g(0x8000), 0x2000);
        let m = a.merge(b);
        assert_eq!(
            m.scope(),
            Some(FlushScope::Range(
                AddrRange::from_start_size(g(0x1000), 0x9000).unwrap()
            ))
        );
        let mut c = Flush::none();
        c.add_all();
        assert_eq!(m.merge(c).scope(), Some(FlushScope::All));
    }

    #[test]
    fn runs_coalesce() {
        let mut u = UnmappedLeaves::default();
        let h = HostPhysAddr::new;
        u.push(g(0), h(0x10_0000), LeafSize::Size4K, 2);
        u.push(g(0x2000), h(0x10_2000), LeafSize::Size4K, 3);
        u.push(g(0x5000), h(0x20_0000), LeafSize::Size4K, 1);
        u.push(g(0x20_0000), h(0x40_0000), LeafSize::Size2M, 1);
        assert_eq!(u.runs().len(), 3);
        assert_eq!(u.len(), 7);
        let v: Vec<_> = u.iter().collect();
        assert_eq!(v[4].gpa, g(0x4000));
        assert_eq!(v[4].hpa, h(0x10_4000));
        assert_eq!(v[6].size, LeafSize::Size2M);
    }

    #[test]
    fn complete_order_invalidate_then_free() {
        use crate::frame::FrameAlloc;
        let mut arena = crate::frame::HeapArena::new(4);
        let f = arena.alloc_frame().unwrap();
        let mut fl = Flush::none();
        fl.add_range(g(0), 0x1000);
        fl.add_freed_table(f);
        let probe = arena.clone();
        let left = fl.complete(
            |s| {
                assert_eq!(probe.in_use(), 1, "frame freed before invalidation");
                assert!(matches!(s, FlushScope::Range(_)));
            },
            &mut arena,
        );
        assert!(left.is_empty());
        assert_eq!(arena.in_use(), 0);
    }
}
