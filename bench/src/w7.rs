//! W7: one dirty-log pass over a 1 GiB guest (populated, split into 4 KiB leaves when
//! logging starts) in which the guest dirtied 1 % of the pages (2,621 random pages,
//! guest writes through the stage-2 walk model; not timed). Timed: one
//! `AddressSpace::harvest_dirty`, in A/D mode (dirty flags) and in write-protect mode
//! (write faults recorded in software, the harvest write-protects again). Unit: one pass.
//!
//! Floor: reading every leaf entry once (512 leaf tables of 512 entries).

use ept::frame::read_phys;
use ept::space::{DirtyBitmap, DirtyMode, HugeLeaves};
use ept::{HeapArena, Stage2Caps};
use memory_set::{GuestPhysAddr, HostPhysAddr};

use crate::arena::{Arena, SIZE_2M, SIZE_4K};
use crate::harness::{Recorder, Who};
use crate::rng::Rng;
use crate::w6::{Space, guest_write, populated_guest};

const SIZE: usize = 1 << 30;
const PAGES: usize = SIZE / SIZE_4K;
/// 1 % of the pages.
const DIRTY: usize = PAGES / 100;

/// One logged guest per mode, kept across rounds, and the floor's tables.
pub struct Setup {
    arena: Arena,
    guests: Vec<(DirtyMode, Space)>,
    tables: Vec<HostPhysAddr>,
    out: DirtyBitmap,
    rng: Rng,
}

fn id(mode: DirtyMode) -> &'static str {
    match mode {
        DirtyMode::AccessedDirty => "W7/harvest_ad",
        DirtyMode::WriteProtect => "W7/harvest_wp",
    }
}

impl Setup {
    /// Two populated 1 GiB guests logging in each mode; 512 leaf tables for the floor.
    pub fn new() -> Setup {
        let arena = Arena::new(2 * (SIZE / SIZE_2M) + 8);
        let guests = [DirtyMode::AccessedDirty, DirtyMode::WriteProtect]
            .into_iter()
            .map(|mode| {
                let mut space = populated_guest(&arena, SIZE, Stage2Caps::all());
                space
                    .start_dirty_log_mode(GuestPhysAddr::new(0), SIZE, HugeLeaves::Split, mode)
                    .expect("start");
                (mode, space)
            })
            .collect();
        let tables = (0..SIZE / SIZE_2M)
            .map(|k| {
                let t = arena.alloc_4k().expect("table");
                let first = k * SIZE_2M;
                arena.write_entries(t, (0..512).map(|i| (first + i * SIZE_4K) as u64 | 0x677));
                HostPhysAddr::new(t)
            })
            .collect();
        Setup {
            arena,
            guests,
            tables,
            out: DirtyBitmap::new(),
            rng: Rng::new(0xd1e7_0007),
        }
    }

    fn ours(&mut self, rec: &mut Recorder, g: usize) {
        let heap: HeapArena = self.arena.heap();
        let (mode, space) = &mut self.guests[g];
        let mut expect = std::collections::BTreeSet::new();
        while expect.len() < DIRTY {
            let p = self.rng.below(PAGES);
            if expect.insert(p) {
                guest_write(space, &heap, p * SIZE_4K, p as u64);
            }
        }
        let out = &mut self.out;
        let n = rec.time(id(*mode), Who::Ours, 1, || {
            space.harvest_dirty(out).expect("harvest")
        });
        assert_eq!(n, DIRTY, "W7 {mode:?}: pages reported");
        assert!(
            out.iter()
                .map(|a| a.as_usize() / SIZE_4K)
                .eq(expect.into_iter())
        );
    }

    fn floor(&mut self, rec: &mut Recorder, mode: DirtyMode) {
        let heap: HeapArena = self.arena.heap();
        let tables = &self.tables;
        let mut buf = [0u8; SIZE_4K];
        let sum = rec.time(id(mode), Who::Floor, 1, || {
            let mut sum = 0u64;
            for &t in tables {
                read_phys(&heap, t, &mut buf).expect("read");
                sum = sum.wrapping_add(buf.iter().step_by(8).map(|&b| b as u64).sum::<u64>());
            }
            sum
        });
        std::hint::black_box(sum);
    }

    /// One round: both modes, each with ours and the floor (rotated by `round`).
    pub fn round(&mut self, rec: &mut Recorder, round: usize) {
        for g in 0..self.guests.len() {
            let mode = self.guests[g].0;
            for c in 0..2 {
                match (c + round) % 2 {
                    0 if rec.runs(Who::Ours) => rec.repeat(|rec| self.ours(rec, g)),
                    1 if rec.runs(Who::Floor) => rec.repeat(|rec| self.floor(rec, mode)),
                    _ => {}
                }
            }
        }
    }
}

/// Units, for the table.
pub fn unit(id: &str) -> Option<&'static str> {
    id.starts_with("W7/").then_some("1 GiB pass")
}
