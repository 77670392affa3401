//! A software walker and validator: checks a table the way the hardware would
//! (EPT misconfigurations, NPT reserved bits and the U bit) plus the table engine's
//! own invariants. Used by tests and debug builds.

use alloc::collections::BTreeSet;
use core::fmt;

use memory_set::{GuestPhysAddr, HostPhysAddr};

use crate::format::{EntryKind, EntryProblem, Stage2Format};
use crate::frame::PhysMapper;
use crate::size::LeafSize;
use crate::table::{ENTRIES, Stage2Table, Translation, index, lsize};

/// What is wrong, found by [`crate::table::Stage2Table::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The hardware would reject this entry.
    Entry(EntryProblem),
    /// A table below the root has no present entry.
    EmptyTable,
    /// A table frame is reachable twice (or is the root again).
    SharedTable,
    /// The counters disagree with the tree.
    CountMismatch,
    /// A view the table keeps for `translate` (the level-3 table under the root's
    /// entry 0, the page directories under its first entries) is not the table the
    /// tree holds there.
    StaleShortcut,
}

/// One problem and where it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// The first GPA the entry covers.
    pub gpa: GuestPhysAddr,
    /// The entry's level (1..=4; 0 for counter problems).
    pub level: u8,
    /// The raw entry.
    pub entry: u64,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "level-{} entry {:#x} covering {}: {:?}",
            self.level, self.entry, self.gpa, self.problem
        )
    }
}

/// Counts found by [`validate`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Table frames, root included.
    pub tables: usize,
    /// Leaves per size (4K, 2M, 1G).
    pub leaves: [usize; 3],
}

/// Walks the whole table: every present entry must pass the format's hardware
/// rules ([`Stage2Format::check_entry`]), no table frame may be reachable twice or be
/// empty (below the root), and the table's counters must match.
pub fn validate<F: Stage2Format, M: PhysMapper>(
    table: &Stage2Table<F, M>,
) -> Result<TableStats, ValidationError> {
    let mut stats = TableStats {
        tables: 1,
        leaves: [0; 3],
    };
    let mut seen = BTreeSet::new();
    seen.insert(table.root().as_usize());
    check_table(table, table.root(), 4, 0, &mut seen, &mut stats)?;
    if !table.shortcuts_agree() {
        return Err(ValidationError {
            gpa: GuestPhysAddr::new(0),
            level: 4,
            entry: table.tbl(table.root()).load(0),
            problem: Problem::StaleShortcut,
        });
    }
    let (tables, leaves) = table.counters();
    if tables != stats.tables || leaves != stats.leaves {
        return Err(ValidationError {
            gpa: GuestPhysAddr::new(0),
            level: 0,
            entry: 0,
            problem: Problem::CountMismatch,
        });
    }
    Ok(stats)
}

fn check_table<F: Stage2Format, M: PhysMapper>(
    table: &Stage2Table<F, M>,
    frame: HostPhysAddr,
    level: u8,
    span_base: usize,
    seen: &mut BTreeSet<usize>,
    stats: &mut TableStats,
) -> Result<(), ValidationError> {
    let t = table.tbl(frame);
    let sz = lsize(level);
    let mut present = 0;
    for i in 0..ENTRIES {
        let e = t.load(i);
        if !F::is_present(e) {
            continue;
        }
        present += 1;
        let gpa = GuestPhysAddr::new(span_base + i * sz);
        let err = |problem| ValidationError {
            gpa,
            level,
            entry: e,
            problem,
        };
        F::check_entry(e, level, table.caps()).map_err(|p| err(Problem::Entry(p)))?;
        match F::decode(e, level) {
            EntryKind::Absent => {}
            EntryKind::Leaf(_) => stats.leaves[level as usize - 1] += 1,
            EntryKind::Table(c) => {
                if !seen.insert(c.as_usize()) {
                    return Err(err(Problem::SharedTable));
                }
                stats.tables += 1;
                check_table(table, c, level - 1, gpa.as_usize(), seen, stats)?;
            }
        }
    }
    if present == 0 && level < 4 {
        return Err(ValidationError {
            gpa: GuestPhysAddr::new(span_base),
            level,
            entry: 0,
            problem: Problem::EmptyTable,
        });
    }
    Ok(())
}

/// Why the software walk stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// A not-present entry at this level.
    NotPresent {
        /// The level.
        level: u8,
    },
    /// An entry the hardware rejects (EPT misconfiguration / NPT reserved bit).
    Misconfig {
        /// The level.
        level: u8,
        /// What is wrong.
        problem: EntryProblem,
    },
    /// The GPA is beyond the walk's width.
    OutOfRange,
}

/// Translates `gpa` the way the hardware would, checking each entry on the way
/// (an independent oracle for [`Stage2Table::translate`]).
pub fn walk<F: Stage2Format, M: PhysMapper>(
    table: &Stage2Table<F, M>,
    gpa: GuestPhysAddr,
) -> Result<Translation, WalkError> {
    let g = gpa.as_usize();
    if g >> table.gpa_bits() != 0 {
        return Err(WalkError::OutOfRange);
    }
    let mut frame = table.root();
    for level in (1..=4u8).rev() {
        let e = table.tbl(frame).load(index(g, level));
        if !F::is_present(e) {
            return Err(WalkError::NotPresent { level });
        }
        F::check_entry(e, level, table.caps())
            .map_err(|problem| WalkError::Misconfig { level, problem })?;
        match F::decode(e, level) {
            EntryKind::Absent => return Err(WalkError::NotPresent { level }),
            EntryKind::Table(t) => frame = t,
            EntryKind::Leaf(h) => {
                let sz = lsize(level);
                return Ok(Translation {
                    hpa: HostPhysAddr::new(h.as_usize() | (g & (sz - 1))),
                    attr: F::leaf_attr(e, level),
                    size: LeafSize::from_level(level).ok_or(WalkError::OutOfRange)?,
                    leaf_gpa: GuestPhysAddr::new(g & !(sz - 1)),
                });
            }
        }
    }
    Err(WalkError::NotPresent { level: 0 })
}
