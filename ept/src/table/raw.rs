//! Raw access to table frames: the only `unsafe` of the table engine.

use core::sync::atomic::{AtomicU64, Ordering};

use memory_set::HostPhysAddr;

use super::ENTRIES;
use crate::format::ADDR_MASK;
use crate::frame::{FrameAlloc, PhysMapper};
use crate::table::TableError;

/// A view of one table frame's 512 entries.
///
/// Invariant (upheld by `Stage2Table`): a `Tbl` is only made for a frame that the
/// table allocated and still owns (its root, a frame reached through one of its
/// table entries, or a frame it just allocated), and only used while the table holds
/// that frame; frames leave a table only through a `Flush`, after the operation
/// that created the view has returned. Entries are atomics because the CPU sets
/// accessed/dirty bits concurrently.
#[derive(Clone, Copy)]
pub(crate) struct Tbl(*mut AtomicU64);

impl Tbl {
    /// The view of `frame` (see the type's invariant).
    #[inline]
    pub(crate) fn of(mapper: &impl PhysMapper, frame: HostPhysAddr) -> Tbl {
        Tbl(mapper.phys_to_virt(frame) as *mut AtomicU64)
    }

    #[inline]
    fn at(&self, i: usize) -> &AtomicU64 {
        // SAFETY: by the type invariant the pointer is the 4 KiB-aligned mapping of a
        // live table frame (PhysMapper contract), i.e. 512 `u64`s with the layout of
        // `AtomicU64`; the index is masked to 0..512.
        let p = unsafe { self.0.add(i & (ENTRIES - 1)) };
        // SAFETY: as above: `p` points at a live, aligned entry of the frame.
        unsafe { &*p }
    }

    /// Whether `self` and `other` view the same frame.
    #[inline]
    pub(crate) fn same(&self, other: Tbl) -> bool {
        core::ptr::eq(self.0, other.0)
    }

    /// Reads entry `i`.
    #[inline]
    pub(crate) fn load(&self, i: usize) -> u64 {
        self.at(i).load(Ordering::Relaxed)
    }

    /// Hints the CPU to bring entry `i` into the cache (no architectural effect):
    /// for callers that will read it after other long work.
    #[inline]
    pub(crate) fn prefetch(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.at(i) as *const AtomicU64 as *const i8;
            // SAFETY: PREFETCHT0 only loads a cache line as a hint: it never faults
            // and has no architectural effect (SDM Vol. 2B "PREFETCHh"); SSE, which
            // the intrinsic requires, is part of the x86_64 baseline.
            unsafe { core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Writes entry `i`.
    #[inline]
    pub(crate) fn store(&self, i: usize, v: u64) {
        self.at(i).store(v, Ordering::Relaxed)
    }

    /// Writes entry `i` after every earlier write (used to link a table whose
    /// entries were just written, so a concurrent hardware walk sees them).
    #[inline]
    pub(crate) fn store_release(&self, i: usize, v: u64) {
        self.at(i).store(v, Ordering::Release)
    }

    /// Clears `bits` in entry `i` atomically (the CPU may be setting A/D bits),
    /// returning the old value.
    #[inline]
    pub(crate) fn clear_bits(&self, i: usize, bits: u64) -> u64 {
        self.at(i).fetch_and(!bits, Ordering::Relaxed)
    }

    /// Sets `bits` in entry `i` atomically, as the CPU sets accessed/dirty flags.
    #[inline]
    pub(crate) fn set_bits(&self, i: usize, bits: u64) {
        self.at(i).fetch_or(bits, Ordering::Relaxed);
    }

    /// Whether every entry is zero.
    pub(crate) fn is_empty(&self) -> bool {
        (0..ENTRIES).all(|i| self.load(i) == 0)
    }

    /// Fills a frame that is not linked into any table yet: entries `i0..i0 + n`
    /// get `first + k * step`, all others zero. Plain (vectorisable) writes: nothing
    /// can observe the frame before it is linked with [`Tbl::store_release`].
    #[inline]
    pub(crate) fn fill_fresh(&self, i0: usize, n: usize, first: u64, step: u64) {
        let i0 = i0.min(ENTRIES);
        let n = n.min(ENTRIES - i0);
        // SAFETY: the frame is a live 4 KiB table frame (type invariant) that is not
        // linked yet, so no CPU walk and no other view accesses it while this
        // exclusive borrow lives; `[u64; 512]` has the frame's size and alignment.
        let s = unsafe { &mut *(self.0 as *mut [u64; ENTRIES]) };
        s[..i0].fill(0);
        let mut e = first;
        for slot in &mut s[i0..i0 + n] {
            *slot = e;
            e = e.wrapping_add(step);
        }
        s[i0 + n..].fill(0);
    }

    /// Zeroes the whole frame.
    #[inline]
    pub(crate) fn zero(&self) {
        // SAFETY: the frame is a live 4 KiB table frame (type invariant), so the
        // pointer is valid for writes of 4096 bytes; no `&` to its entries is alive
        // across this call in the table code (views hand out only short borrows).
        unsafe { core::ptr::write_bytes(self.0, 0, ENTRIES) };
    }
}

/// Takes one frame from `alloc` for a table at `level`, checking it can be one.
#[inline]
pub(crate) fn take_frame(
    alloc: &mut (impl FrameAlloc + ?Sized),
    mapper: &impl PhysMapper,
    level: u8,
) -> Result<HostPhysAddr, TableError> {
    let f = alloc.alloc_frame().ok_or(TableError::NoMemory { level })?;
    if f.as_u64() & !ADDR_MASK != 0 || !mapper.is_mapped(f) {
        alloc.dealloc_frame(f);
        return Err(TableError::BadFrame { hpa: f });
    }
    Ok(f)
}

/// A read-only view of a table frame that a [`Stage2Table`](super::Stage2Table)
/// keeps between operations, or of a static table with no present entry.
///
/// Invariant: the pointer is either [`EMPTY_TABLE`] or `phys_to_virt` of a table
/// frame that the holding table owns and keeps linked while it holds the view (the
/// [`PhysMapper`] contract keeps such a pointer valid as long as the mapper exists,
/// and the table owns its mapper). Only loads go through it.
#[derive(Clone, Copy)]
pub(crate) struct HeldTbl(core::ptr::NonNull<AtomicU64>);

// SAFETY: a `HeldTbl` only reads atomics, from memory that stays valid while its
// holder lives (type invariant), so sharing or sending it with its holder is as safe
// as the holder's own `Tbl` views made from its mapper.
unsafe impl Send for HeldTbl {}
// SAFETY: as above: every access is an atomic load.
unsafe impl Sync for HeldTbl {}

/// A table with no present entry: what a [`HeldTbl`] shows when there is no table.
static EMPTY_TABLE: [AtomicU64; ENTRIES] = [const { AtomicU64::new(0) }; ENTRIES];

impl HeldTbl {
    /// The view of [`EMPTY_TABLE`].
    pub(crate) fn empty() -> Self {
        HeldTbl(core::ptr::NonNull::from(&EMPTY_TABLE[0]))
    }

    /// The held view of `t` (the caller keeps the type invariant).
    pub(crate) fn of(t: Tbl) -> Self {
        match core::ptr::NonNull::new(t.0) {
            Some(p) => HeldTbl(p),
            None => Self::empty(),
        }
    }

    /// Whether this is the view of `t` (`None`: of [`EMPTY_TABLE`]).
    pub(crate) fn shows(&self, t: Option<Tbl>) -> bool {
        match t {
            Some(t) => core::ptr::eq(self.0.as_ptr(), t.0),
            None => core::ptr::eq(self.0.as_ptr(), &EMPTY_TABLE[0]),
        }
    }

    /// Reads entry `i`.
    #[inline(always)]
    pub(crate) fn load(&self, i: usize) -> u64 {
        // SAFETY: by the type invariant the pointer is the start of 512 live
        // `AtomicU64`s (a table frame or `EMPTY_TABLE`); the index is masked to 0..512.
        let p = unsafe { self.0.as_ptr().add(i & (ENTRIES - 1)) };
        // SAFETY: as above: `p` points at a live, aligned entry.
        unsafe { &*p }.load(Ordering::Relaxed)
    }
}
