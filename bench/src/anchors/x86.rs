//! The `x86_64` crate 0.15: `OffsetPageTable` over the arena, with the arena's constant
//! physical-to-virtual offset.

use x86_64::structures::paging::{
    FrameAllocator, FrameDeallocator, OffsetPageTable, PageTable, PhysFrame, Size4KiB,
};
use x86_64::{PhysAddr, VirtAddr};

use crate::arena::{Arena, SIZE_4K};

/// The crate's frame allocator and deallocator traits over the arena.
pub struct X86Frames(pub Arena);

// SAFETY: every frame handed out is a distinct, unused, 4 KiB-aligned 4 KiB frame of the
// arena, which stays alive as long as this handle does.
unsafe impl FrameAllocator<Size4KiB> for X86Frames {
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        let pa = self.0.alloc_4k()?;
        Some(PhysFrame::containing_address(PhysAddr::new(pa as u64)))
    }
}

impl FrameDeallocator<Size4KiB> for X86Frames {
    unsafe fn deallocate_frame(&mut self, frame: PhysFrame<Size4KiB>) {
        self.0.free_4k(frame.start_address().as_u64() as usize);
    }
}

/// A level-4 table in the arena; [`X86Table::with_mapper`] gives the `OffsetPageTable`.
pub struct X86Table {
    arena: Arena,
    l4: usize,
    offset: usize,
}

impl X86Table {
    /// A fresh, zeroed level-4 table.
    pub fn new(arena: &Arena) -> Self {
        let l4 = arena.alloc_4k().expect("arena exhausted");
        arena.zero(l4, SIZE_4K);
        X86Table {
            arena: arena.clone(),
            l4,
            offset: arena.virt_offset(),
        }
    }

    /// Runs `f` with the crate's mapper over this table.
    pub fn with_mapper<R>(&mut self, f: impl FnOnce(&mut OffsetPageTable<'_>) -> R) -> R {
        // SAFETY: `l4` is a 4 KiB frame of the arena owned by this table, so nothing else
        // aliases it while `&mut self` is held; it was zeroed in `new` or written only by
        // the mapper since, and an all-zero or mapper-written `PageTable` is valid.
        let l4 = unsafe { &mut *(self.l4.wrapping_add(self.offset) as *mut PageTable) };
        // SAFETY: every frame the mapper reaches through `l4` came from the same arena,
        // which maps all its physical addresses at `physical + offset`.
        let mut mapper = unsafe { OffsetPageTable::new(l4, VirtAddr::new(self.offset as u64)) };
        f(&mut mapper)
    }
}

impl Drop for X86Table {
    fn drop(&mut self) {
        self.arena.free_4k(self.l4);
    }
}
