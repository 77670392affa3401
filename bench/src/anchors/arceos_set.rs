//! ArceOS `memory_set` 0.4 backends: [`NopBackend`] for pure bookkeeping (W3) and
//! [`LazyBackend`] for on-demand RAM over `page_table_multiarch` (W4).

use arceos_memory_addr::VirtAddr;
use arceos_memory_set::MappingBackend;

use super::ptm::PtmTable;

/// A backend that does no page-table work: W3 measures the area bookkeeping alone.
#[derive(Clone)]
pub struct NopBackend;

impl MappingBackend for NopBackend {
    type Addr = VirtAddr;
    type Flags = u8;
    type PageTable = ();

    fn map(&self, _: VirtAddr, _: usize, _: u8, _: &mut ()) -> bool {
        true
    }

    fn unmap(&self, _: VirtAddr, _: usize, _: &mut ()) -> bool {
        true
    }

    fn protect(&self, _: VirtAddr, _: usize, _: u8, _: &mut ()) -> bool {
        true
    }
}

/// On-demand RAM: mapping an area installs nothing; pages arrive through faults, which the
/// W4 driver handles the way ArceOS' `axmm` alloc backend does (find area, allocate, zero,
/// map one page).
#[derive(Clone)]
pub struct LazyBackend;

impl MappingBackend for LazyBackend {
    type Addr = VirtAddr;
    type Flags = page_table_multiarch::MappingFlags;
    type PageTable = PtmTable;

    fn map(&self, _: VirtAddr, _: usize, _: Self::Flags, _: &mut PtmTable) -> bool {
        true
    }

    fn unmap(&self, start: VirtAddr, size: usize, pt: &mut PtmTable) -> bool {
        // Pages may or may not have been faulted in: unmap page by page, ignoring holes.
        let mut c = pt.cursor();
        let mut va = start.as_usize();
        let end = va + size;
        while va < end {
            let step = match c.unmap(va.into()) {
                Ok((_, _, s)) => s as usize,
                Err(_) => crate::arena::SIZE_4K,
            };
            va += step;
        }
        true
    }

    fn protect(&self, start: VirtAddr, size: usize, flags: Self::Flags, pt: &mut PtmTable) -> bool {
        pt.cursor().protect_region(start, size, flags).is_ok()
    }
}
