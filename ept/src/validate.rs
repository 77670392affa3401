//! A software walker and validator: checks a table the way the hardware would
//! (EPT misconfigurations, NPT reserved bits and the U bit) plus the table engine's
//! own invariants. Used by tests and debug builds.

use core::fmt;

use memory_set::GuestPhysAddr;

use crate::format::EntryProblem;

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
