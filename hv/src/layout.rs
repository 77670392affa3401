//! The guest-physical layout every guest starts with.
//!
//! Guests start directly in 64-bit long mode, so Rust code built for x86_64 runs
//! unchanged. The hypervisor writes identity page tables into guest RAM that map the
//! first 4 GiB of guest-physical memory with 2 MiB pages (a guest pointer is its GPA):
//!
//! | GPA | contents |
//! |---|---|
//! | `0x0` | not mapped: a null access faults |
//! | `0x1000` | PML4 (entry 0 → PDPT) |
//! | `0x2000` | PDPT (entries 0-3 → the four page directories) |
//! | `0x3000..0x7000` | four page directories, 2 MiB pages, read/write/execute |
//! | `..0x10_0000` | the stack, growing down from [`STACK_TOP`] |
//! | image load GPA (1 MiB) | the guest image, header first |
//!
//! Real-mode guests (image header flag [`crate::abi::IMAGE_FLAG_REAL_MODE`]) get no
//! page tables: they load between [`REAL_MODE_MIN_LOAD_GPA`] and 640 KiB and start as
//! [`real_mode_start`] says, with the stack at `0000:`[`REAL_MODE_STACK_TOP`].
//!
//! Whether a page is really there, writable or executable is decided by stage 2 only:
//! the guest's own tables grant everything.
//!
//! RAM is two areas, `[4 KiB, 2 MiB)` and `[2 MiB, mem)`. The low one holds the page
//! tables, stack and image and, not covering a whole 2 MiB block, is always mapped with
//! 4 KiB leaves. Measured: QEMU 7.2's TCG walks the guest's page tables wrongly when
//! they sit behind a 2 MiB nested leaf (the guest sees not-present entries and triple
//! faults), while data accesses through 2 MiB nested leaves work; the split keeps
//! the page tables on 4 KiB leaves and every other 2 MiB-aligned block eligible for
//! a huge leaf.

use alloc::vec::Vec;

use crate::vcpu::StartState;

/// Where the hypervisor points a guest's RSP at entry (the stack grows down from here;
/// the image starts here); part of the guest contract, [`crate::abi::STACK_TOP`].
pub const STACK_TOP: u64 = crate::abi::STACK_TOP;

/// First GPA of guest RAM.
pub const LOW_RAM_START: u64 = 0x1000;
/// End of the low RAM area (always 4 KiB leaves).
pub const LOW_RAM_END: u64 = 2 << 20;
/// GPA of the guest's PML4.
pub const PML4_GPA: u64 = 0x1000;
/// GPA of the guest's PDPT.
pub const PDPT_GPA: u64 = 0x2000;
/// GPA of the first of the four page directories.
pub const PD_GPA: u64 = 0x3000;
/// First GPA after the page tables.
pub const TABLES_END: u64 = 0x7000;
/// Lowest GPA an image may be loaded at (above the tables and the stack).
pub const MIN_LOAD_GPA: u64 = STACK_TOP;

/// Lowest GPA a real-mode image may be loaded at: the 64 KiB below it are the
/// real-mode stack segment (SS = 0).
pub const REAL_MODE_MIN_LOAD_GPA: u64 = 0x1_0000;
/// SP of a real-mode guest at entry (SS = 0): the stack grows down below 64 KiB, over
/// RAM that is backed on first touch.
pub const REAL_MODE_STACK_TOP: u16 = 0xFFF0;

/// The start state of a real-mode guest loaded at `load_gpa` (16-byte aligned, below
/// 1 MiB) with entry `entry_gpa` (less than 64 KiB past it): the code segment starts
/// at the load address, so IP is the entry's offset into the image. `None` when the
/// addresses do not fit real mode.
pub fn real_mode_start(load_gpa: u64, entry_gpa: u64) -> Option<StartState> {
    if !load_gpa.is_multiple_of(16) {
        return None;
    }
    let code_segment = u16::try_from(load_gpa >> 4).ok()?;
    let ip = u16::try_from(entry_gpa.checked_sub(load_gpa)?).ok()?;
    Some(StartState::Real16 {
        code_segment,
        ip,
        stack_segment: 0,
        sp: REAL_MODE_STACK_TOP,
    })
}

/// Page-table entry bits (Intel SDM vol. 3 4.5, tables 4-15 to 4-19): P (bit 0),
/// R/W (bit 1), PS (bit 7, a 2 MiB page in a page directory).
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;

/// The six pages of the guest's identity page tables, as `(gpa, 4096 bytes)`.
pub fn guest_page_tables() -> Vec<(u64, Vec<u8>)> {
    let mut pages = Vec::new();
    let entry_page = |entries: &mut dyn Iterator<Item = u64>| {
        let mut page = alloc::vec![0u8; 4096];
        for (i, e) in entries.enumerate() {
            page[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        page
    };
    let table = PTE_PRESENT | PTE_WRITABLE;
    pages.push((
        PML4_GPA,
        entry_page(&mut core::iter::once(PDPT_GPA | table)),
    ));
    pages.push((
        PDPT_GPA,
        entry_page(&mut (0..4).map(|i| (PD_GPA + i * 0x1000) | table)),
    ));
    for pd in 0..4u64 {
        let base = pd << 30;
        pages.push((
            PD_GPA + pd * 0x1000,
            entry_page(&mut (0..512).map(|i| (base + (i << 21)) | table | PTE_HUGE)),
        ));
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pages: &[(u64, Vec<u8>)], gpa: u64, index: usize) -> u64 {
        let page = &pages.iter().find(|p| p.0 == gpa).unwrap().1;
        u64::from_le_bytes(page[index * 8..index * 8 + 8].try_into().unwrap())
    }

    /// Walks the tables like the CPU would for a linear address.
    fn walk(pages: &[(u64, Vec<u8>)], va: u64) -> Option<u64> {
        let pml4e = entry(pages, PML4_GPA, ((va >> 39) & 511) as usize);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = entry(pages, pml4e & !0xfff, ((va >> 30) & 511) as usize);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = entry(pages, pdpte & !0xfff, ((va >> 21) & 511) as usize);
        assert!(pde & PTE_HUGE != 0);
        Some((pde & !0x1f_ffff & !(1 << 63)) | (va & 0x1f_ffff))
    }

    #[test]
    fn real_mode_start_segments() {
        assert_eq!(
            real_mode_start(0x1_0000, 0x1_0040),
            Some(StartState::Real16 {
                code_segment: 0x1000,
                ip: 0x40,
                stack_segment: 0,
                sp: REAL_MODE_STACK_TOP,
            })
        );
        assert_eq!(real_mode_start(0x1_0008, 0x1_0040), None, "unaligned");
        assert_eq!(real_mode_start(0x10_0000, 0x10_0040), None, "above 1 MiB");
        assert_eq!(real_mode_start(0x1_0000, 0x2_0000), None, "IP overflows");
        assert_eq!(real_mode_start(0x1_0000, 0xFFFF), None, "entry below load");
    }

    #[test]
    fn identity_over_four_gib() {
        let pages = guest_page_tables();
        assert_eq!(pages.len(), 6);
        assert!(
            pages
                .iter()
                .all(|(gpa, p)| p.len() == 4096 && *gpa < TABLES_END)
        );
        for va in [0, 0x1000, 0x10_0000, 0x1234_5678, 0x4000_0000, 0xFFFF_FFFF] {
            assert_eq!(walk(&pages, va), Some(va));
        }
        assert_eq!(walk(&pages, 1 << 39), None);
        assert_eq!(walk(&pages, 4 << 30), None);
    }
}
