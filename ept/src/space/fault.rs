//! Serving stage-2 faults: on-demand population, copy-on-write, stale rights.

use memory_set::{AddrRange, GuestPhysAddr, MemoryAddr, PAGE_SIZE_4K};

use super::backend::BackendKind;
use super::error::SpaceError;
use super::lock::lock_exclusive;
use super::state::State;
use super::{AddressSpace, Invalidate, range_scope};
use crate::fault::{FaultKind, Stage2Fault};
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, Size4K};

/// How a fault was handled: the guest may resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// A zero-filled frame was mapped with a leaf of this size.
    Populated {
        /// The size of the new leaf.
        size: LeafSize,
    },
    /// A shared frame was copied: the page is now private and writable.
    CopiedOnWrite,
    /// The leaf's rights were restored to its area's (e.g. write access once no other
    /// space shares the frame).
    Reprotected,
    /// The table already allowed the access (a stale cached translation): the range was
    /// invalidated.
    Spurious,
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Serves a stage-2 fault (EPT violation / misconfiguration, NPF).
    ///
    /// The access must lie in an area ([`SpaceError::NotMapped`]) that allows it
    /// ([`SpaceError::PermissionDenied`]); then an absent RAM page is populated, a
    /// write to a shared frame copies it, and stale rights are restored. Running out of
    /// frames is [`SpaceError::OutOfMemory`] and changes nothing; a misconfiguration is
    /// [`SpaceError::Misconfigured`]. Any error means the guest cannot continue.
    pub fn handle_fault(&mut self, fault: Stage2Fault) -> Result<FaultOutcome, SpaceError> {
        let gpa = fault.gpa;
        if fault.kind == FaultKind::Misconfig {
            return Err(SpaceError::Misconfigured { gpa });
        }
        let mut inner = lock_exclusive(&mut self.inner);
        let (area, flags, kind) = inner.area_at(gpa).ok_or(SpaceError::NotMapped { gpa })?;
        let access = if fault.access.is_empty() {
            Access::READ
        } else {
            fault.access
        };
        if !flags.attr.access.contains(access) {
            return Err(SpaceError::PermissionDenied {
                gpa,
                access,
                allowed: flags.attr.access,
            });
        }
        // The common case: a RAM page that is not mapped yet. Populate it straight
        // away (one table walk); if that fails for any reason (the page is mapped
        // after all, no frame, ...) it changed nothing, and the general path below
        // looks at the table and decides.
        let fast = if fault.kind == FaultKind::NotPresent && kind.is_ram() {
            inner
                .st
                .serve_zero_read(gpa, access, flags.attr)
                .or_else(|| inner.st.populate_fast(gpa, flags.attr, area))
        } else {
            None
        };
        let outcome = match fast {
            Some(size) => FaultOutcome::Populated { size },
            None => inner.st.serve_fault(area, flags.attr, kind, gpa, access)?,
        };
        if matches!(
            outcome,
            FaultOutcome::Populated {
                size: LeafSize::Size2M
            } | FaultOutcome::CopiedOnWrite
                | FaultOutcome::Reprotected
        ) {
            inner.sync_metadata();
        }
        inner.st.note_fault(gpa, access, outcome);
        inner.st.counters.faults_handled += 1;
        if outcome == FaultOutcome::Spurious {
            inner.st.counters.spurious += 1;
        }
        Ok(outcome)
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc, I: Invalidate> State<F, M, A, I> {
    /// Serves an allowed `access` at `gpa` inside the area `area` (rights `attr`).
    pub(crate) fn serve_fault(
        &mut self,
        area: AddrRange<GuestPhysAddr>,
        attr: LeafAttr,
        kind: BackendKind,
        gpa: GuestPhysAddr,
        access: Access,
    ) -> Result<FaultOutcome, SpaceError> {
        let Some(t) = self.table.translate(gpa) else {
            return match kind {
                BackendKind::Alloc { .. } => {
                    let (_, size) = self.populate_one(gpa, attr, area)?;
                    Ok(FaultOutcome::Populated { size })
                }
                // Shared windows are mapped whole and never lose a page.
                BackendKind::Window => Err(SpaceError::NotMapped { gpa }),
                BackendKind::Linear { .. } => {
                    // Windows are mapped whole; a hole means a page was lost: map it.
                    let page = gpa.align_down(PAGE_SIZE_4K);
                    let hpa = kind.linear_hpa(page).ok_or(SpaceError::NotMapped { gpa })?;
                    self.map_leaf(page, hpa, LeafSize::Size4K, attr)?;
                    Ok(FaultOutcome::Populated {
                        size: <Size4K as crate::size::PageSize>::LEAF_SIZE,
                    })
                }
            };
        };
        if t.attr.access.contains(access) {
            self.invalidate_now(range_scope(t.leaf_gpa, t.size.size()));
            return Ok(FaultOutcome::Spurious);
        }
        let ram = kind.is_ram();
        if ram && access.contains(Access::WRITE) && self.book.is_shared(t.hpa) {
            self.cow_break(gpa, t, attr, false)?;
            return Ok(FaultOutcome::CopiedOnWrite);
        }
        self.reprotect_leaf(t, attr, ram)?;
        Ok(FaultOutcome::Reprotected)
    }
}
