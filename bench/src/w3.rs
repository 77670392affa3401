//! W3: area bookkeeping with a backend that does no page-table work.
//!
//! 10,000 areas of 32 KiB (8 pages), one per 64 KiB slot, inserted in random order; 10,000
//! random finds (hits and misses); `find_free_area` for 4 KiB (10,000 random hints, a gap
//! is near) and for 1 MiB (larger than any gap: the answer is past the last area);
//! 10,000 unmaps of page 3 of an area (a middle cut: 10k -> 20k areas); 10,000 protects of
//! the top 8 KiB of each right-hand piece (each splits one area: 20k -> 30k areas).

use arceos_memory_addr::{AddrRange as AArange, VirtAddr as AVirt};
use arceos_memory_set::{MemoryArea as AArea, MemorySet as ASet};

use crate::anchors::arceos_set::NopBackend;
use crate::harness::{Recorder, Who};
use crate::ours;
use crate::rng::{Rng, permutation};

/// Number of areas inserted.
pub const AREAS: usize = 10_000;
/// Start of the first slot.
pub const BASE: usize = 0x1_0000_0000;
/// One slot per area.
pub const SLOT: usize = 0x1_0000;
/// Size of each area.
pub const AREA: usize = 0x8000;
/// The page unmapped from each area (a middle cut).
pub const CUT: (usize, usize) = (0x3000, 0x1000);
/// The range protected in each area (the upper half of the right-hand piece).
pub const PROT: (usize, usize) = (0x6000, 0x2000);
/// Small and large `find_free_area` sizes.
pub const FREE_SMALL: usize = 0x1000;
/// Larger than any gap between areas.
pub const FREE_LARGE: usize = 0x10_0000;
/// Limit of `find_free_area`: the slots plus room for one large area.
pub const LIMIT: (usize, usize) = (BASE, AREAS * SLOT + 2 * FREE_LARGE);
/// ArceOS memory_set.
pub const ARCEOS: Who = Who::Anchor("arceos_memory_set");

/// The inputs of one round, shared by all contenders.
pub struct Inputs {
    /// Insertion order of the slots.
    pub insert: Vec<usize>,
    /// Addresses looked up.
    pub finds: Vec<usize>,
    /// Hints of the small searches.
    pub hints_small: Vec<usize>,
    /// Hints of the large searches.
    pub hints_large: Vec<usize>,
    /// Order of the middle cuts.
    pub unmap: Vec<usize>,
    /// Order of the protects.
    pub protect: Vec<usize>,
}

impl Inputs {
    /// Inputs for `round`; `large` searches are fewer in quick runs.
    pub fn new(round: usize, large: usize) -> Self {
        let seed = 0x5eed_0000 + round as u64 * 16;
        let mut rng = Rng::new(seed);
        let span = AREAS * SLOT;
        Inputs {
            insert: permutation(AREAS, seed + 1),
            finds: (0..AREAS).map(|_| BASE + rng.below(span)).collect(),
            hints_small: (0..AREAS).map(|_| BASE + rng.below(span)).collect(),
            hints_large: (0..large).map(|_| BASE + rng.below(span)).collect(),
            unmap: permutation(AREAS, seed + 2),
            protect: permutation(AREAS, seed + 3),
        }
    }
}

/// Checksums of the answers, compared between contenders.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// Number of finds that hit an area.
    pub hits: usize,
    /// XOR of the small search results.
    pub small: usize,
    /// XOR of the large search results.
    pub large: usize,
}

/// The two passes of W3, each repeated inside its samples on its own: the lookups
/// (insert, find, both searches) take milliseconds, ArceOS' cuts (unmap_middle, protect)
/// about a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// insert, find, free_small, free_large.
    Lookups,
    /// insert (not timed), unmap_middle, protect.
    Cuts,
}

/// One round: ours and ArceOS in an order rotated by `round`.
pub fn round(rec: &mut Recorder, inputs: &Inputs, round: usize) {
    let mut answers = Vec::new();
    for k in 0..2 {
        match (k + round) % 2 {
            0 if rec.runs(Who::Ours) => {
                answers.extend(rec.repeat(|rec| ours::w3(rec, inputs, Pass::Lookups)));
                rec.repeat(|rec| ours::w3(rec, inputs, Pass::Cuts));
            }
            _ if rec.runs(ARCEOS) => {
                answers.extend(rec.repeat(|rec| arceos(rec, inputs, Pass::Lookups)));
                rec.repeat(|rec| arceos(rec, inputs, Pass::Cuts));
            }
            _ => {}
        }
    }
    if let [a, b] = &answers[..] {
        assert_eq!(a, b, "W3: ours and ArceOS answered differently");
    }
}

fn arceos(rec: &mut Recorder, inp: &Inputs, pass: Pass) -> Option<Answers> {
    let va = AVirt::from;
    let mut set = ASet::<NopBackend>::new();
    const RW: u8 = 3;
    let mut insert = || {
        for &i in &inp.insert {
            set.map(
                AArea::new(va(BASE + i * SLOT), AREA, RW, NopBackend),
                &mut (),
                false,
            )
            .expect("insert");
        }
    };
    if pass == Pass::Cuts {
        insert();
        arceos_cuts(rec, &mut set, inp);
        return None;
    }
    rec.time("W3/insert", ARCEOS, AREAS, insert);
    let hits = rec.time("W3/find", ARCEOS, inp.finds.len(), || {
        inp.finds
            .iter()
            .filter(|&&a| set.find(va(a)).is_some())
            .count()
    });
    let limit = AArange::from_start_size(va(LIMIT.0), LIMIT.1);
    let small = rec.time("W3/free_small", ARCEOS, inp.hints_small.len(), || {
        inp.hints_small.iter().fold(0, |acc, &h| {
            acc ^ set
                .find_free_area(va(h), FREE_SMALL, limit, FREE_SMALL)
                .expect("free")
                .as_usize()
        })
    });
    let large = rec.time("W3/free_large", ARCEOS, inp.hints_large.len(), || {
        inp.hints_large.iter().fold(0, |acc, &h| {
            acc ^ set
                .find_free_area(va(h), FREE_LARGE, limit, FREE_SMALL)
                .expect("free")
                .as_usize()
        })
    });
    assert_eq!(set.len(), AREAS);
    Some(Answers { hits, small, large })
}

/// The second W3 pass over ArceOS' set (its areas inserted, not timed).
fn arceos_cuts(rec: &mut Recorder, set: &mut ASet<NopBackend>, inp: &Inputs) {
    let va = AVirt::from;
    const RO: u8 = 1;
    rec.time("W3/unmap_middle", ARCEOS, AREAS, || {
        for &i in &inp.unmap {
            set.unmap(va(BASE + i * SLOT + CUT.0), CUT.1, &mut ())
                .expect("unmap");
        }
    });
    assert_eq!(set.len(), 2 * AREAS);
    rec.time("W3/protect", ARCEOS, AREAS, || {
        for &i in &inp.protect {
            set.protect(va(BASE + i * SLOT + PROT.0), PROT.1, |_| Some(RO), &mut ())
                .expect("protect");
        }
    });
    assert_eq!(set.len(), 3 * AREAS);
}

/// Units per phase, for the table.
pub fn unit(id: &str) -> Option<&'static str> {
    id.starts_with("W3/").then_some("op")
}
