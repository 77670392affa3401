//! Host policy as a ceiling: the rights the host mapped an area with (`ro=`, `nx=`, a
//! non-executable device window) are the most the area may ever have.
//!
//! Every area carries its ceiling in its flags ([`AreaFlags::ceiling`]); cuts,
//! relabels and clones copy it. [`AddressSpace::protect`](super::AddressSpace::protect),
//! [`OwnedRegion::remap`](super::OwnedRegion::remap) and
//! [`OwnedRegion::deep_copy`](super::OwnedRegion::deep_copy) may lower rights and raise
//! them back up to it, never above ([`SpaceError::RightsExceeded`], nothing changed).
//! The validator checks that no area's rights pass its ceiling.

use memory_set::{AddrRange, GuestPhysAddr};

use super::Invalidate;
#[cfg(doc)]
use super::backend::AreaFlags;
use super::error::SpaceError;
use super::state::Inner;
use crate::format::{Access, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};

/// Checks that `access` stays within `ceiling` (for the area starting at `gpa`).
pub(crate) fn within(
    gpa: GuestPhysAddr,
    access: Access,
    ceiling: Access,
) -> Result<(), SpaceError> {
    if ceiling.contains(access) {
        Ok(())
    } else {
        Err(SpaceError::RightsExceeded {
            gpa,
            requested: access,
            ceiling,
        })
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc + Clone, I: Invalidate> Inner<F, M, A, I> {
    /// Checks that `access` stays within the ceiling of every area overlapping
    /// `range`.
    pub(crate) fn check_ceiling(
        &self,
        range: AddrRange<GuestPhysAddr>,
        access: Access,
    ) -> Result<(), SpaceError> {
        for area in self.set.iter_overlapping(range) {
            within(
                area.start().max(range.start()),
                access,
                area.flags().ceiling,
            )?;
        }
        Ok(())
    }
}
