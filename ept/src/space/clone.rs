//! `try_clone`: a copy-on-write clone of an address space.

use alloc::vec::Vec;
use core::mem::ManuallyDrop;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, MemorySet, PAGE_SIZE_4K};

use super::backend::{AreaFlags, Backend, BackendKind};
use super::budget::Budget;
use super::error::SpaceError;
use super::state::{Inner, State, set_err};
use super::{AddressSpace, Invalidate};
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper, copy_frame};
use crate::size::LeafSize;
use crate::table::{Leaf, TableError};

type Parts<F, M, A, I> = (MemorySet<Backend<F, M, A, I>>, State<F, M, A, I>);

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate + Clone,
{
    /// [`AddressSpace::try_clone_with`] with a clone of this space's invalidation
    /// handle.
    pub fn try_clone(&self) -> Result<Self, SpaceError> {
        let invalidate = self.inner.lock().st.invalidate.clone();
        self.try_clone_with(invalidate)
    }
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// A new space with the same window, areas and contents, sharing RAM frames
    /// copy-on-write (read-only in both until written), linear windows mapped as they
    /// are, and owned regions copied into private frames (they become plain RAM areas
    /// in the clone). The clone uses `invalidate`.
    ///
    /// The clone joins this space's family: the quota and bookkeeping budget of
    /// [`Limits`](super::Limits) hold for the family as a whole. A frame shared
    /// copy-on-write counts once; the clone's tables, owned-region copies and later
    /// copy-on-write copies count as new frames. The clone's areas and the entries
    /// for shared frames (in both spaces) count against the bookkeeping budget.
    ///
    /// Transactional: the whole clone is built before the parent changes; out of
    /// frames or bookkeeping leaves the parent exactly as it was. Should
    /// write-protecting the parent fail (a table bug), the clone is dropped and the
    /// error returned; some parent leaves may then be read-only, which its next
    /// write fault restores.
    pub fn try_clone_with(&self, invalidate: I) -> Result<Self, SpaceError> {
        let mut inner = self.inner.lock();
        inner.sync_metadata();
        let parts = inner.clone_parts(invalidate, None);
        inner.sync_metadata();
        let (set, st) = super::debug_validated(&inner, parts)?;
        let window = inner.window;
        drop(inner);
        let child = Self::from_state(window, set, st);
        let mut locked = child.inner.lock();
        locked.sync_metadata();
        super::debug_validated(&locked, Ok(()))?;
        drop(locked);
        Ok(child)
    }
}

impl<F, M, A, I> Inner<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// The parts of a copy-on-write clone. `budget`: the family's own (`None`, a
    /// clone) or a separate one (a snapshot, which charges its parent its own way).
    pub(crate) fn clone_parts(
        &mut self,
        invalidate: I,
        budget: Option<Budget>,
    ) -> Result<Parts<F, M, A, I>, SpaceError> {
        // Bookkeeping first, before any of it is allocated: the child's areas, one
        // entry per shared chunk in the child, and one in the parent for every frame
        // that becomes shared now.
        let (chunks, untracked) = self.shared_entries();
        self.st
            .alloc
            .budget
            .metadata_room(self.set.len() + chunks + untracked)?;
        let mapper = self.st.table.mapper().clone();
        let mut child = State::new(
            mapper,
            self.st.alloc.host.clone(),
            invalidate,
            self.st.caps,
            budget.unwrap_or_else(|| self.st.alloc.budget.clone()),
        )?;
        let mut set = MemorySet::new();
        let mut copies: Vec<HostPhysAddr> = Vec::new();
        let areas: Vec<_> = self
            .set
            .iter()
            .map(|a| (a.va_range(), a.flags(), a.backend().kind))
            .collect();
        // Phase 1: the child's areas and table; the parent is only read.
        let built = self.build_child(&areas, &mut child, &mut set, &mut copies);
        if let Err(e) = built {
            abandon(child, copies);
            return Err(e);
        }
        // Phase 2: write-protect the parent's RAM (exact areas: no split, no
        // allocation). Read-only leaves over private frames are harmless (a write
        // fault restores them), so a failure here only drops the child.
        let mut flush = crate::flush::Flush::none();
        for (range, flags, kind) in &areas {
            if !kind.is_ram() || flags.owner != 0 || !flags.attr.access.contains(Access::WRITE) {
                continue;
            }
            if self.st.table.leaves_in(*range).next().is_none() {
                continue;
            }
            let ro = LeafAttr {
                access: flags.attr.access.difference(Access::WRITE),
                ..flags.attr
            };
            let r = self.st.metered(range.start(), |table, meter| {
                table.protect_range(meter, range.start(), range.size(), ro)
            });
            match r {
                Ok(f) => flush = flush.merge(f),
                Err(e) => {
                    self.st.finish(flush, false);
                    abandon(child, copies);
                    return Err(e);
                }
            }
        }
        self.st.finish(flush, false);
        // Phase 3: share the frames (bookkeeping only; its room was checked).
        for (range, flags, kind) in &areas {
            if kind.is_window() {
                // Shared windows stay shared: one more reference, rights unchanged.
                for leaf in self.st.table.leaves_in(*range).collect::<Vec<Leaf>>() {
                    self.st
                        .book
                        .share_leaf_with(leaf.hpa, leaf.size, &mut child.book);
                }
                continue;
            }
            if !kind.is_ram() || flags.owner != 0 {
                continue;
            }
            let leaves: Vec<Leaf> = self.st.table.leaves_in(*range).collect();
            for leaf in &leaves {
                self.st
                    .book
                    .share_leaf_with(leaf.hpa, leaf.size, &mut child.book);
            }
        }
        child.replay = false;
        child.zero.inherit_setting(&self.st.zero);
        Ok((set, child))
    }

    /// Bookkeeping entries sharing the RAM leaves needs: (chunks the child will
    /// track, leaves the parent does not track yet).
    fn shared_entries(&self) -> (usize, usize) {
        let mut bases = Vec::new();
        let mut untracked = 0;
        for a in self.set.iter() {
            if !a.backend().kind.owns_frames() || a.flags().owner != 0 {
                continue;
            }
            for leaf in self.st.table.leaves_in(a.va_range()) {
                match self.st.book.chunk_of(leaf.hpa) {
                    Some((base, _)) => bases.push(base),
                    None => untracked += 1,
                }
            }
        }
        bases.sort_unstable();
        bases.dedup();
        (bases.len() + untracked, untracked)
    }

    fn build_child(
        &self,
        areas: &[(AddrRange<GuestPhysAddr>, AreaFlags, BackendKind)],
        child: &mut State<F, M, A, I>,
        set: &mut MemorySet<Backend<F, M, A, I>>,
        copies: &mut Vec<HostPhysAddr>,
    ) -> Result<(), SpaceError> {
        child.replay = true;
        // The areas: a copy of the bookkeeping; owned areas become plain RAM (a
        // relabel of whole areas, which the replaying child state ignores).
        *set = self.set.clone();
        for &(range, flags, _) in areas {
            if flags.owner != 0 {
                set.protect(
                    range.start(),
                    range.size(),
                    |f| Some(AreaFlags { owner: 0, ..f }),
                    child,
                )
                .map_err(|e| set_err(e, range.start(), range.size()))?;
            }
        }
        for &(range, flags, kind) in areas {
            for leaf in self.st.table.leaves_in(range) {
                match kind {
                    BackendKind::Linear { .. } => {
                        child.map_leaf(leaf.gpa, leaf.hpa, leaf.size, leaf.attr)?;
                    }
                    BackendKind::Window => {
                        child.map_leaf(leaf.gpa, leaf.hpa, leaf.size, leaf.attr)?;
                    }
                    BackendKind::Alloc { .. } if flags.owner != 0 => {
                        copy_leaf_private(child, leaf, copies)?;
                    }
                    BackendKind::Alloc { .. } => {
                        let ro = LeafAttr {
                            access: leaf.attr.access.difference(Access::WRITE),
                            ..leaf.attr
                        };
                        child.map_leaf(leaf.gpa, leaf.hpa, leaf.size, ro)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Copies an owned leaf into fresh private 4 KiB frames of the child.
fn copy_leaf_private<F, M, A, I>(
    child: &mut State<F, M, A, I>,
    leaf: Leaf,
    copies: &mut Vec<HostPhysAddr>,
) -> Result<(), SpaceError>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    for off in (0..leaf.size.size()).step_by(PAGE_SIZE_4K) {
        let gpa = GuestPhysAddr::new(leaf.gpa.as_usize() + off);
        let src = HostPhysAddr::new(leaf.hpa.as_usize() + off);
        let (table, mut meter) = child.parts();
        let Some(new) = meter.alloc_frame() else {
            return Err(SpaceError::OutOfMemory {
                gpa: Some(gpa),
                reason: meter.reason(),
            });
        };
        copies.push(new);
        // A frame the mapper cannot reach (a bug) fails the clone rather than give the
        // child a zero page; `new` is in `copies`, freed with the half-built child.
        copy_frame(table.mapper(), new, src)
            .map_err(|_| SpaceError::Table(TableError::BadFrame { hpa: src }))?;
        child.map_leaf(gpa, new, LeafSize::Size4K, leaf.attr)?;
        child.book.add_4k();
    }
    Ok(())
}

/// Frees a half-built child: its tables and the private copies, never the frames it
/// shares with the parent (the child's book holds no share yet).
fn abandon<F, M, A, I>(child: State<F, M, A, I>, copies: Vec<HostPhysAddr>)
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    let State {
        table,
        mut alloc,
        mut invalidate,
        reserve,
        ..
    } = child;
    let flush = ManuallyDrop::into_inner(table).destroy();
    let _leaves = flush.complete(|s| invalidate.invalidate(s), &mut alloc);
    for f in copies.into_iter().chain(reserve) {
        alloc.dealloc_frame(f);
    }
}
