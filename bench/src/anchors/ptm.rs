//! `page_table_multiarch` 0.6 over the arena. Its `PagingHandler` is a set of static
//! functions, so the arena in use (and its constant physical-to-virtual offset) is installed
//! in a thread-local for the duration of a run.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use arceos_memory_addr::{PhysAddr, VirtAddr};
use page_table_multiarch::PagingHandler;
use page_table_multiarch::x86_64::X64PageTable;

use crate::arena::{Arena, SIZE_2M, SIZE_4K};

thread_local! {
    static ARENA: RefCell<Option<Arena>> = const { RefCell::new(None) };
}

/// The installed arena's physical-to-virtual offset: a plain global, like the constant
/// offset `phys_to_virt` adds in ArceOS, so the anchor pays no thread-local lookup per
/// table step.
static OFFSET: AtomicUsize = AtomicUsize::new(0);

/// Makes `arena` the one every [`PtmTable`] of this thread allocates from.
pub fn install(arena: &Arena) {
    ARENA.with_borrow_mut(|a| *a = Some(arena.clone()));
    OFFSET.store(arena.virt_offset(), Ordering::Relaxed);
}

fn with<R>(f: impl FnOnce(&Arena) -> R) -> R {
    ARENA.with_borrow(|a| {
        f(a.as_ref()
            .expect("no arena installed for page_table_multiarch"))
    })
}

/// The `PagingHandler` over the installed arena.
pub struct Handler;

impl PagingHandler for Handler {
    fn alloc_frames(num: usize, align: usize) -> Option<PhysAddr> {
        with(|a| match (num, align) {
            (1, al) if al <= SIZE_4K => a.alloc_4k(),
            (512, al) if al <= SIZE_2M => a.alloc_2m(),
            _ => None,
        })
        .map(PhysAddr::from)
    }

    fn dealloc_frames(paddr: PhysAddr, num: usize) {
        with(|a| match num {
            1 => a.free_4k(paddr.as_usize()),
            512 => a.free_2m(paddr.as_usize()),
            _ => panic!("page_table_multiarch freed {num} frames at once"),
        })
    }

    fn phys_to_virt(paddr: PhysAddr) -> VirtAddr {
        VirtAddr::from(
            paddr
                .as_usize()
                .wrapping_add(OFFSET.load(Ordering::Relaxed)),
        )
    }
}

/// The anchor's x86_64 4-level table.
pub type PtmTable = X64PageTable<Handler>;
