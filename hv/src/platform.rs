//! What the hypervisor needs from the machine it runs on: host memory (frames and the
//! way to reach them) and a console.
//!
//! The kernel runs on identity-mapped memory: its boot page tables map the first
//! 4 GiB of host-physical memory at the same virtual addresses, the heap and every
//! frame lie below 4 GiB, so a host pointer *is* a host-physical address.

use core::fmt;

use ept::frame::{FrameAlloc, PhysMapper};
use memory_set::HostPhysAddr;
use spin::Mutex;

use crate::frames::FrameAllocator;

/// The host-physical address of a heap object (identity mapping).
pub fn virt_to_phys<T>(object: &T) -> u64 {
    object as *const T as u64
}

/// The highest host-physical address the kernel's identity mapping reaches.
pub const IDENTITY_LIMIT: u64 = 4 << 30;

/// Where guest output, reports and verdicts go.
pub trait Console {
    /// Writes one line (a newline is added).
    fn write_fmt_line(&mut self, args: fmt::Arguments<'_>);
}

/// The identity [`PhysMapper`] of the kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityMapper;

// SAFETY: the kernel's boot page tables identity-map [0, 4 GiB) read-write, and every
// frame comes from the global allocator, which manages only RAM below 4 GiB that
// nothing else uses (the kernel image, boot data and heap are excluded), so the
// returned pointer is valid and unaliased for the whole frame. Only the kernel
// constructs frames through this mapper; host tests use `HeapArena`.
unsafe impl PhysMapper for IdentityMapper {
    fn phys_to_virt(&self, hpa: HostPhysAddr) -> *mut u8 {
        usize::from(hpa) as *mut u8
    }

    fn is_mapped(&self, hpa: HostPhysAddr) -> bool {
        (usize::from(hpa) as u64) < IDENTITY_LIMIT
    }
}

static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);

/// Installs the global frame allocator over the RAM ranges `[start, end)`.
pub fn init_frames(ranges: &[(u64, u64)]) {
    *FRAMES.lock() = Some(FrameAllocator::new(ranges));
}

/// `(in use, total)` frames of the global allocator.
pub fn frame_usage() -> (usize, usize) {
    FRAMES
        .lock()
        .as_ref()
        .map_or((0, 0), |f| (f.in_use(), f.total()))
}

/// A handle to the global frame allocator (cheap to clone; every clone is the same
/// pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalFrames;

impl GlobalFrames {
    fn with<R>(f: impl FnOnce(&mut FrameAllocator) -> R) -> Option<R> {
        FRAMES.lock().as_mut().map(f)
    }
}

impl FrameAlloc for GlobalFrames {
    fn alloc_frame(&mut self) -> Option<HostPhysAddr> {
        Self::with(|f| f.alloc_frame())
            .flatten()
            .map(|a| HostPhysAddr::from(a as usize))
    }

    fn dealloc_frame(&mut self, frame: HostPhysAddr) {
        if let Some(Err(e)) = Self::with(|f| f.dealloc_frame(usize::from(frame) as u64)) {
            panic!("frame allocator: {e}");
        }
    }

    fn alloc_2m(&mut self) -> Option<HostPhysAddr> {
        Self::with(|f| f.alloc_2m())
            .flatten()
            .map(|a| HostPhysAddr::from(a as usize))
    }

    fn dealloc_2m(&mut self, block: HostPhysAddr) {
        if let Some(Err(e)) = Self::with(|f| f.dealloc_2m(usize::from(block) as u64)) {
            panic!("frame allocator: {e}");
        }
    }
}
