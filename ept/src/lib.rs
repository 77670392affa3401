//! Stage-2 page tables for Intel EPT and AMD NPT.
//!
//! Modules, bottom up:
//! * [`frame`]: where table memory comes from ([`frame::FrameAlloc`]) and how the host
//!   reaches it ([`frame::PhysMapper`]); safe byte-moving helpers; [`frame::HeapArena`]
//!   for host tests.
//! * [`format`]: the entry encodings behind [`format::Stage2Format`] ([`format::Ept`],
//!   [`format::Npt`]), generic attributes ([`format::Access`], [`format::MemType`],
//!   [`format::LeafAttr`]), the EPTP / nCR3 builders.
//! * [`caps`]: what the hardware supports ([`caps::Stage2Caps`]).
//! * [`size`]: page sizes as types ([`size::Size4K`], [`size::Size2M`],
//!   [`size::Size1G`]) and [`size::MapSize`], which generates each walk.
//! * [`flush`]: the `#[must_use]` [`flush::Flush`] token every change returns; frames
//!   that leave a table are handed back only through it, after invalidation.
//! * [`table`]: [`table::Stage2Table`]: map, unmap, protect, translate, iterate,
//!   harvest dirty bits, collapse, destroy.
//! * [`validate`]: a software walker that checks a table like the hardware would.
//! * [`fault`]: EPT-violation and NPF exit information decoded into one
//!   [`fault::Stage2Fault`].
//! * [`space`]: the guest address space built on all of the above.
#![cfg_attr(not(test), no_std)]
extern crate alloc;

pub mod caps;
pub mod fault;
pub mod flush;
pub mod format;
pub mod frame;
pub mod size;
pub mod space;
pub mod table;
pub mod validate;

pub use caps::Stage2Caps;
pub use fault::{FaultKind, Stage2Fault};
pub use flush::{Flush, FlushScope, UnmappedLeaf, UnmappedLeaves};
pub use format::{Access, Ept, LeafAttr, MemType, Npt, Stage2Format};
pub use frame::{FrameAlloc, HeapArena, PhysMapper};
pub use size::{LeafSize, MapSize, PageSize, Size1G, Size2M, Size4K};
pub use table::{Leaf, Stage2Table, TableError, Translation};
