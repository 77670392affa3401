//! The typed errors of the guest address space.

use core::fmt;

use memory_set::{GuestPhysAddr, HostPhysAddr};

use crate::format::{Access, AttrError};
use crate::table::TableError;

/// Why frames could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OomReason {
    /// The host frame allocator has no frame left.
    HostFrames,
    /// The guest would go over its frame quota (RAM plus table frames).
    Quota {
        /// The quota, in 4 KiB frames.
        quota_frames: usize,
        /// Frames the guest holds now.
        used_frames: usize,
    },
}

/// Why a guest-physical range was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeProblem {
    /// The size is zero.
    Empty,
    /// `start + size` passes the top of the address space.
    Overflow,
    /// The range is not inside the address space's window `[base, end)`.
    OutsideWindow,
    /// The host range of a linear window passes the top of the address space.
    HostOverflow,
    /// The range reaches beyond the guest-physical address width of the hardware.
    BeyondPhysWidth,
}

/// Every error of [`AddressSpace`](super::AddressSpace) operations.
///
/// Except where a variant says otherwise, an error means nothing changed: areas, tables,
/// frame counts and guest memory are as they were before the call. `Display` gives a
/// one-line reason fit for "guest ended: ..." messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpaceError {
    /// No area covers the address.
    NotMapped {
        /// The first address that no area covers.
        gpa: GuestPhysAddr,
    },
    /// An area covers the address but does not allow the access.
    PermissionDenied {
        /// The address accessed.
        gpa: GuestPhysAddr,
        /// The access attempted.
        access: Access,
        /// What the area allows.
        allowed: Access,
    },
    /// No frame for the operation, from the host or within the guest's quota.
    OutOfMemory {
        /// The address being served, when there is one.
        gpa: Option<GuestPhysAddr>,
        /// Host allocator empty or quota reached.
        reason: OomReason,
    },
    /// The hardware reported an entry it cannot use (EPT misconfiguration): the table
    /// is corrupt or was built for other capabilities. Ends the guest.
    Misconfigured {
        /// The address whose walk hit the bad entry.
        gpa: GuestPhysAddr,
    },
    /// A range that is empty, overflows or leaves the space's window.
    InvalidRange {
        /// The start of the rejected range.
        start: usize,
        /// Its size in bytes.
        size: usize,
        /// What is wrong with it.
        problem: RangeProblem,
    },
    /// An address or size that must be a multiple of `align` is not.
    Unaligned {
        /// The offending value (an address or a size).
        value: usize,
        /// The required alignment.
        align: usize,
    },
    /// Part of the range is already covered by an area.
    AlreadyMapped {
        /// The first address of the range that is already covered.
        gpa: GuestPhysAddr,
    },
    /// A set of access rights no leaf can carry (none at all, write without read, ...).
    BadAccess {
        /// The rejected rights.
        access: Access,
        /// Why the format refuses them.
        reason: AttrError,
    },
    /// The operation needs guest RAM but the address lies in a linear (host) window.
    NotRam {
        /// The address in the linear window.
        gpa: GuestPhysAddr,
    },
    /// The range belongs (partly) to an [`OwnedRegion`](super::OwnedRegion): only the
    /// region's handle may unmap or re-protect it.
    Owned {
        /// The first owned address of the range.
        gpa: GuestPhysAddr,
    },
    /// `find_free_area`: no free range of that size and alignment lies inside the limit.
    NoFreeArea {
        /// The requested size.
        size: usize,
    },
    /// A host address that must be page aligned (or fit the physical-address width) is
    /// not usable.
    BadHostAddress {
        /// The rejected host address.
        hpa: HostPhysAddr,
    },
    /// A dirty-log or snapshot request that does not fit the space's tracking state.
    Tracking {
        /// What is wrong.
        problem: TrackingProblem,
    },
    /// A [`FrameBundle`](super::FrameBundle) that cannot be mapped that way.
    Bundle {
        /// What is wrong.
        problem: super::BundleProblem,
    },
    /// The stage-2 table refused an operation the space believed valid. This reports a
    /// bug rather than a guest or caller mistake; the state is still consistent.
    Table(TableError),
    /// The operation would pass the family's bookkeeping budget (areas, tracked
    /// frames) or the host-wide pool (see [`Limits`](super::Limits)).
    OutOfMetadata {
        /// Entries held now (by the family, or by all families for the pool).
        used: usize,
        /// The limit that would be passed.
        limit: usize,
        /// The host-wide pool ran out, not this family's own budget.
        host_pool: bool,
    },
    /// New rights beyond what the host configured for the area (the area's ceiling):
    /// a guest may lower its rights and raise them back, never above the ceiling.
    RightsExceeded {
        /// The first address of an area whose ceiling is passed.
        gpa: GuestPhysAddr,
        /// The rights asked for.
        requested: Access,
        /// The most the area may have.
        ceiling: Access,
    },
}

/// Why a dirty-log or snapshot request was refused ([`SpaceError::Tracking`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackingProblem {
    /// A dirty log is already running on this space.
    AlreadyLogging,
    /// No dirty log is running.
    NotLogging,
    /// The CPU has no accessed/dirty flags for this table.
    NoAccessedDirty,
    /// A snapshot is already attached (one at a time).
    SnapshotAttached,
    /// The snapshot belongs to another space, or was detached.
    ForeignSnapshot,
    /// The areas changed since the snapshot (map, unmap, protect, populate): it can
    /// no longer be restored, only dropped.
    SnapshotStale,
    /// An owned region's memory is written without faults: it cannot be tracked.
    OwnedRegion,
}

impl fmt::Display for TrackingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AlreadyLogging => "a dirty log is already running",
            Self::NotLogging => "no dirty log is running",
            Self::NoAccessedDirty => "the CPU has no stage-2 accessed/dirty flags",
            Self::SnapshotAttached => "a snapshot is already attached",
            Self::ForeignSnapshot => "the snapshot belongs to another address space",
            Self::SnapshotStale => "the areas changed since the snapshot",
            Self::OwnedRegion => "owned regions cannot be tracked",
        })
    }
}

impl fmt::Display for OomReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HostFrames => f.write_str("host frame allocator exhausted"),
            Self::Quota {
                quota_frames,
                used_frames,
            } => write!(
                f,
                "guest frame quota reached ({used_frames} of {quota_frames} frames in use)"
            ),
        }
    }
}

impl fmt::Display for RangeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "size is zero",
            Self::Overflow => "passes the top of the address space",
            Self::OutsideWindow => "outside the address space window",
            Self::HostOverflow => "host range passes the top of the address space",
            Self::BeyondPhysWidth => "beyond the guest-physical address width",
        })
    }
}

impl fmt::Display for SpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotMapped { gpa } => write!(f, "guest-physical address {gpa:#x} is not mapped"),
            Self::PermissionDenied {
                gpa,
                access,
                allowed,
            } => write!(
                f,
                "{} access to {gpa:#x} denied (area allows {})",
                AccessName(*access),
                AccessName(*allowed)
            ),
            Self::OutOfMemory {
                gpa: Some(gpa),
                reason,
            } => {
                write!(f, "out of memory serving {gpa:#x}: {reason}")
            }
            Self::OutOfMemory { gpa: None, reason } => write!(f, "out of memory: {reason}"),
            Self::Misconfigured { gpa } => {
                write!(f, "stage-2 misconfiguration walking {gpa:#x}")
            }
            Self::InvalidRange {
                start,
                size,
                problem,
            } => write!(f, "invalid range {start:#x}+{size:#x}: {problem}"),
            Self::Unaligned { value, align } => {
                write!(f, "{value:#x} is not a multiple of {align:#x}")
            }
            Self::AlreadyMapped { gpa } => write!(f, "{gpa:#x} is already mapped"),
            Self::BadAccess { access, reason } => {
                write!(f, "access rights {} refused: {reason}", AccessName(*access))
            }
            Self::NotRam { gpa } => write!(f, "{gpa:#x} is a host window, not guest RAM"),
            Self::Owned { gpa } => write!(f, "{gpa:#x} belongs to an owned region"),
            Self::NoFreeArea { size } => write!(f, "no free range of {size:#x} bytes"),
            Self::BadHostAddress { hpa } => write!(f, "host address {hpa:#x} unusable"),
            Self::Tracking { problem } => write!(f, "dirty tracking: {problem}"),
            Self::Bundle { problem } => write!(f, "frame bundle: {problem}"),
            Self::Table(e) => write!(f, "stage-2 table refused the operation: {e}"),
            Self::OutOfMetadata {
                used,
                limit,
                host_pool: false,
            } => write!(
                f,
                "area bookkeeping budget exhausted ({used} of {limit} entries)"
            ),
            Self::OutOfMetadata {
                used,
                limit,
                host_pool: true,
            } => write!(
                f,
                "host bookkeeping pool exhausted ({used} of {limit} entries)"
            ),
            Self::RightsExceeded {
                gpa,
                requested,
                ceiling,
            } => write!(
                f,
                "rights {} at {gpa:#x} exceed what the host allows there ({})",
                AccessName(*requested),
                AccessName(*ceiling)
            ),
        }
    }
}

impl core::error::Error for SpaceError {}

/// `rwx`-style rendering of access rights.
pub(crate) struct AccessName(pub(crate) Access);

impl fmt::Display for AccessName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |flag, ch| if self.0.contains(flag) { ch } else { '-' };
        write!(
            f,
            "{}{}{}",
            c(Access::READ, 'r'),
            c(Access::WRITE, 'w'),
            c(Access::EXECUTE, 'x')
        )
    }
}
