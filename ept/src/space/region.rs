//! Owned regions: handles that own a populated GPA range, in the spirit of Theseus'
//! `MappedPages`.

use alloc::sync::Arc;
use core::fmt;
use core::mem::{align_of, size_of};

use memory_set::{AddrRange, GuestPhysAddr, MemoryAddr, PAGE_SIZE_2M, PAGE_SIZE_4K};

use super::backend::{AreaFlags, BackendKind};
use super::error::SpaceError;
use super::lock::SpinLock;
use super::pod::Pod;
use super::state::Inner;
use super::{AddressSpace, Invalidate};
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper, copy_frame};
use crate::table::TableError;

/// Why a typed view of an [`OwnedRegion`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// `[offset, offset + len)` is not inside the region.
    OutOfBounds {
        /// The requested offset.
        offset: usize,
        /// The requested length in bytes.
        len: usize,
        /// The region's size.
        size: usize,
    },
    /// The view would cross a 4 KiB page: guest pages are not contiguous in host
    /// memory, so views stay inside one page.
    CrossesPage {
        /// The requested offset.
        offset: usize,
        /// The requested length in bytes.
        len: usize,
    },
    /// The host address is not aligned for the type.
    Misaligned {
        /// The guest address of the view.
        gpa: GuestPhysAddr,
        /// The alignment the type needs.
        align: usize,
    },
    /// A mutable view of a region without `WRITE`.
    NotWritable,
    /// A view of a region without `READ`.
    NotReadable,
    /// The page is not mapped or not reachable through the mapper (a bug).
    NotPresent {
        /// The guest address.
        gpa: GuestPhysAddr,
    },
}

impl fmt::Display for ViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfBounds { offset, len, size } => write!(
                f,
                "view {offset:#x}+{len:#x} is outside the region of {size:#x} bytes"
            ),
            Self::CrossesPage { offset, len } => {
                write!(f, "view {offset:#x}+{len:#x} crosses a 4 KiB page")
            }
            Self::Misaligned { gpa, align } => {
                write!(f, "view at {gpa:#x} is not aligned to {align}")
            }
            Self::NotWritable => f.write_str("region is not writable"),
            Self::NotReadable => f.write_str("region is not readable"),
            Self::NotPresent { gpa } => write!(f, "page of {gpa:#x} is not present"),
        }
    }
}

/// A populated RAM range that this handle alone owns: the space refuses to unmap or
/// re-protect it ([`SpaceError::Owned`]), clones get a private copy of it (never a
/// shared frame), and dropping the handle unmaps it and frees its frames.
///
/// # Views
/// `read_type`/`read_slice` and `write_type`/`write_slice` copy typed values out of
/// and into the guest frames with volatile accesses; they never hand out references,
/// because the guest may write its frames at any time (a `&T` into them would be
/// unsound). A view must lie inside one 4 KiB page (guest pages are not
/// host-contiguous in general), be aligned for the type in host memory, needs `READ`,
/// and a write needs `WRITE`.
///
/// # Example
/// ```
/// # use ept::{caps::Stage2Caps, format::{Access, Ept}, frame::HeapArena, flush::FlushScope};
/// # use ept::space::AddressSpace;
/// # use memory_set::GuestPhysAddr;
/// let arena = HeapArena::new(256);
/// let mut space = AddressSpace::<Ept, _, _, _>::new(
///     GuestPhysAddr::new(0), 1 << 20, Stage2Caps::all(),
///     arena.clone(), arena.clone(), |_: FlushScope| {}, 64)?;
/// let mut region = space.alloc_region(None, 0x2000, Access::RW)?;
/// region.write_type::<u64>(0x1008, 7).unwrap();
/// let (left, right) = region.split_at(0x1000).map_err(|(_, e)| e)?;
/// assert_eq!(right.read_type::<u64>(8).unwrap(), 7);
/// drop((left, right));
/// drop(space);
/// assert_eq!(arena.in_use(), 0);
/// # Ok::<(), ept::space::SpaceError>(())
/// ```
pub struct OwnedRegion<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    inner: Arc<SpinLock<Inner<F, M, A, I>>>,
    range: AddrRange<GuestPhysAddr>,
    owner: u64,
    access: Access,
}

impl<F, M, A, I> AddressSpace<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// Maps and populates `size` bytes of RAM with `access` at `gpa` (or, with
    /// `None`, at the lowest free 4 KiB-aligned place in the window; 2 MiB aligned
    /// when the size allows) and returns the handle that owns them.
    pub fn alloc_region(
        &mut self,
        gpa: Option<GuestPhysAddr>,
        size: usize,
        access: Access,
    ) -> Result<OwnedRegion<F, M, A, I>, SpaceError> {
        let mut inner = self.inner.lock();
        let range = inner.region_range(gpa, size)?;
        let owner = inner.map_owned(range, access, access)?;
        drop(inner);
        Ok(OwnedRegion {
            inner: self.inner.clone(),
            range,
            owner,
            access,
        })
    }
}

impl<F, M, A, I> Inner<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// The range for a new region: checked, or found free.
    fn region_range(
        &self,
        gpa: Option<GuestPhysAddr>,
        size: usize,
    ) -> Result<AddrRange<GuestPhysAddr>, SpaceError> {
        let start = match gpa {
            Some(g) => g,
            None => {
                let align = if size >= PAGE_SIZE_2M {
                    PAGE_SIZE_2M
                } else {
                    PAGE_SIZE_4K
                };
                self.find_free_area(self.window.start(), size, self.window, align)
                    .or_else(|_| {
                        self.find_free_area(self.window.start(), size, self.window, PAGE_SIZE_4K)
                    })?
            }
        };
        self.check_range(start, size)
    }

    /// Maps a populated RAM area for a new owner; returns the owner id.
    fn map_owned(
        &mut self,
        range: AddrRange<GuestPhysAddr>,
        access: Access,
        ceiling: Access,
    ) -> Result<u64, SpaceError> {
        let attr = LeafAttr::ram(access);
        self.st.check_attr(attr)?;
        super::ceiling::within(range.start(), access, ceiling)?;
        let owner = self.st.last_owner + 1;
        let flags = AreaFlags {
            attr,
            owner,
            ceiling,
        };
        self.map_area(range, flags, BackendKind::Alloc { populate: true })?;
        self.st.last_owner = owner;
        Ok(owner)
    }
}

impl<F, M, A, I> OwnedRegion<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    /// The first guest-physical address.
    pub fn start(&self) -> GuestPhysAddr {
        self.range.start()
    }

    /// The size in bytes (0 for an empty region, e.g. one side of a split at an end).
    pub fn size(&self) -> usize {
        self.range.size()
    }

    /// Whether the region holds no page.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The owned range.
    pub fn range(&self) -> AddrRange<GuestPhysAddr> {
        self.range
    }

    /// The guest's rights on the region.
    pub fn access(&self) -> Access {
        self.access
    }

    fn same_space(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Absorbs `other`, which must belong to the same space, be adjacent (on either
    /// side) and have the same rights; an empty `other` of the same space always
    /// merges. On failure `other` comes back untouched.
    pub fn merge(&mut self, mut other: Self) -> Result<(), Self> {
        if !self.same_space(&other) {
            return Err(other);
        }
        if other.is_empty() {
            return Ok(());
        }
        if self.is_empty() {
            core::mem::swap(self, &mut other);
            return Ok(());
        }
        let adjacent_after = self.range.end() == Some(other.range.start());
        let adjacent_before = other.range.end() == Some(self.range.start());
        if self.access != other.access || !(adjacent_after || adjacent_before) {
            return Err(other);
        }
        let (owner, other_owner) = (self.owner, other.owner);
        let relabel = self.inner.lock().relabel(other.range, |f| {
            if f.owner == other_owner {
                AreaFlags { owner, ..f }
            } else {
                f
            }
        });
        if relabel.is_err() {
            return Err(other);
        }
        let start = self.range.start().min(other.range.start());
        self.range = AddrRange::from_start_size(start, self.range.size() + other.range.size())
            .unwrap_or(self.range);
        // `other` now owns nothing: its drop unmaps nothing.
        other.range = AddrRange::from_start_size(other.range.start(), 0).unwrap_or(other.range);
        Ok(())
    }

    /// Splits at byte `offset` (a multiple of 4 KiB, at most the size) into
    /// `[start, start + offset)` and the rest, like `slice::split_at`; either side may
    /// be empty. Out of bounds or unaligned (or no frame to split a huge leaf at the
    /// cut): the region comes back with the reason.
    pub fn split_at(self, offset: usize) -> Result<(Self, Self), (Self, SpaceError)> {
        if offset > self.size() || !offset.is_aligned(PAGE_SIZE_4K) {
            let e = if offset > self.size() {
                SpaceError::InvalidRange {
                    start: self.start().as_usize(),
                    size: offset,
                    problem: super::RangeProblem::OutsideWindow,
                }
            } else {
                SpaceError::Unaligned {
                    value: offset,
                    align: PAGE_SIZE_4K,
                }
            };
            return Err((self, e));
        }
        let at = GuestPhysAddr::new(self.start().as_usize() + offset);
        let mut inner = self.inner.lock();
        let new_owner = inner.st.last_owner + 1;
        let right_range = AddrRange::from_start_size(at, self.size() - offset);
        let Some(right_range) = right_range else {
            drop(inner);
            return Err((self, SpaceError::NotMapped { gpa: at }));
        };
        if offset != 0 && offset != self.size() {
            let old = self.owner;
            if let Err(e) = inner.relabel(right_range, |f| {
                if f.owner == old {
                    AreaFlags {
                        owner: new_owner,
                        ..f
                    }
                } else {
                    f
                }
            }) {
                drop(inner);
                return Err((self, e));
            }
        }
        inner.st.last_owner = new_owner;
        drop(inner);
        let mut left = self;
        let (owner, access) = if offset == 0 {
            // The whole region goes right, keeping its label.
            let owner = left.owner;
            left.owner = new_owner;
            (owner, left.access)
        } else {
            (new_owner, left.access)
        };
        let right = Self {
            inner: left.inner.clone(),
            range: right_range,
            owner,
            access,
        };
        left.range = AddrRange::from_start_size(left.start(), offset).unwrap_or(left.range);
        Ok((left, right))
    }

    /// A new region of the same size elsewhere in the space (new frames, same
    /// contents), with `access` or the same rights.
    pub fn deep_copy(&self, access: Option<Access>) -> Result<Self, SpaceError> {
        let access = access.unwrap_or(self.access);
        let mut inner = self.inner.lock();
        // The copy's ceiling is the source's (the rights all of its areas allow).
        let ceiling = inner
            .set
            .iter_overlapping(self.range)
            .fold(Access::all(), |c, a| c.intersection(a.flags().ceiling));
        let range = inner.region_range(None, self.size())?;
        let owner = inner.map_owned(range, access, ceiling)?;
        let table = &inner.st.table;
        let mut copied = Ok(());
        for off in (0..self.size()).step_by(PAGE_SIZE_4K) {
            let src = GuestPhysAddr::new(self.start().as_usize() + off);
            let dst = GuestPhysAddr::new(range.start().as_usize() + off);
            let host = |g: GuestPhysAddr| table.translate(g).map(|t| t.hpa);
            if let (Some(s), Some(d)) = (host(src), host(dst))
                && copy_frame(table.mapper(), d, s).is_err()
            {
                copied = Err(SpaceError::Table(TableError::BadFrame { hpa: s }));
                break;
            }
        }
        drop(inner);
        let copy = Self {
            inner: self.inner.clone(),
            range,
            owner,
            access,
        };
        // A frame the mapper cannot reach (a bug): no half-copied region; dropping
        // it unmaps and frees what was mapped.
        copied.map(|()| copy)
    }

    /// Gives the region new rights (flushing the guest's cached translations).
    pub fn remap(&mut self, access: Access) -> Result<(), SpaceError> {
        if self.is_empty() {
            self.access = access;
            return Ok(());
        }
        let mut inner = self.inner.lock();
        inner.st.check_attr(LeafAttr::ram(access))?;
        inner.check_ceiling(self.range, access)?;
        inner.protect_range(self.range, access, None)?;
        self.access = access;
        Ok(())
    }

    /// The host pointer for a view of `len` bytes at `offset`, after every check.
    fn view_ptr(
        &self,
        offset: usize,
        len: usize,
        align: usize,
        write: bool,
    ) -> Result<*mut u8, ViewError> {
        let oob = ViewError::OutOfBounds {
            offset,
            len,
            size: self.size(),
        };
        let end = offset.checked_add(len).ok_or(oob)?;
        if end > self.size() {
            return Err(oob);
        }
        if !self.access.contains(Access::READ) {
            return Err(ViewError::NotReadable);
        }
        if write && !self.access.contains(Access::WRITE) {
            return Err(ViewError::NotWritable);
        }
        let gpa = GuestPhysAddr::new(self.start().as_usize() + offset);
        if gpa.align_offset(PAGE_SIZE_4K) + len > PAGE_SIZE_4K {
            return Err(ViewError::CrossesPage { offset, len });
        }
        let inner = self.inner.lock();
        let table = &inner.st.table;
        let hpa = table
            .translate(gpa)
            .map(|t| t.hpa)
            .filter(|&h| table.mapper().is_mapped(h))
            .ok_or(ViewError::NotPresent { gpa })?;
        let ptr = table.mapper().phys_to_virt(hpa);
        if !(ptr as usize).is_multiple_of(align) {
            return Err(ViewError::Misaligned { gpa, align });
        }
        Ok(ptr)
    }

    /// A copy of the `T` at byte `offset`.
    ///
    /// A copy, read with one volatile access per `T`, not a reference: the guest may
    /// write the frame at any time (another vCPU, or after the next entry), and a
    /// `&T` into memory that changes under it would be unsound.
    pub fn read_type<T: Pod>(&self, offset: usize) -> Result<T, ViewError> {
        let p = self.view_ptr(offset, size_of::<T>(), align_of::<T>(), false)?;
        // SAFETY: `view_ptr` checked that the `size_of::<T>()` bytes lie in one frame
        // of this region that the mapper reaches (valid for reads, aligned for `T`),
        // owned by this region alone (never shared by clones, never unmapped while the
        // handle lives). A volatile read of a `Pod` type is defined whatever the bytes
        // are, even if the guest writes them concurrently (it may then see a torn
        // value, which `Pod` accepts).
        Ok(unsafe { p.cast::<T>().read_volatile() })
    }

    /// Writes `value` at byte `offset` (needs `WRITE`), with one volatile access.
    pub fn write_type<T: Pod>(&mut self, offset: usize, value: T) -> Result<(), ViewError> {
        let p = self.view_ptr(offset, size_of::<T>(), align_of::<T>(), true)?;
        // SAFETY: as in `read_type`, and the region allows writes; no reference to the
        // frame exists (views are copies).
        unsafe { p.cast::<T>().write_volatile(value) };
        Ok(())
    }

    /// The size in bytes of `len` values of `T` at byte `offset` (out of bounds if it
    /// overflows).
    fn slice_bytes<T>(&self, offset: usize, len: usize) -> Result<usize, ViewError> {
        len.checked_mul(size_of::<T>())
            .ok_or(ViewError::OutOfBounds {
                offset,
                len: usize::MAX,
                size: self.size(),
            })
    }

    /// Copies `out.len()` values of `T` starting at byte `offset` into `out` (one
    /// volatile read each; see [`OwnedRegion::read_type`]).
    pub fn read_slice<T: Pod>(&self, offset: usize, out: &mut [T]) -> Result<(), ViewError> {
        let bytes = self.slice_bytes::<T>(offset, out.len())?;
        if bytes == 0 {
            return Ok(());
        }
        let p = self.view_ptr(offset, bytes, align_of::<T>(), false)?;
        for (i, v) in out.iter_mut().enumerate() {
            // SAFETY: as in `read_type`, for the `i`-th of `out.len()` consecutive
            // values inside one frame.
            *v = unsafe { p.cast::<T>().wrapping_add(i).read_volatile() };
        }
        Ok(())
    }

    /// Copies `values` to byte `offset` (needs `WRITE`; one volatile write each).
    pub fn write_slice<T: Pod>(&mut self, offset: usize, values: &[T]) -> Result<(), ViewError> {
        let bytes = self.slice_bytes::<T>(offset, values.len())?;
        if bytes == 0 {
            return Ok(());
        }
        let p = self.view_ptr(offset, bytes, align_of::<T>(), true)?;
        for (i, &v) in values.iter().enumerate() {
            // SAFETY: as in `write_type`, for the `i`-th of `values.len()` consecutive
            // values inside one frame.
            unsafe { p.cast::<T>().wrapping_add(i).write_volatile(v) };
        }
        Ok(())
    }
}

impl<F, M, A, I> fmt::Debug for OwnedRegion<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedRegion")
            .field("range", &self.range)
            .field("access", &self.access)
            .finish()
    }
}

impl<F, M, A, I> Drop for OwnedRegion<F, M, A, I>
where
    F: Stage2Format,
    M: PhysMapper,
    A: FrameAlloc + Clone,
    I: Invalidate,
{
    fn drop(&mut self) {
        if self.range.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        // Whole areas of this region: no split, so no frame is needed.
        let _ = inner.unmap_range(self.range);
    }
}
