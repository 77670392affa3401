//! Copy-on-write at the leaf: breaking a shared 4 KiB page into a private copy, and
//! restoring a leaf's rights once its frame is no longer shared (or was left stale).

use memory_set::{GuestPhysAddr, HostPhysAddr, MemoryAddr, PAGE_SIZE_4K};

use super::error::SpaceError;
use super::meter::ReserveSink;
use super::state::{State, table_err};
use super::{Invalidate, range_scope};
use crate::format::{Access, LeafAttr, Stage2Format};
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, MapSize, Size4K};
use crate::table::{TableError, Translation};

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc, I: Invalidate> State<F, M, A, I> {
    /// Copy-on-write break of the 4 KiB page at `gpa` (inside leaf `t` over a shared
    /// frame): a private copy replaces it, writable with `attr`. The frames needed
    /// (the copy, plus a table when a 2 MiB leaf must be split) are taken first, so
    /// an error changes nothing. With `prefilled`, they are already in the reserve.
    pub(crate) fn cow_break(
        &mut self,
        gpa: GuestPhysAddr,
        t: Translation,
        attr: LeafAttr,
        prefilled: bool,
    ) -> Result<(), SpaceError> {
        let page = gpa.align_down(PAGE_SIZE_4K);
        // `t.hpa` is the exact translation of an address in the page.
        let src = t.hpa.align_down(PAGE_SIZE_4K);
        if !prefilled {
            let need = 1 + match t.size {
                LeafSize::Size4K => 0,
                LeafSize::Size2M => 1,
                LeafSize::Size1G => 2,
            };
            self.fill_reserve(need, gpa)?;
        }
        let r = self.replace_page(page, src, t, attr);
        if !prefilled {
            self.drain_reserve();
        }
        r?;
        self.counters.cow_copies += 1;
        Ok(())
    }

    /// Replaces the 4 KiB page at `page` (translating to `src`, inside leaf `t`) by a
    /// private copy, writable with `attr`. Frames come from the reserve; the table
    /// path an unmap frees goes back into the reserve for the map that follows, so
    /// nothing here asks the allocator for more than the reserve holds.
    fn replace_page(
        &mut self,
        page: GuestPhysAddr,
        src: HostPhysAddr,
        t: Translation,
        attr: LeafAttr,
    ) -> Result<(), SpaceError> {
        let (table, mut meter) = self.parts();
        let Some(new) = meter.alloc_frame() else {
            return Err(SpaceError::OutOfMemory {
                gpa: Some(page),
                reason: meter.reason(),
            });
        };
        let mut r = crate::frame::copy_frame(table.mapper(), new, src)
            .map_err(|_| TableError::BadFrame { hpa: src });
        if r.is_ok() && t.size != LeafSize::Size4K {
            r = Size4K::ensure_chain_for(table, &mut meter, page).map(|_| ());
        }
        let r = r.and_then(|()| table.unmap_range(&mut meter, page, PAGE_SIZE_4K));
        let reason = meter.reason();
        let flush = match r {
            Ok(flush) => flush,
            Err(e) => {
                meter.dealloc_frame(new);
                return Err(table_err(e, reason, page));
            }
        };
        if t.size != LeafSize::Size4K {
            // The leaf around the page was split: drop its cached translations too.
            self.invalidate_now(range_scope(t.leaf_gpa, t.size.size()));
        }
        let Self {
            invalidate,
            reserve,
            ..
        } = self;
        let old = flush.complete(|s| invalidate.invalidate(s), &mut ReserveSink(reserve));
        let (table, mut meter) = self.parts();
        let mapped = table.map_page::<Size4K>(&mut meter, page, new, attr);
        let reason = meter.reason();
        let flush = match mapped {
            Ok(f) => f,
            Err(e) => {
                // Cannot happen (the reserve holds the path just freed); put the old
                // page back read-only rather than lose it.
                let ro = LeafAttr {
                    access: attr.access.difference(Access::WRITE),
                    ..attr
                };
                let (table, mut meter) = self.parts();
                if let Ok(f) = table.map_page::<Size4K>(&mut meter, page, src, ro) {
                    self.finish(f, false);
                }
                self.alloc.dealloc_frame(new);
                return Err(table_err(e, reason, page));
            }
        };
        self.finish(flush, false);
        self.book.add_4k();
        let Self { book, alloc, .. } = self;
        for leaf in old.iter() {
            book.release(leaf.hpa, leaf.size, alloc);
        }
        Ok(())
    }

    /// Restores the rights of the leaf `t` to `attr` (minus write while its frame is
    /// still shared): after the last sharer left, or for a stale read-only leaf.
    pub(crate) fn reprotect_leaf(
        &mut self,
        t: Translation,
        attr: LeafAttr,
        ram: bool,
    ) -> Result<(), SpaceError> {
        let mut attr = attr;
        if ram && !self.book.unshare_if_unique(t.hpa) {
            attr.access.remove(Access::WRITE);
        }
        let flush = self.metered(t.leaf_gpa, |table, meter| {
            table.protect_range(meter, t.leaf_gpa, t.size.size(), attr)
        })?;
        self.finish(flush, false);
        self.counters.write_restores += 1;
        Ok(())
    }
}
