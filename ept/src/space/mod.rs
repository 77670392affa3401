//! The guest address space: areas, backends, on-demand faults, guest memory access,
//! owned regions and copy-on-write clones, on top of [`memory_set::MemorySet`] and
//! [`Stage2Table`](crate::table::Stage2Table).
//!
//! # Model
//! An [`AddressSpace`] covers a guest-physical window `[base, base + size)`. Inside it,
//! non-overlapping *areas* (a [`MemorySet`]) say what each range is:
//! * a **linear window** ([`AddressSpace::map_linear`]) onto host memory the space does
//!   not own (MMIO, a host buffer), mapped up front with the largest leaves alignment
//!   allows, usually `Uncacheable` for devices;
//! * **RAM** ([`AddressSpace::map_alloc`]): zero-filled frames from the allocator, either
//!   populated up front or on the first fault. A fault inside an area that covers the
//!   whole aligned 2 MiB block around it, where no 4 KiB leaf exists yet and the
//!   allocator has a 2 MiB block, maps a 2 MiB leaf; otherwise a 4 KiB leaf.
//!
//! The table always agrees with the areas: a leaf never straddles an area boundary
//! (huge leaves are split *before* an area is cut, see
//! [`MappingBackend::prepare_split`](memory_set::MappingBackend::prepare_split)), no leaf exists outside an area, and a RAM leaf is
//! writable only if its area is and its frame is not shared copy-on-write.
//!
//! # Frames and flushes
//! Every table change returns a [`Flush`]; the space completes it itself: it calls
//! [`Invalidate::invalidate`] (INVEPT / TLB_CONTROL in the hypervisor) and only then
//! frees table frames and the RAM frames of unmapped leaves. Linear windows never free
//! their host frames.
//!
//! Frames are counted per space ([`SpaceStats`]): RAM frames (a frame shared with a
//! clone counts in both) and table frames (root included). The quota ([`Limits`])
//! bounds the host frames a space and its clones (its *family*) hold together, each
//! shared frame once; going over it is [`SpaceError::OutOfMemory`] with
//! [`OomReason::Quota`] for this guest alone, and an empty host allocator is
//! [`OomReason::HostFrames`].
//!
//! # Budgets and host policy
//! Bookkeeping the guest can grow (areas, gap index, entries for shared and 2 MiB
//! frames) counts against the family's entry budget and an optional host-wide
//! [`MetadataPool`]; an operation that would pass either is refused before it changes
//! anything ([`SpaceError::OutOfMetadata`]); see `budget.rs`. The rights an area was
//! mapped with are its ceiling: [`AddressSpace::protect`] and the region operations
//! never go above it ([`SpaceError::RightsExceeded`]); see `ceiling.rs`.
//!
//! # Transactions
//! An error changes nothing: areas, tables, frame counts and guest memory are as before.
//! Populating (`map_alloc(.., true)`, [`AddressSpace::populate_area`]) undoes the leaves
//! it added when it runs out of frames; `unmap` and `protect` take the (at most four)
//! frames needed to split huge leaves at their ends *before* changing anything;
//! [`AddressSpace::try_clone`] builds the whole child before it touches the parent.
//!
//! # The fault path
//! [`AddressSpace::handle_fault`] is the hot path of a running guest. The area comes
//! from a one-entry hint (faults cluster in one area; every change to the areas clears
//! it) before the B-tree. A not-present fault on RAM where no 2 MiB leaf can fit walks
//! the table once to the 4 KiB entry (prefetching it, so the cache miss overlaps the
//! allocation and zeroing), takes and zeroes a frame within the quota and fills the
//! entry: no reserve, no translation first. Anything else (a missing table, a page
//! mapped after all, no frame) falls back, having changed nothing, to the general path,
//! which translates first and decides: populate, spurious, copy-on-write or restore.
//!
//! # Copy-on-write
//! [`AddressSpace::try_clone`] gives a new space whose RAM leaves map the same frames,
//! read-only in both spaces, with a reference count per frame (see `frames.rs`). A write
//! fault on a shared frame copies the 4 KiB page (a shared 2 MiB leaf is split first);
//! when the other side has already let go (count 1) it just restores write access.
//! Linear windows are mapped as they are in both. Dropping either side frees exactly
//! the frames it alone held.
//!
//! # Guest memory access by the hypervisor
//! [`AddressSpace::read`] / [`AddressSpace::write`] (and the `_obj` forms for [`Pod`]
//! types) work at any GPA and length across pages, all or nothing, with the guest's
//! permissions: reading needs `READ`, writing `WRITE` in every area touched; an uncovered
//! byte is [`SpaceError::NotMapped`]; a linear window is [`SpaceError::NotRam`]; a range
//! of an [`OwnedRegion`] is [`SpaceError::Owned`] (use the region's views). A read of a
//! page not yet faulted in returns zeros without allocating (the guest would see zeros
//! too); a write faults it in exactly as a guest write would (allocating, or breaking
//! copy-on-write). A loader that fills read-only code maps it writable, writes, then
//! calls [`AddressSpace::protect`].
//!
//! # Owned regions
//! See [`OwnedRegion`]: a handle that owns a populated range and unmaps it on drop.
//!
//! # Dirty logging and snapshots
//! [`AddressSpace::start_dirty_log`] / [`AddressSpace::harvest_dirty`] /
//! [`AddressSpace::stop_dirty_log`] track written 4 KiB pages with the hardware's dirty
//! flags or with write protection ([`dirty`]). [`AddressSpace::snapshot`] freezes the
//! memory contents copy-on-write and [`AddressSpace::restore`] rolls back only the
//! pages changed since ([`snapshot`]).
//!
//! # Memory that moves between owners
//! [`AddressSpace::take`] unmaps a RAM range and hands its frames back as a
//! [`FrameBundle`] (no copy); [`AddressSpace::map_bundle`] moves them into a space
//! (this or another) with new rights; [`AddressSpace::map_window`] maps the same
//! frames into several spaces as a shared window, each with its own rights (clones
//! keep windows shared). [`AddressSpace::discard`] gives a range's frames back at
//! once (a balloon) and keeps the range on demand. [`AddressSpace::set_zero_page`]
//! makes read faults on never-written RAM map one shared read-only page of zeros.
//! All of it, like clones and snapshots, goes through the one per-frame reference
//! count of `frames.rs`: whoever lets go last frees, after the flush. How quotas
//! count these frames: see `share.rs` (a bundle's frames stay charged to the family
//! they came from until a move carries the charge over), `balloon.rs`, `zero.rs`.
//!
//! # Example
//! ```
//! use ept::caps::Stage2Caps;
//! use ept::flush::FlushScope;
//! use ept::format::{Access, Npt};
//! use ept::frame::HeapArena;
//! use ept::space::{AddressSpace, FaultOutcome};
//! use ept::fault::{FaultKind, Stage2Fault};
//! use memory_set::GuestPhysAddr;
//!
//! let arena = HeapArena::new(2048);
//! let flushes = std::rc::Rc::new(std::cell::Cell::new(0));
//! let counter = flushes.clone();
//! let mut space = AddressSpace::<Npt, _, _, _>::new(
//!     GuestPhysAddr::new(0),
//!     16 << 20,
//!     Stage2Caps::all(),
//!     arena.clone(),
//!     arena.clone(),
//!     move |_: FlushScope| counter.set(counter.get() + 1),
//!     1024,
//! )?;
//! // 1 MiB of RAM at 4 MiB, faulted in on demand.
//! space.map_alloc(GuestPhysAddr::new(0x40_0000), 0x10_0000, Access::RW, false)?;
//! let fault = Stage2Fault {
//!     gpa: GuestPhysAddr::new(0x40_1234),
//!     access: Access::WRITE,
//!     kind: FaultKind::NotPresent,
//!     in_guest_walk: false,
//! };
//! assert!(matches!(space.handle_fault(fault)?, FaultOutcome::Populated { .. }));
//! space.write_obj(GuestPhysAddr::new(0x40_1000), &0xdead_beef_u32)?;
//! assert_eq!(space.read_obj::<u32>(GuestPhysAddr::new(0x40_1000))?, 0xdead_beef);
//! space.unmap(GuestPhysAddr::new(0x40_0000), 0x10_0000)?;
//! assert!(flushes.get() > 0);
//! drop(space);
//! assert_eq!(arena.in_use(), 0, "every frame went back");
//! # Ok::<(), ept::space::SpaceError>(())
//! ```

mod access;
mod areas;
mod backend;
mod balloon;
mod bitmap;
mod budget;
mod ceiling;
mod clone;
mod cow;
pub mod dirty;
mod error;
mod fault;
mod frames;
mod lock;
mod meter;
mod pod;
mod populate;
mod region;
mod report;
mod share;
pub mod snapshot;
mod split;
mod state;
mod zero;

use alloc::sync::Arc;

use memory_set::{AddrRange, GuestPhysAddr, HostPhysAddr, MemoryAddr, MemorySet, PAGE_SIZE_4K};

use crate::caps::Stage2Caps;
use crate::flush::{Flush, FlushScope};
use crate::format::{Access, LeafAttr, MemType, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::table::Translation;

use backend::{AreaFlags, Backend, BackendKind};
use lock::SpinLock;
use state::{Inner, State};

pub use bitmap::DirtyBitmap;
pub use budget::{ENTRY_BYTES, Limits, MIN_METADATA_ENTRIES, MetadataPool};
pub use dirty::{DirtyMode, HugeLeaves};
pub use error::{OomReason, RangeProblem, SpaceError, TrackingProblem};
pub use fault::FaultOutcome;
pub use pod::Pod;
pub use region::{OwnedRegion, ViewError};
pub use report::{AreaInfo, AreaKind, REPORT_AREAS, SpaceReport, SpaceStats};
pub use share::{BundleProblem, FrameBundle};
pub use snapshot::{RestoreStats, Snapshot};

/// How the hypervisor invalidates cached stage-2 translations of one address space
/// (INVEPT single-context on Intel, the VMCB TLB_CONTROL / ASID flush on AMD).
///
/// The space calls it for every completed [`Flush`], before it frees any frame that
/// left the table. Closures `FnMut(FlushScope)` implement it.
pub trait Invalidate {
    /// Invalidates the translations `scope` covers.
    fn invalidate(&mut self, scope: FlushScope);
}

impl<T: FnMut(FlushScope)> Invalidate for T {
    fn invalidate(&mut self, scope: FlushScope) {
        self(scope)
    }
}

/// A guest's stage-2 address space (see the [module docs](self)).
///
/// `F` is the entry format ([`Ept`](crate::format::Ept) or [`Npt`](crate::format::Npt)),
/// `M` reaches host frames, `A` is a cheap `Clone` handle to the host frame allocator
/// (clones share frames through it), `I` invalidates this space's translations.
///
/// The state sits behind a lock shared with the space's [`OwnedRegion`]s, so the last
/// of them to go frees the table and frames (the space itself usually goes last).
///
/// # Example
/// A guest with on-demand RAM, a device window and a copy-on-write clone, over the
/// host-test arena:
/// ```
/// use ept::caps::Stage2Caps;
/// use ept::flush::FlushScope;
/// use ept::format::{Access, Ept, MemType};
/// use ept::frame::HeapArena;
/// use ept::space::AddressSpace;
/// use memory_set::{GuestPhysAddr, HostPhysAddr};
///
/// let arena = HeapArena::new(4096);
/// let mut guest = AddressSpace::<Ept, _, _, _>::new(
///     GuestPhysAddr::new(0),
///     64 << 20,
///     Stage2Caps::all(),
///     arena.clone(),
///     arena.clone(),
///     |_: FlushScope| {}, // INVEPT in the hypervisor
///     2048,
/// )?;
/// guest.map_alloc(GuestPhysAddr::new(0), 8 << 20, Access::RWX, false)?;
/// guest.map_linear(
///     GuestPhysAddr::new(0x3f0_0000),
///     HostPhysAddr::new(0xfee0_0000),
///     0x1000,
///     Access::RW,
///     MemType::Uncacheable,
/// )?;
/// guest.write(GuestPhysAddr::new(0x1000), b"hello")?;
/// let mut child = guest.try_clone()?;
/// child.write(GuestPhysAddr::new(0x1000), b"HELLO")?; // copies the page
/// let mut buf = [0u8; 5];
/// guest.read(GuestPhysAddr::new(0x1000), &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// println!("{}", child.report());
/// drop((guest, child));
/// assert_eq!(arena.in_use(), 0);
/// # Ok::<(), ept::space::SpaceError>(())
/// ```
pub struct AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    inner: Arc<SpinLock<Inner<F, M, A, I>>>,
    window: AddrRange<GuestPhysAddr>,
    root: HostPhysAddr,
    root_pointer: u64,
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// An empty space over `[base, base + size)` (both 4 KiB aligned, inside the GPA
    /// width of `caps`), with an empty stage-2 table whose root counts against
    /// `quota_frames`, and the default bookkeeping budget ([`Limits::quota`]).
    pub fn new(
        base: GuestPhysAddr,
        size: usize,
        caps: Stage2Caps,
        mapper: M,
        alloc: A,
        invalidate: I,
        quota_frames: usize,
    ) -> Result<Self, SpaceError> {
        let limits = Limits::quota(quota_frames);
        Self::with_limits(base, size, caps, mapper, alloc, invalidate, limits)
    }

    /// [`AddressSpace::new`] with explicit frame and bookkeeping limits, which the new
    /// space and all its clones share (see [`Limits`]).
    pub fn with_limits(
        base: GuestPhysAddr,
        size: usize,
        caps: Stage2Caps,
        mapper: M,
        alloc: A,
        invalidate: I,
        limits: Limits,
    ) -> Result<Self, SpaceError> {
        let window = window_range(base, size, &caps)?;
        let budget = budget::Budget::new(limits);
        budget.metadata_room(0)?;
        let state = State::new(mapper, alloc, invalidate, caps, budget)?;
        Ok(Self::from_state(window, MemorySet::new(), state))
    }

    fn from_state(
        window: AddrRange<GuestPhysAddr>,
        set: MemorySet<Backend<F, M, A, I>>,
        st: State<F, M, A, I>,
    ) -> Self {
        let root = st.table.root();
        let root_pointer = st.table.root_pointer();
        Self {
            inner: Arc::new(SpinLock::new(Inner {
                set,
                st,
                window,
                last_area: core::cell::Cell::new(None),
            })),
            window,
            root,
            root_pointer,
        }
    }

    /// The first guest-physical address of the window.
    pub fn base(&self) -> GuestPhysAddr {
        self.window.start()
    }

    /// The end of the window (exclusive).
    pub fn end(&self) -> GuestPhysAddr {
        // The window lies below 2^max_phys_bits (checked in `new`), so the end exists.
        GuestPhysAddr::new(self.window.start().as_usize() + self.window.size())
    }

    /// The size of the window in bytes.
    pub fn size(&self) -> usize {
        self.window.size()
    }

    /// The window as a range.
    pub fn window(&self) -> AddrRange<GuestPhysAddr> {
        self.window
    }

    /// The root table frame (what EPTP / nCR3 point at).
    pub fn root(&self) -> HostPhysAddr {
        self.root
    }

    /// The value for the hardware root pointer (EPTP with memory type, walk length
    /// and A/D enable; or nCR3).
    pub fn root_pointer(&self) -> u64 {
        self.root_pointer
    }

    /// Whether `[start, start + size)` lies inside the window (an empty range counts
    /// when its start lies in `[base, end]`).
    pub fn contains_range(&self, start: GuestPhysAddr, size: usize) -> bool {
        AddrRange::from_start_size(start, size).is_some_and(|r| self.window.contains_range(&r))
    }

    /// The lowest `align`-aligned start at or above `hint` such that `[start, start +
    /// size)` is free and inside both `limit` and the window.
    ///
    /// Errors: [`SpaceError::Unaligned`] for a size not a multiple of 4 KiB or an
    /// `align` not a power of two; [`SpaceError::NoFreeArea`] if there is no such range.
    pub fn find_free_area(
        &self,
        hint: GuestPhysAddr,
        size: usize,
        limit: AddrRange<GuestPhysAddr>,
        align: usize,
    ) -> Result<GuestPhysAddr, SpaceError> {
        let inner = self.inner.lock();
        inner.find_free_area(hint, size, limit, align)
    }

    /// Maps the host window `[hpa, hpa + size)` at `gpa` with `access` and `mem_type`
    /// (`Uncacheable` for devices), with the largest leaves alignment and capabilities
    /// allow. The space never frees these host frames.
    ///
    /// Errors: invalid or unaligned ranges, [`SpaceError::AlreadyMapped`],
    /// [`SpaceError::BadAccess`], [`SpaceError::BadHostAddress`], out of memory for
    /// tables.
    pub fn map_linear(
        &mut self,
        gpa: GuestPhysAddr,
        hpa: HostPhysAddr,
        size: usize,
        access: Access,
        mem_type: MemType,
    ) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        let range = inner.check_range(gpa, size)?;
        if !hpa.is_aligned_4k() {
            return Err(SpaceError::Unaligned {
                value: hpa.as_usize(),
                align: PAGE_SIZE_4K,
            });
        }
        let host_last = hpa.checked_add(size - 1).ok_or(SpaceError::InvalidRange {
            start: gpa.as_usize(),
            size,
            problem: RangeProblem::HostOverflow,
        })?;
        let bits = inner.st.caps.host_phys_bits;
        if bits < 64 && host_last.as_usize() >> bits != 0 {
            return Err(SpaceError::BadHostAddress { hpa: host_last });
        }
        let attr = LeafAttr { access, mem_type };
        inner.st.check_attr(attr)?;
        let kind = BackendKind::Linear { gpa, hpa };
        let result = inner.map_area(range, AreaFlags::new(attr), kind);
        debug_validated(&inner, result)
    }

    /// Maps `[gpa, gpa + size)` as RAM (write-back) with `access`: zero-filled frames
    /// allocated now (`populate`) or on the first fault. Populating is all or nothing.
    pub fn map_alloc(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        access: Access,
        populate: bool,
    ) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        let range = inner.check_range(gpa, size)?;
        let attr = LeafAttr::ram(access);
        inner.st.check_attr(attr)?;
        let result = inner.map_area(range, AreaFlags::new(attr), BackendKind::Alloc { populate });
        debug_validated(&inner, result)
    }

    /// Allocates every not yet present page of `[gpa, gpa + size)`, which must be
    /// covered by RAM areas. All or nothing: on error the leaves it added are gone.
    pub fn populate_area(&mut self, gpa: GuestPhysAddr, size: usize) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        let range = inner.check_range(gpa, size)?;
        let result = inner.populate_range(range);
        if result.is_ok() {
            inner.note_area_change(range);
        }
        debug_validated(&inner, result)
    }

    /// Unmaps `[gpa, gpa + size)`: areas inside are removed, areas crossing an end are
    /// cut, RAM frames are freed after the flush. Holes are fine. A range touching an
    /// [`OwnedRegion`] is refused ([`SpaceError::Owned`]).
    pub fn unmap(&mut self, gpa: GuestPhysAddr, size: usize) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        let range = inner.check_range(gpa, size)?;
        inner.check_not_owned(range)?;
        let result = inner.unmap_range(range);
        debug_validated(&inner, result)
    }

    /// Gives every area in `[gpa, gpa + size)` the rights `access` (memory types are
    /// kept), cutting areas that cross an end. Holes are fine. Shared copy-on-write
    /// frames stay read-only until written. Rights above what an area was mapped with
    /// are refused ([`SpaceError::RightsExceeded`]); a protect that changes nothing
    /// needs no frame and always succeeds.
    pub fn protect(
        &mut self,
        gpa: GuestPhysAddr,
        size: usize,
        access: Access,
    ) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        let range = inner.check_range(gpa, size)?;
        inner.st.check_attr(LeafAttr::ram(access))?;
        inner.check_not_owned(range)?;
        inner.check_ceiling(range, access)?;
        let result = inner.protect_range(range, access, None);
        debug_validated(&inner, result)
    }

    /// Unmaps every area except those of live [`OwnedRegion`]s.
    pub fn clear(&mut self) -> Result<(), SpaceError> {
        let mut inner = self.inner.lock();
        let result = inner.clear();
        debug_validated(&inner, result)
    }

    /// Whether any area shares an address with `range`.
    pub fn overlaps(&self, range: AddrRange<GuestPhysAddr>) -> bool {
        self.inner.lock().set.overlaps(range)
    }

    /// Checks that every byte of `range` lies in an area allowing `access`.
    pub fn check_region_access(
        &self,
        range: AddrRange<GuestPhysAddr>,
        access: Access,
    ) -> Result<(), SpaceError> {
        self.inner.lock().check_access(range, access).map(|_| ())
    }

    /// Where `gpa` translates to right now (`None` if absent, e.g. not faulted in yet):
    /// host address of the page, rights, leaf size. For tests, reports and hypercalls
    /// that ask for the leaf size of a GPA.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<Translation> {
        self.inner.lock().st.table.translate(gpa)
    }

    /// The capabilities the table was built for.
    pub fn caps(&self) -> Stage2Caps {
        self.inner.lock().st.caps
    }

    /// Why the hardware rejected the walk of `gpa` (an EPT misconfiguration or an NPT
    /// reserved-bit fault), in words: the entry the software walk stops at, or else the
    /// first problem the table validator finds; `None` when the table is sound (the
    /// hardware then saw a stale translation).
    pub fn explain_misconfig(&self, gpa: GuestPhysAddr) -> Option<alloc::string::String> {
        use alloc::string::ToString;
        let inner = self.inner.lock();
        let table = &inner.st.table;
        match crate::validate::walk(table, gpa) {
            Err(crate::validate::WalkError::Misconfig { level, problem }) => Some(alloc::format!(
                "level-{level} entry on the walk of {gpa:#x}: {problem}"
            )),
            _ => table.validate().err().map(|e| e.to_string()),
        }
    }

    /// Runs the table validator (what the hardware would reject, plus the table's own
    /// invariants) and the space's invariants (no leaf outside an area, no writable
    /// leaf over a shared frame or in a read-only area).
    pub fn validate(&self) -> Result<(), &'static str> {
        self.inner.lock().validate()
    }
}

impl<F, M, A, I> core::fmt::Debug for AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("format", &F::NAME)
            .field("window", &self.window)
            .field("root", &self.root)
            .field("stats", &self.stats())
            .finish()
    }
}

/// In debug builds, runs the validator (the hardware's view of the table plus the
/// space's own invariants) after every change of the areas, whatever its outcome, and
/// panics with the broken rule: a bug caught where it happens. Release builds return
/// `result` untouched; faults are not checked here (they are the hot path).
fn debug_validated<F, M, A, I, T>(
    inner: &Inner<F, M, A, I>,
    result: Result<T, SpaceError>,
) -> Result<T, SpaceError>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    #[cfg(debug_assertions)]
    if let Err(rule) = inner.validate() {
        panic!("stage-2 address space invariant broken: {rule}");
    }
    #[cfg(not(debug_assertions))]
    let _ = inner;
    result
}

/// Checks and builds the window of a new space.
fn window_range(
    base: GuestPhysAddr,
    size: usize,
    caps: &Stage2Caps,
) -> Result<AddrRange<GuestPhysAddr>, SpaceError> {
    let bad = |problem| SpaceError::InvalidRange {
        start: base.as_usize(),
        size,
        problem,
    };
    let window = page_range(base, size)?;
    let last = window.last().ok_or(bad(RangeProblem::Empty))?;
    let bits = u32::from(caps.max_phys_bits);
    if bits < usize::BITS && last.as_usize() >> bits != 0 {
        return Err(bad(RangeProblem::BeyondPhysWidth));
    }
    Ok(window)
}

/// Checks that `[start, start + size)` is a non-empty, 4 KiB aligned range that does
/// not overflow, and builds it.
pub(crate) fn page_range(
    start: GuestPhysAddr,
    size: usize,
) -> Result<AddrRange<GuestPhysAddr>, SpaceError> {
    let bad = |problem| SpaceError::InvalidRange {
        start: start.as_usize(),
        size,
        problem,
    };
    if size == 0 {
        return Err(bad(RangeProblem::Empty));
    }
    for value in [start.as_usize(), size] {
        if !value.is_aligned(PAGE_SIZE_4K) {
            return Err(SpaceError::Unaligned {
                value,
                align: PAGE_SIZE_4K,
            });
        }
    }
    AddrRange::from_start_size(start, size).ok_or(bad(RangeProblem::Overflow))
}

/// The invalidation of one range (the whole space if it cannot be expressed).
pub(crate) fn range_scope(gpa: GuestPhysAddr, size: usize) -> FlushScope {
    match AddrRange::from_start_size(gpa, size) {
        Some(r) => FlushScope::Range(r),
        None => FlushScope::All,
    }
}

/// A flush token that only invalidates (helper for code that writes leaves directly).
#[allow(dead_code)]
pub(crate) fn invalidation_only(gpa: GuestPhysAddr, size: usize) -> Flush {
    let mut f = Flush::none();
    f.add_range(gpa, size);
    f
}
