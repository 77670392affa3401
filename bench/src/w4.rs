//! W4: on-demand fault-in of 262,144 distinct 4 KiB pages of one 1 GiB RAM area, touched in
//! random order, through the whole path (find the area, allocate, zero, map).
//!
//! * `W4/fault_4k`: every touch faults and maps one 4 KiB page.
//! * `W4/fault_2m`: the area allows 2 MiB leaves; a touch faults only if its page is not
//!   mapped yet (the driver, [`touch_all`], keeps one "covered" flag per page for every
//!   contender, as the hardware would only fault on unmapped pages), so 512 faults each
//!   allocate, zero and map 2 MiB. The unit is still the 4 KiB page touched.
//!
//! Anchor: ArceOS `memory_set` (area lookup) + `page_table_multiarch` (map) doing the same
//! steps by hand. Floor: allocating and zeroing the same memory, nothing else, driven by
//! the same touch loop.

use arceos_memory_addr::{MemoryAddr, PhysAddr as APhys, VirtAddr as AVirt};
use arceos_memory_set::{MemoryArea as AArea, MemorySet as ASet};
use page_table_multiarch::{MappingFlags, PageSize};

use crate::anchors::arceos_set::LazyBackend;
use crate::anchors::ptm::{self, PtmTable};
use crate::arena::{Arena, SIZE_2M, SIZE_4K};
use crate::harness::{Recorder, Who};
use crate::ours;
use crate::w1::{GPA, LEAVES_2M, PAGES, SIZE};

/// ArceOS memory_set + page_table_multiarch.
pub const ARCEOS_PTM: Who = Who::Anchor("arceos_memory_set+ptm");

/// W4 runs this many times the rounds of the other workloads: its ratio to the floor is
/// the tightest target of the table, and a round of it takes a fraction of a second.
pub const ROUNDS_FACTOR: usize = 2;

/// 2 MiB blocks the arenas need: 1 GiB of RAM plus room for tables.
pub const ARENA_BLOCKS: usize = LEAVES_2M + 4;

/// Drives one run's touches in `order`: `fault(i)` serves the fault on page `i` and
/// returns how many pages its leaf maps (1 or 512). With 4 KiB leaves every touch of
/// the permutation faults, so nothing is tracked; with 2 MiB leaves a touch faults only
/// while its page is not `covered` yet (as the hardware would), and `covered` records
/// each leaf's pages. Returns the pages mapped. Ours and the anchor run this same code.
#[inline(always)]
pub fn touch_all(
    order: &[usize],
    mode: Mode,
    covered: &mut [bool],
    mut fault: impl FnMut(usize) -> usize,
) -> usize {
    let mut mapped = 0;
    match mode {
        Mode::Small => {
            for &i in order {
                mapped += fault(i);
            }
        }
        Mode::Huge => {
            for &i in order {
                if covered[i] {
                    continue; // mapped already: the guest would not fault
                }
                let n = fault(i);
                let first = i & !(n - 1);
                covered[first..first + n].fill(true);
                mapped += n;
            }
        }
    }
    mapped
}

/// The two variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 4 KiB leaves only.
    Small,
    /// 2 MiB leaves where the area allows.
    Huge,
}

impl Mode {
    /// Measurement id.
    pub fn id(self) -> &'static str {
        match self {
            Mode::Small => "W4/fault_4k",
            Mode::Huge => "W4/fault_2m",
        }
    }
}

/// One round: every contender, rotated by `round`; `order` is the touch order.
pub fn round(rec: &mut Recorder, arena: &Arena, mode: Mode, order: &[usize], round: usize) {
    for k in 0..3 {
        match (k + round) % 3 {
            0 if rec.runs(Who::Ours) => ours::w4(rec, arena, mode, order),
            1 if rec.runs(ARCEOS_PTM) => anchor(rec, arena, mode, order),
            2 if rec.runs(Who::Floor) => floor(rec, arena, mode, order),
            _ => {}
        }
        assert_eq!(arena.in_use(), 0, "{mode:?}: a contender leaked");
    }
}

fn anchor(rec: &mut Recorder, arena: &Arena, mode: Mode, order: &[usize]) {
    ptm::install(arena);
    let mut pt = PtmTable::try_new().expect("root");
    let mut set = ASet::<LazyBackend>::new();
    let rw = MappingFlags::READ | MappingFlags::WRITE;
    set.map(
        AArea::new(AVirt::from(GPA), SIZE, rw, LazyBackend),
        &mut pt,
        false,
    )
    .expect("area");
    let access = MappingFlags::WRITE;
    let mut covered = vec![false; PAGES];
    let mapped = rec.time(mode.id(), ARCEOS_PTM, PAGES, || {
        let mut c = pt.cursor();
        touch_all(order, mode, &mut covered, |i| {
            let va = AVirt::from(GPA + i * SIZE_4K);
            let area = set.find(va).expect("inside the area");
            assert!(area.flags().contains(access), "permission");
            let leaf = va.align_down(SIZE_2M);
            let huge = mode == Mode::Huge
                && leaf >= area.start()
                && leaf.as_usize() + SIZE_2M <= area.end().as_usize();
            if huge {
                let frame = arena.alloc_2m().expect("2M block");
                arena.zero(frame, SIZE_2M);
                c.map(leaf, APhys::from(frame), PageSize::Size2M, area.flags())
                    .expect("map");
                512
            } else {
                let frame = arena.alloc_4k().expect("frame");
                arena.zero(frame, SIZE_4K);
                c.map(va, APhys::from(frame), PageSize::Size4K, area.flags())
                    .expect("map");
                1
            }
        })
    });
    assert_eq!(mapped, PAGES, "every page faulted in once");
    // Teardown (not timed): unmap every leaf and give its frame back.
    let mut c = pt.cursor();
    let mut va = GPA;
    while va < GPA + SIZE {
        let (pa, _, size) = c.unmap(AVirt::from(va)).expect("every page was faulted in");
        match size {
            PageSize::Size4K => arena.free_4k(pa.as_usize()),
            _ => arena.free_2m(pa.as_usize()),
        }
        va += size as usize;
    }
    drop(c);
    drop(set);
    drop(pt);
}

/// The floor: the same driver over the same touch order, each fault only allocating and
/// zeroing its memory (the driver's own cost, the `covered` checks of the 2 MiB run, is
/// the harness's and is paid by every contender alike).
fn floor(rec: &mut Recorder, arena: &Arena, mode: Mode, order: &[usize]) {
    let mut taken = Vec::with_capacity(PAGES);
    let mut covered = vec![false; PAGES];
    let mapped = rec.time(mode.id(), Who::Floor, PAGES, || {
        touch_all(order, mode, &mut covered, |_| match mode {
            Mode::Small => {
                let f = arena.alloc_4k().expect("frame");
                arena.zero(f, SIZE_4K);
                taken.push(f);
                1
            }
            Mode::Huge => {
                let f = arena.alloc_2m().expect("block");
                arena.zero(f, SIZE_2M);
                taken.push(f);
                512
            }
        })
    });
    assert_eq!(mapped, PAGES, "every page allocated once");
    for f in taken {
        match mode {
            Mode::Small => arena.free_4k(f),
            Mode::Huge => arena.free_2m(f),
        }
    }
}

/// Units per phase, for the table.
pub fn unit(id: &str) -> Option<&'static str> {
    id.starts_with("W4/").then_some("4K page")
}
