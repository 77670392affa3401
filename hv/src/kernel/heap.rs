//! The global allocator: power-of-two size classes over one identity-mapped region.
//!
//! Blocks are naturally aligned (a block of 2^k bytes starts at a multiple of 2^k), so
//! a page-aligned allocation (a VMCB) gets a page-aligned block whose host-physical
//! address is its pointer. Freed blocks go to their class's free list and are reused;
//! classes never merge, which suits a hypervisor whose allocations repeat.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use spin::Mutex;

const MIN_CLASS: u32 = 4; // 16 bytes
const CLASSES: usize = 40;

struct Heap {
    next: usize,
    end: usize,
    free: [Option<NonNull<u8>>; CLASSES],
    in_use: usize,
}

// SAFETY: the free-list pointers refer to blocks of the heap region, which only the
// mutex holder touches.
unsafe impl Send for Heap {}

/// The kernel's global allocator.
pub struct KernelHeap(Mutex<Heap>);

#[cfg_attr(hv_kernel, global_allocator)]
static HEAP: KernelHeap = KernelHeap(Mutex::new(Heap {
    next: 0,
    end: 0,
    free: [None; CLASSES],
    in_use: 0,
}));

/// Gives the allocator the region `[start, start + size)` (identity-mapped RAM that
/// nothing else uses).
pub fn init(start: usize, size: usize) {
    let mut heap = HEAP.0.lock();
    heap.next = start;
    heap.end = start + size;
}

/// Bytes currently allocated (rounded up to their classes).
pub fn in_use() -> usize {
    HEAP.0.lock().in_use
}

fn class_of(layout: Layout) -> Option<u32> {
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS);
    let class = size.checked_next_power_of_two()?.trailing_zeros();
    (class < CLASSES as u32).then_some(class)
}

// SAFETY: blocks handed out are disjoint pieces of the heap region, at least as large
// and as aligned as the layout asks, and stay reserved until `dealloc`.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return ptr::null_mut();
        };
        let mut heap = self.0.lock();
        let block_size = 1usize << class;
        if let Some(block) = heap.free[class as usize] {
            // SAFETY: a free block starts with the pointer to the next free block,
            // written by `dealloc`; blocks are at least 16 bytes and 8-aligned.
            let next = unsafe { block.cast::<Option<NonNull<u8>>>().read() };
            heap.free[class as usize] = next;
            heap.in_use += block_size;
            return block.as_ptr();
        }
        let start = (heap.next + block_size - 1) & !(block_size - 1);
        match start.checked_add(block_size) {
            Some(end) if end <= heap.end => {
                heap.next = end;
                heap.in_use += block_size;
                start as *mut u8
            }
            _ => ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            return;
        };
        let mut heap = self.0.lock();
        let head = heap.free[class as usize];
        // SAFETY: `ptr` is a block of this class that the caller gives back; its first
        // 8 bytes now hold the free-list link.
        unsafe { ptr.cast::<Option<NonNull<u8>>>().write(head) };
        heap.free[class as usize] = NonNull::new(ptr);
        heap.in_use -= 1usize << class;
    }
}
