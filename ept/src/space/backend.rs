//! The two area backends (linear host window, allocated RAM) as a
//! [`MappingBackend`] whose page table is the space's [`State`].

use core::fmt;
use core::marker::PhantomData;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, MappingBackend, MemoryAddr};

use super::Invalidate;
use super::error::SpaceError;
use super::state::State;
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};

/// The flags of an area: what its leaves grant, and which owned region (if any) holds
/// it. The owner is part of the flags so that relabelling a range (region split and
/// merge) goes through [`memory_set::MemorySet::protect`], which cuts areas exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AreaFlags {
    /// Access rights and memory type of the area's leaves.
    pub(crate) attr: LeafAttr,
    /// The owning region's id, 0 for none.
    pub(crate) owner: u64,
    /// The most the area's rights may ever be: what the host mapped it with (see
    /// `ceiling.rs`). Kept by every cut, relabel and clone.
    pub(crate) ceiling: Access,
}

impl AreaFlags {
    /// Flags of an area no region owns, whose ceiling is `attr`'s rights.
    pub(crate) fn new(attr: LeafAttr) -> Self {
        Self {
            attr,
            owner: 0,
            ceiling: attr.access,
        }
    }
}

/// What backs an area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// Host memory the space does not own: `gpa` maps to `hpa` (an anchor that stays
    /// right for both halves when the area is split).
    Linear {
        /// A guest address of the window.
        gpa: GuestPhysAddr,
        /// The host address it maps to.
        hpa: HostPhysAddr,
    },
    /// Zero-filled frames from the allocator, populated up front or on demand.
    Alloc {
        /// Populated when mapped.
        populate: bool,
    },
    /// A shared window: frames of a [`FrameBundle`](super::FrameBundle) that other
    /// spaces map too, writable where the area is (writes are seen by every sharer,
    /// never copied). Mapped whole when the area is made; see `share.rs`.
    Window,
}

impl BackendKind {
    /// Whether leaves of this kind own their frames.
    pub(crate) fn is_ram(self) -> bool {
        matches!(self, Self::Alloc { .. })
    }

    /// Whether leaves of this kind hold a reference on their frames (RAM and shared
    /// windows), released when they are unmapped.
    pub(crate) fn owns_frames(self) -> bool {
        matches!(self, Self::Alloc { .. } | Self::Window)
    }

    /// Whether this is a shared window.
    pub(crate) fn is_window(self) -> bool {
        matches!(self, Self::Window)
    }

    /// For a linear window, the host address of `gpa`.
    pub(crate) fn linear_hpa(self, gpa: GuestPhysAddr) -> Option<HostPhysAddr> {
        match self {
            Self::Linear { gpa: g0, hpa: h0 } => {
                let off = gpa.checked_offset_from(g0)?;
                h0.checked_add(off)
            }
            Self::Alloc { .. } | Self::Window => None,
        }
    }
}

/// Names the state type a backend works on without owning one.
type StateMarker<F, M, A, I> = fn() -> (F, M, A, I);

/// A backend value for [`memory_set::MemorySet`]; generic only to name the state type.
pub(crate) struct Backend<F, M, A, I> {
    pub(crate) kind: BackendKind,
    _state: PhantomData<StateMarker<F, M, A, I>>,
}

impl<F, M, A, I> Backend<F, M, A, I> {
    pub(crate) fn new(kind: BackendKind) -> Self {
        Self {
            kind,
            _state: PhantomData,
        }
    }
}

impl<F, M, A, I> Clone for Backend<F, M, A, I> {
    fn clone(&self) -> Self {
        Self::new(self.kind)
    }
}

impl<F, M, A, I> fmt::Debug for Backend<F, M, A, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl<F, M, A, I> MappingBackend for Backend<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    type Addr = GuestPhysAddr;
    type Flags = AreaFlags;
    type PageTable = State<F, M, A, I>;
    type Error = SpaceError;

    fn map(
        &self,
        start: GuestPhysAddr,
        size: usize,
        flags: AreaFlags,
        st: &mut State<F, M, A, I>,
    ) -> Result<(), SpaceError> {
        if st.replay {
            return Ok(());
        }
        match self.kind {
            BackendKind::Linear { .. } => {
                let hpa = self
                    .kind
                    .linear_hpa(start)
                    .ok_or(SpaceError::BadHostAddress {
                        hpa: HostPhysAddr::new(usize::MAX),
                    })?;
                st.map_linear_leaves(start, hpa, size, flags.attr)
            }
            BackendKind::Alloc { populate: true } => {
                let range =
                    AddrRange::from_start_size(start, size).ok_or(SpaceError::InvalidRange {
                        start: start.as_usize(),
                        size,
                        problem: super::RangeProblem::Overflow,
                    })?;
                let mut added = alloc::vec::Vec::new();
                let r = st.populate(range, flags.attr, range, &mut added);
                if r.is_err() {
                    st.rollback(&added);
                }
                r
            }
            // Window leaves are installed by `share.rs` once the area exists.
            BackendKind::Alloc { populate: false } | BackendKind::Window => Ok(()),
        }
    }

    fn unmap(
        &self,
        start: GuestPhysAddr,
        size: usize,
        st: &mut State<F, M, A, I>,
    ) -> Result<(), SpaceError> {
        if st.replay {
            return Ok(());
        }
        st.unmap_leaves(start, size, self.kind.owns_frames())
    }

    fn protect(
        &self,
        start: GuestPhysAddr,
        size: usize,
        old_flags: AreaFlags,
        new_flags: AreaFlags,
        st: &mut State<F, M, A, I>,
    ) -> Result<(), SpaceError> {
        if st.replay || old_flags.attr == new_flags.attr {
            return Ok(());
        }
        st.protect_leaves(start, size, new_flags.attr, self.kind.is_ram())
    }

    fn handle_fault(
        &self,
        area: AddrRange<GuestPhysAddr>,
        area_flags: AreaFlags,
        addr: GuestPhysAddr,
        access: AreaFlags,
        st: &mut State<F, M, A, I>,
    ) -> Result<(), SpaceError> {
        st.serve_fault(area, area_flags.attr, self.kind, addr, access.attr.access)
            .map(|_| ())
    }

    fn prepare_split(
        &self,
        _area: AddrRange<GuestPhysAddr>,
        _flags: AreaFlags,
        at: GuestPhysAddr,
        st: &mut State<F, M, A, I>,
    ) -> Result<(), SpaceError> {
        if st.replay {
            return Ok(());
        }
        st.split_at(at)
    }
}
