//! What the MMU does to a table on a guest access: the software model of a hardware
//! walk that sets the accessed and dirty flags. Dirty-log tests, benchmarks and
//! instruction emulation use it to touch guest memory the way the CPU would.

use memory_set::GuestPhysAddr;

use super::{Stage2Table, Translation, index, lsize};
use crate::format::{Access, EntryKind, Stage2Format};
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
                EntryKind::Leaf(h) => {
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
                    return Some(Translation {
                        hpa: memory_set::HostPhysAddr::new(h.as_usize() + (g & (sz - 1))),
                        attr,
                        size: LeafSize::from_level(level)?,
                        leaf_gpa: GuestPhysAddr::new(g & !(sz - 1)),
                    });
                }
            }
        }
    }
}
