//! Memory that moves between owners: frames taken out of a space as an owned
//! [`FrameBundle`], mapped again elsewhere (moved), or mapped into several spaces at
//! once as a shared window.
//!
//! # One reference count
//! A bundle holds its frames the way spaces do: through the per-frame reference
//! count of the frame book (`frames.rs`), which copy-on-write clones, snapshots and
//! the zero page use too. Each piece of a bundle holds one reference on its frame's
//! chunk; each space that maps the frame holds one more. Whoever lets go last (a
//! space unmapping its last leaf of the frame, or the bundle being dropped) frees it,
//! after the flush.
//!
//! # Unmap and keep ([`AddressSpace::take`])
//! The frames of a RAM range leave the space without a copy: the bundle pins every
//! frame mapped in the range, then the range is unmapped as by
//! [`AddressSpace::unmap`] (areas removed or cut, huge leaves at the ends split
//! first, one flush), which now only drops the space's references. Pages never
//! faulted in (and pages that only mapped the zero page) are holes: they read as
//! zeros wherever the bundle goes. 2 MiB leaves inside the range stay 2 MiB pieces.
//! A 2 MiB block cut by an end of the range is held by both sides through the same
//! count: its pages on either side become copy-on-write (a write copies that page)
//! and the block is freed when both have let go; 2 MiB aligned ranges avoid this.
//!
//! # Move ([`AddressSpace::map_bundle`])
//! Consumes the bundle: a new on-demand RAM area at the given address and rights,
//! whose pages are the bundle's frames (holes fault in as zeros). Pieces land as 2
//! MiB leaves where the new address keeps them 2 MiB aligned, else as 4 KiB leaves.
//! A frame no one else references becomes private (writable at once); a frame still
//! shared (with a clone of the old owner, say) stays copy-on-write. A bundle that
//! was mapped as a window cannot be moved (its writers would change pages under
//! copy-on-write readers). On error the bundle comes back untouched with the reason.
//!
//! # Shared windows ([`AddressSpace::map_window`])
//! Maps a complete bundle (no holes) into a space as a *window* area: every space
//! mapping it sees the same frames, each with its own rights (read-write in a
//! producer, read-only in a consumer); writes are never copied. Unmapping the window
//! from one space leaves the others intact; the last of the spaces and the bundle to
//! let go frees the frames. The first window mapping needs a bundle whose frames
//! nobody else references (frames still shared copy-on-write would let a write reach
//! a clone's copy). Windows are not RAM for [`AddressSpace::read`]/`write`, dirty
//! logs, snapshot restores, `take` or `discard` ([`SpaceError::NotRam`]).
//!
//! A copy-on-write clone of a space keeps its windows **shared**: the clone maps the
//! same frames with the same rights and takes its own reference (nothing is copied,
//! nothing is write-protected). A snapshot does the same, so restoring never touches
//! a window.
//!
//! # Quota
//! Every host frame is charged to exactly one family (a space and its clones, see
//! `budget.rs`). Taking frames out of a space does not change that: the bundle's
//! frames stay charged to the family they came from (recorded on the frame's shared
//! mark), as long as the bundle or anyone else holds them. A move
//! ([`AddressSpace::map_bundle`]) carries the charge over to the receiving family,
//! which must have room for it (else out of memory, nothing changed). A window does
//! not: its frames stay charged to the family that created it, and mapping it costs
//! the other spaces only their tables. Whoever frees a frame last takes it off the
//! count of the family it is charged to. Each space's report still counts every
//! frame it maps among its RAM frames (shared ones included).

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, MemoryAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

use super::backend::{AreaFlags, BackendKind};
use super::error::{OomReason, SpaceError};
use super::frames::{ShareMark, free_block};
use super::state::Inner;
use super::{AddressSpace, Invalidate};
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::LeafSize;

/// Why a bundle cannot be mapped as a window ([`SpaceError::Bundle`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleProblem {
    /// The page at this offset has no frame (a hole): windows are mapped whole.
    Hole {
        /// Byte offset in the bundle.
        offset: usize,
    },
    /// The frame at this offset is still shared copy-on-write with another space.
    CopyOnWrite {
        /// Byte offset in the bundle.
        offset: usize,
    },
    /// The bundle is a shared window: spaces write its frames, so it cannot become
    /// copy-on-write RAM anywhere ([`AddressSpace::map_bundle`]).
    IsWindow,
}

impl fmt::Display for BundleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hole { offset } => write!(f, "no frame at offset {offset:#x} (a hole)"),
            Self::CopyOnWrite { offset } => write!(
                f,
                "the frame at offset {offset:#x} is shared copy-on-write with another space"
            ),
            Self::IsWindow => f.write_str("the bundle is a shared window; map it as one"),
        }
    }
}

/// One frame (4 KiB) or block (2 MiB leaf) of a bundle and its reference.
#[derive(Debug)]
struct Piece {
    /// Byte offset in the bundle.
    offset: usize,
    /// The host address of the piece's first byte.
    hpa: HostPhysAddr,
    /// 4 KiB or 2 MiB.
    size: LeafSize,
    /// The chunk the frame belongs to (a 2 MiB block or the frame itself).
    base: HostPhysAddr,
    /// Whether the chunk is a 2 MiB block.
    big: bool,
    /// This piece's reference on the chunk.
    mark: Arc<ShareMark>,
}

impl Piece {
    fn pages(&self) -> usize {
        self.size.size() / PAGE_SIZE_4K
    }
}

/// Frames taken out of an address space (see `share.rs`): an owned
/// handle that maps them again, shares them as a window, or frees them when dropped.
pub struct FrameBundle<A: FrameAlloc> {
    size: usize,
    pieces: Vec<Piece>,
    alloc: A,
    /// Mapped as a window at least once: its frames are window frames for good.
    window: bool,
}

impl<A: FrameAlloc> FrameBundle<A> {
    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// 4 KiB pages that have a frame (the rest are holes).
    pub fn pages_held(&self) -> usize {
        self.pieces.iter().map(Piece::pages).sum()
    }

    /// Pieces held as whole 2 MiB blocks.
    pub fn huge_pieces(&self) -> usize {
        self.pieces
            .iter()
            .filter(|p| p.size == LeafSize::Size2M)
            .count()
    }

    /// Whether every page has a frame.
    pub fn is_complete(&self) -> bool {
        self.pages_held() * PAGE_SIZE_4K == self.size
    }

    /// The host address of the byte at `offset`, if that page has a frame.
    pub fn host_of(&self, offset: usize) -> Option<HostPhysAddr> {
        let p = self
            .pieces
            .iter()
            .find(|p| offset >= p.offset && offset - p.offset < p.size.size())?;
        p.hpa.checked_add(offset - p.offset)
    }

    /// The first hole, as a byte offset.
    fn first_hole(&self) -> Option<usize> {
        let mut next = 0;
        for p in &self.pieces {
            if p.offset != next {
                return Some(next);
            }
            next = p.offset + p.size.size();
        }
        (next != self.size).then_some(next)
    }

    /// The first piece whose frame someone besides this bundle references.
    fn first_foreign_reference(&self) -> Option<usize> {
        let mut ours: BTreeMap<HostPhysAddr, usize> = BTreeMap::new();
        for p in &self.pieces {
            *ours.entry(p.base).or_default() += 1;
        }
        self.pieces
            .iter()
            .find(|p| Arc::strong_count(&p.mark) > ours.get(&p.base).copied().unwrap_or(0))
            .map(|p| p.offset)
    }
}

impl<A: FrameAlloc> fmt::Debug for FrameBundle<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameBundle")
            .field("size", &self.size)
            .field("pages_held", &self.pages_held())
            .field("window", &self.window)
            .finish()
    }
}

impl<A: FrameAlloc> Drop for FrameBundle<A> {
    fn drop(&mut self) {
        for p in self.pieces.drain(..) {
            if let Some(mark) = Arc::into_inner(p.mark) {
                // The last holder: back to the host, out of the home family's count.
                let home = mark.home.lock().take();
                free_block(&mut self.alloc, p.base, p.big);
                if let Some(home) = home {
                    home.uncharge(chunk_frames(p.big));
                }
            }
        }
    }
}

/// 4 KiB frames in a chunk.
fn chunk_frames(big: bool) -> usize {
    if big { PAGE_SIZE_2M / PAGE_SIZE_4K } else { 1 }
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Unmaps the RAM range `[gpa, gpa + size)` and returns its frames, contents
    /// intact (see `share.rs`).
    ///
    /// Errors change nothing: unaligned or outside the window; [`SpaceError::NotMapped`]
    /// for a hole in the areas; [`SpaceError::NotRam`] for a linear or shared window;
    /// [`SpaceError::Owned`] for an owned region; out of memory when a huge leaf at an
    /// end must be split and no frame is left.
    pub fn take(&mut self, gpa: GuestPhysAddr, size: usize) -> Result<FrameBundle<A>, SpaceError> {
        let mut inner = self.inner.lock();
        let range = inner.check_range(gpa, size)?;
        let result = inner.take_range(range);
        super::debug_validated(&inner, result)
    }

    /// Maps `bundle` at `gpa` as a new on-demand RAM area with `access`, moving its
    /// frames into this space (see `share.rs`).
    ///
    /// Errors give the bundle back and change nothing: [`BundleProblem::IsWindow`]
    /// (writers of a window would change the pages under copy-on-write), bad range or rights,
    /// [`SpaceError::AlreadyMapped`], out of memory (the frames and tables over the
    /// quota, or no host frame for a table).
    pub fn map_bundle(
        &mut self,
        gpa: GuestPhysAddr,
        bundle: FrameBundle<A>,
        access: Access,
    ) -> Result<(), (FrameBundle<A>, SpaceError)> {
        if bundle.window {
            let problem = BundleProblem::IsWindow;
            return Err((bundle, SpaceError::Bundle { problem }));
        }
        let mut inner = self.inner.lock();
        let kind = BackendKind::Alloc { populate: false };
        let mapped = inner.map_pieces(gpa, &bundle, access, kind);
        if let Err(e) = super::debug_validated(&inner, mapped) {
            drop(inner);
            return Err((bundle, e));
        }
        // The charge moves here; the bundle's references go; frames nobody else
        // holds are private now.
        inner.take_charge(&bundle);
        drop(bundle);
        inner.make_private_writable(gpa);
        // Panics in debug builds if an invariant broke; never an error.
        let _ = super::debug_validated(&inner, Ok(()));
        Ok(())
    }

    /// Maps the whole of `bundle` at `gpa` as a shared window with `access` (see
    /// `share.rs`); the bundle keeps its own reference.
    ///
    /// Errors change nothing: [`SpaceError::Bundle`] (a hole; frames still shared
    /// copy-on-write), bad range or rights, [`SpaceError::AlreadyMapped`], out of
    /// memory (over the quota, or no frame for a table).
    pub fn map_window(
        &mut self,
        gpa: GuestPhysAddr,
        bundle: &mut FrameBundle<A>,
        access: Access,
    ) -> Result<(), SpaceError> {
        if let Some(offset) = bundle.first_hole() {
            return Err(SpaceError::Bundle {
                problem: BundleProblem::Hole { offset },
            });
        }
        if !bundle.window
            && let Some(offset) = bundle.first_foreign_reference()
        {
            return Err(SpaceError::Bundle {
                problem: BundleProblem::CopyOnWrite { offset },
            });
        }
        let mut inner = self.inner.lock();
        let result = inner.map_pieces(gpa, bundle, access, BackendKind::Window);
        if result.is_ok() {
            bundle.window = true;
        }
        super::debug_validated(&inner, result)
    }
}

impl<F, M, A, I> Inner<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    fn take_range(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
    ) -> Result<FrameBundle<A>, SpaceError> {
        self.check_plain_ram(range)?;
        // Split first (the only step that may need frames), so leaves lie inside.
        self.split_ends(range)?;
        let zero = self.st.zero_page_frame();
        let leaves: Vec<_> = self
            .st
            .table
            .leaves_in(range)
            .filter(|l| Some(l.hpa) != zero)
            .collect();
        let mut pieces = Vec::with_capacity(leaves.len());
        for leaf in &leaves {
            let (base, big, mark) = self.st.book.pin(leaf.hpa, &self.st.alloc.budget);
            pieces.push(Piece {
                offset: leaf.gpa.as_usize() - range.start().as_usize(),
                hpa: leaf.hpa,
                size: leaf.size,
                base,
                big,
                mark,
            });
        }
        let bundle = FrameBundle {
            size: range.size(),
            pieces,
            alloc: self.st.alloc.host.clone(),
            window: false,
        };
        if let Err(e) = self.unmap_range(range) {
            // Nothing was unmapped: give the pins back, the frames stay as they were.
            drop(bundle);
            for leaf in &leaves {
                self.st.book.unshare_if_unique(leaf.hpa);
            }
            return Err(e);
        }
        self.protect_cut_blocks(&bundle);
        self.sync_metadata();
        Ok(bundle)
    }

    /// Write-protects the leaves this space still maps of the 2 MiB blocks the
    /// bundle took pieces of (an end of the range cut them): the bundle holds those
    /// blocks too, so their other pages are copy-on-write now.
    fn protect_cut_blocks(&mut self, bundle: &FrameBundle<A>) {
        let blocks: Vec<HostPhysAddr> = bundle
            .pieces
            .iter()
            .filter(|p| p.big && self.st.book.chunk_of(p.base).is_some())
            .map(|p| p.base)
            .collect();
        if blocks.is_empty() {
            return;
        }
        let shared: Vec<_> = self
            .st
            .table
            .leaves()
            .filter(|l| l.attr.access.contains(Access::WRITE))
            .filter(|l| {
                self.st
                    .book
                    .chunk_of(l.hpa)
                    .is_some_and(|(base, _)| blocks.contains(&base))
            })
            .collect();
        let mut flush = crate::flush::Flush::none();
        for leaf in shared {
            let ro = LeafAttr {
                access: leaf.attr.access.difference(Access::WRITE),
                ..leaf.attr
            };
            let (table, mut meter) = self.st.parts();
            // Exact leaves: never split, never allocate.
            if let Ok(f) = table.protect_range(&mut meter, leaf.gpa, leaf.size.size(), ro) {
                flush = flush.merge(f);
            }
        }
        self.st.finish(flush, false);
    }

    /// Maps the pieces of `bundle` at `gpa` in a new area of `kind` with `access`,
    /// taking a reference on each frame. All or nothing.
    fn map_pieces(
        &mut self,
        gpa: GuestPhysAddr,
        bundle: &FrameBundle<A>,
        access: Access,
        kind: BackendKind,
    ) -> Result<(), SpaceError> {
        let range = self.check_range(gpa, bundle.size)?;
        let attr = LeafAttr::ram(access);
        self.st.check_attr(attr)?;
        if let Some(a) = self.set.iter_overlapping(range).next() {
            return Err(SpaceError::AlreadyMapped {
                gpa: a.start().max(range.start()),
            });
        }
        // A move brings the frames' charge into this family: they must fit the
        // quota now (a window's frames stay charged to the family they came from).
        // The tables are metered as they are built.
        let need = if kind.is_window() {
            0
        } else {
            self.foreign_charge(bundle).iter().map(|(_, n)| n).sum()
        };
        let used = self.st.used();
        if used + need > self.st.quota() {
            return Err(SpaceError::OutOfMemory {
                gpa: Some(gpa),
                reason: OomReason::Quota {
                    quota_frames: self.st.quota(),
                    used_frames: used + need,
                },
            });
        }
        // Bookkeeping: the area and one tracked chunk per frame new to this space.
        let mut new_chunks: Vec<HostPhysAddr> = Vec::new();
        for p in &bundle.pieces {
            if self.st.book.chunk_of(p.base).is_none() && !new_chunks.contains(&p.base) {
                new_chunks.push(p.base);
            }
        }
        self.metadata_room(1 + new_chunks.len())?;
        self.map_area(range, AreaFlags::new(attr), kind)?;
        // Every piece is counted before the tables are metered.
        for p in &bundle.pieces {
            self.st.book.adopt(p.base, p.big, p.pages(), p.mark.clone());
        }
        // A RAM leaf over a frame someone else holds stays read-only (copy-on-write);
        // a window leaf gets the area's rights.
        let leaf = if kind.is_window() {
            attr
        } else {
            LeafAttr {
                access: access.difference(Access::WRITE),
                ..attr
            }
        };
        let mut mapped = 0;
        let mut result = Ok(());
        for p in &bundle.pieces {
            let at = GuestPhysAddr::new(gpa.as_usize() + p.offset);
            let a = leaf;
            let r = if p.size == LeafSize::Size2M && at.is_aligned(PAGE_SIZE_2M) {
                self.st.map_leaf(at, p.hpa, LeafSize::Size2M, a)
            } else {
                (0..p.pages()).try_for_each(|i| {
                    let off = i * PAGE_SIZE_4K;
                    self.st.map_leaf(
                        GuestPhysAddr::new(at.as_usize() + off),
                        HostPhysAddr::new(p.hpa.as_usize() + off),
                        LeafSize::Size4K,
                        a,
                    )
                })
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
            mapped += 1;
        }
        if let Err(e) = result {
            // Leaves of the failed piece and the pieces after it were adopted but not
            // (all) mapped: drop those pages from the count, then unmap the area,
            // which releases the mapped leaves. The bundle's references keep every
            // frame alive.
            for p in &bundle.pieces[mapped..] {
                let at = GuestPhysAddr::new(gpa.as_usize() + p.offset);
                for i in 0..p.pages() {
                    let page = GuestPhysAddr::new(at.as_usize() + i * PAGE_SIZE_4K);
                    if self.st.table.translate(page).is_none() {
                        let hpa = HostPhysAddr::new(p.hpa.as_usize() + i * PAGE_SIZE_4K);
                        self.st
                            .book
                            .release(hpa, LeafSize::Size4K, &mut self.st.alloc);
                    }
                }
            }
            let _ = self.unmap_range(range);
            return Err(e);
        }
        self.sync_metadata();
        Ok(())
    }

    /// The distinct chunks of `bundle` charged to another family, with their frames.
    fn foreign_charge(&self, bundle: &FrameBundle<A>) -> Vec<(HostPhysAddr, usize)> {
        let mut out: Vec<(HostPhysAddr, usize)> = Vec::new();
        for p in &bundle.pieces {
            let foreign = p
                .mark
                .home
                .lock()
                .as_ref()
                .is_some_and(|h| !h.same_family(&self.st.alloc.budget));
            if foreign && !out.iter().any(|(b, _)| *b == p.base) {
                out.push((p.base, chunk_frames(p.big)));
            }
        }
        out
    }

    /// After a move: the frames' charge leaves their old family for this one.
    fn take_charge(&mut self, bundle: &FrameBundle<A>) {
        let foreign = self.foreign_charge(bundle);
        let own = &self.st.alloc.budget;
        for p in &bundle.pieces {
            if !foreign.iter().any(|(b, _)| *b == p.base) {
                continue;
            }
            let mut home = p.mark.home.lock();
            if let Some(old) = home.replace(own.clone())
                && !old.same_family(own)
            {
                old.uncharge(chunk_frames(p.big));
                own.charge(chunk_frames(p.big));
            }
        }
    }

    /// After a move: gives write access to the RAM leaves of the area at `gpa` whose
    /// frames this space alone holds now.
    fn make_private_writable(&mut self, gpa: GuestPhysAddr) {
        let Some((area, flags, _)) = self.area_at(gpa) else {
            return;
        };
        if !flags.attr.access.contains(Access::WRITE) {
            return;
        }
        let leaves: Vec<_> = self.st.table.leaves_in(area).collect();
        let mut flush = crate::flush::Flush::none();
        for leaf in leaves {
            if !self.st.book.unshare_if_unique(leaf.hpa) {
                continue;
            }
            let (table, mut meter) = self.st.parts();
            // Exact leaves: never split, never allocate.
            if let Ok(f) = table.protect_range(&mut meter, leaf.gpa, leaf.size.size(), flags.attr) {
                flush = flush.merge(f);
            }
        }
        self.st.finish(flush, false);
        self.sync_metadata();
    }
}
