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
//!
//! # How the table engine works
//!
//! * **Plan, reserve, write.** Every mutating operation first walks the affected
//!   part of the table read-only (conflicts, the tables it will create, the huge
//!   leaves it must split), then takes exactly that many frames from the allocator,
//!   and only then writes. An error (out of frames, already mapped, bad address)
//!   therefore changes nothing, and no frame is left behind.
//! * **Flush discipline.** Changes that can leave stale translations (unmap, protect,
//!   collapse, harvest, destroy) return a [`flush::Flush`]; frames that left the table
//!   are only handed back by [`flush::Flush::complete`], after the caller's
//!   invalidation. Mapping into not-present entries needs no invalidation and returns
//!   an empty flush.
//! * **Live tables.** The hardware may walk a table while it changes: new tables are
//!   filled before they are linked (release stores), entries are accessed atomically
//!   (the CPU sets accessed/dirty bits), every intermediate state is a valid table.
//! * **Speed.** `map_range` writes one leaf table's run per walk from the root (new
//!   leaf tables are filled in one pass and linked after); `unmap_range` clears runs
//!   and records contiguous unmapped leaves as runs (a page table freed whole is only
//!   read, not cleared); `translate` is an unrolled, always inlined walk, and
//!   [`table::TranslateCursor`] resumes at the last page table or directory for many
//!   nearby lookups.
//!   `examples/w1_quick.rs` measures the 1 GiB workload against its memory floor.
//! * **Untrusted input.** Nothing here panics on guest-controlled values: fault
//!   decoding is total, out-of-range or unaligned addresses are typed errors.
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
