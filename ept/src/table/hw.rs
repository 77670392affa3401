//! What the MMU does to a table on a guest access: the software model of a hardware
//! walk that sets the accessed and dirty flags. Dirty-log tests, benchmarks and
//! instruction emulation use it to touch guest memory the way the CPU would.

use memory_set::{GuestPhysAddr, HostPhysAddr};

use super::raw::Tbl;
use super::{Stage2Table, Translation, index, lsize};
use crate::format::{ADDR_MASK, Access, EntryKind, LeafAttr, Stage2Format};
use crate::frame::PhysMapper;
use crate::size::LeafSize;

impl<F: Stage2Format, M: PhysMapper> Stage2Table<F, M> {
    /// Walks `gpa` like the hardware for an `access`: when the leaf allows it, sets
    /// its accessed flag, and for a write its dirty flag (only with A/D support: EPT
    /// bits 8 and 9, SDM Vol. 3C §29.3.5; NPT bits 5 and 6, APM Vol. 2 §15.25.5 and
    /// §5.4.1), and returns the translation. `None` when the hardware would fault (no
    /// leaf, or a leaf without the rights).
    pub fn hardware_access(&self, gpa: GuestPhysAddr, access: Access) -> Option<Translation> {
        let g = gpa.as_usize();
        if g >> self.gpa_bits() != 0 {
            return None;
        }
        let (t, i, level, e) = self.leaf_entry(g)?;
        let attr = F::leaf_attr(e, level);
        if !attr.access.contains(access) {
            return None;
        }
        if self.caps.accessed_dirty {
            let d = if access.contains(Access::WRITE) {
                F::DIRTY
            } else {
                0
            };
            t.set_bits(i, F::ACCESSED | d);
        }
        let sz = lsize(level);
        Some(Translation {
            hpa: HostPhysAddr::new((e & ADDR_MASK) as usize & !(sz - 1) | (g & (sz - 1))),
            attr,
            size: LeafSize::from_level(level)?,
            leaf_gpa: GuestPhysAddr::new(g & !(sz - 1)),
        })
    }

    /// Takes write access away from the leaf mapping `gpa` in place (one walk, one
    /// atomic update that keeps the A/D flags), returning the leaf's first GPA and
    /// size when it was writable. The caller invalidates the leaf (through its flush).
    /// Never splits, never allocates; the write bits are EPT bit 1 (SDM Vol. 3C
    /// §29.3.2) and NPT R/W (bit 1, APM Vol. 2 §5.4.1), as the format encodes them.
    pub(crate) fn clear_write(&mut self, gpa: GuestPhysAddr) -> Option<(GuestPhysAddr, LeafSize)> {
        let g = gpa.as_usize();
        if g >> self.gpa_bits() != 0 {
            return None;
        }
        let (t, i, level, e) = self.leaf_entry(g)?;
        let attr = F::leaf_attr(e, level);
        if !attr.access.contains(Access::WRITE) {
            return None;
        }
        let ro = LeafAttr {
            access: attr.access.difference(Access::WRITE),
            ..attr
        };
        let rw_bits = F::leaf_bits(attr, level, &self.caps).ok()?;
        let ro_bits = F::leaf_bits(ro, level, &self.caps).ok()?;
        // Read-only must be the writable encoding minus some bits.
        debug_assert_eq!(ro_bits & !rw_bits, 0);
        t.clear_bits(i, rw_bits ^ ro_bits);
        let sz = lsize(level);
        Some((
            GuestPhysAddr::new(g & !(sz - 1)),
            LeafSize::from_level(level)?,
        ))
    }

    /// The table, index, level and value of the leaf entry mapping `g`, if any.
    #[inline]
    fn leaf_entry(&self, g: usize) -> Option<(Tbl, usize, u8, u64)> {
        let mut frame = self.root;
        let mut level = 4u8;
        loop {
            let t = self.tbl(frame);
            let i = index(g, level);
            let e = t.load(i);
            match F::decode(e, level) {
                EntryKind::Absent => return None,
                EntryKind::Table(next) => {
                    frame = next;
                    level -= 1;
                }
                EntryKind::Leaf(_) => return Some((t, i, level, e)),
            }
        }
    }
}
