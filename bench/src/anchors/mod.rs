//! The crates we compare against, each wired to the benchmark arena:
//! * [`ptm`]: `page_table_multiarch` 0.6, x86_64 `PageTable64`;
//! * [`x86`]: the `x86_64` crate 0.15, `OffsetPageTable`;
//! * [`arceos_set`]: ArceOS `memory_set` 0.4 with a do-nothing backend (bookkeeping only)
//!   and with an on-demand backend over `page_table_multiarch` (fault-in).

pub mod arceos_set;
pub mod ptm;
pub mod x86;
