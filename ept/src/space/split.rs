//! Where operations cut areas, and splitting the huge leaves that straddle the cuts
//! (the frames for that are taken before anything changes).

use alloc::vec::Vec;

use memory_set::{AddrRange, GuestPhysAddr, MemoryAddr, PAGE_SIZE_2M};

use super::Invalidate;
use super::backend::AreaFlags;
use super::error::SpaceError;
use super::range_scope;
use super::state::{Inner, State};
use crate::format::Stage2Format;
use crate::frame::{FrameAlloc, PhysMapper};
use crate::size::{LeafSize, MapSize, Size2M, Size4K};

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc, I: Invalidate> State<F, M, A, I> {
    /// Frames needed to split the huge leaves straddling the cut points `cuts` so that
    /// no leaf crosses any of them: one table per distinct straddling leaf, plus, inside
    /// a 1 GiB leaf, one 4 KiB-level table per distinct 2 MiB block cut off-boundary.
    pub(crate) fn split_need(&self, cuts: &[GuestPhysAddr]) -> usize {
        let mut leaves: Vec<GuestPhysAddr> = Vec::new();
        let mut blocks: Vec<GuestPhysAddr> = Vec::new();
        for &at in cuts {
            let Some(t) = self.table.translate(at) else {
                continue;
            };
            if t.leaf_gpa == at || t.size == LeafSize::Size4K {
                continue;
            }
            if !leaves.contains(&t.leaf_gpa) {
                leaves.push(t.leaf_gpa);
            }
            let block = at.align_down(PAGE_SIZE_2M);
            if t.size == LeafSize::Size1G && block != at && !blocks.contains(&block) {
                blocks.push(block);
            }
        }
        leaves.len() + blocks.len()
    }

    /// Splits the huge leaf straddling `at`, if any, keeping every translation.
    pub(crate) fn split_at(&mut self, at: GuestPhysAddr) -> Result<(), SpaceError> {
        let Some(t) = self.table.translate(at) else {
            return Ok(());
        };
        if t.leaf_gpa == at || t.size == LeafSize::Size4K {
            return Ok(());
        }
        self.metered(at, |table, meter| {
            if at.is_aligned(PAGE_SIZE_2M) {
                Size2M::ensure_chain_for(table, meter, at).map(|_| ())
            } else {
                Size4K::ensure_chain_for(table, meter, at).map(|_| ())
            }
        })?;
        // The page size behind these addresses changed: drop cached translations.
        self.invalidate_now(range_scope(t.leaf_gpa, t.size.size()));
        Ok(())
    }
}

impl<F: Stage2Format, M: PhysMapper, A: FrameAlloc + Clone, I: Invalidate> Inner<F, M, A, I> {
    /// The ends of `range` that cut an area in two, where `cut_here` says that
    /// area changes (at most two addresses).
    pub(crate) fn cuts(
        &self,
        range: AddrRange<GuestPhysAddr>,
        cut_here: impl Fn(&AreaFlags) -> bool,
    ) -> Vec<GuestPhysAddr> {
        let mut cuts = Vec::new();
        let ends = [Some(range.start()), range.end()];
        let inside = [Some(range.start()), range.last()];
        for (end, inside) in ends.into_iter().zip(inside) {
            if let (Some(end), Some(inside)) = (end, inside)
                && self.set.find(inside).is_some_and(|a| {
                    let r = a.va_range();
                    cut_here(&a.flags()) && r.start() < end && r.last().is_some_and(|l| l >= end)
                })
            {
                cuts.push(end);
            }
        }
        cuts
    }

    /// Takes the frames that splitting huge leaves at the cut points `cuts` needs.
    pub(crate) fn reserve_splits(&mut self, cuts: &[GuestPhysAddr]) -> Result<(), SpaceError> {
        let need = self.st.split_need(cuts);
        self.st
            .fill_reserve(need, cuts.first().copied().unwrap_or_default())
    }
}
