//! W5: split. 1 GiB mapped in 2 MiB leaves, then one 4 KiB page inside each of the 512
//! leaves is made read-only, so every leaf splits into a table of 512 4 KiB entries that
//! keeps all other translations. The anchors cannot do this (their protect changes whole
//! leaves); the floor is: take one frame per leaf, write its 512 entries (every entry is
//! written, so no zeroing is needed) and relink the directory entry.

use crate::arena::{Arena, SIZE_2M, SIZE_4K};
use crate::harness::{Recorder, Who};
use crate::ours;
use crate::w1::{HPA, LEAVES_2M};

/// Measurement id.
pub const ID: &str = "W5/split";

/// Offset of the protected page inside leaf `k` (varies, never the first page only).
pub fn page_in_leaf(k: usize) -> usize {
    (k * 37 % 512) * SIZE_4K
}

/// One round: ours and the floor, rotated by `round`.
pub fn round(rec: &mut Recorder, arena: &Arena, round: usize) {
    for k in 0..2 {
        match (k + round) % 2 {
            0 if rec.runs(Who::Ours) => rec.repeat(|rec| ours::w5(rec, arena)),
            _ if rec.runs(Who::Floor) => rec.repeat(|rec| floor(rec, arena)),
            _ => {}
        }
        assert_eq!(arena.in_use(), 0, "W5: the floor leaked");
    }
}

fn floor(rec: &mut Recorder, arena: &Arena) {
    const RWX: u64 = 0b111;
    let mut taken = Vec::with_capacity(LEAVES_2M + 1);
    let pd = arena.alloc_4k().expect("frame");
    arena.write_entries(
        pd,
        (0..512).map(|k| (HPA + k * SIZE_2M) as u64 | RWX | 1 << 7),
    );
    rec.time(ID, Who::Floor, LEAVES_2M, || {
        for k in 0..LEAVES_2M {
            let pt = arena.alloc_4k().expect("frame");
            let first = HPA + k * SIZE_2M;
            let ro = page_in_leaf(k) / SIZE_4K;
            arena.write_entries(
                pt,
                (0..512).map(|i| (first + i * SIZE_4K) as u64 | if i == ro { 0b101 } else { RWX }),
            );
            arena.write_entry(pd, k, pt as u64 | RWX);
            taken.push(pt);
        }
    });
    taken.push(pd);
    for t in taken {
        arena.free_4k(t);
    }
}

/// Units, for the table.
pub fn unit(id: &str) -> Option<&'static str> {
    (id == ID).then_some("2M split")
}
