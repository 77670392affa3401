//! Exits counted by reason, for the per-guest report (where the time goes).

use alloc::string::String;
use core::fmt::Write;

use crate::vcpu::VmExit;

/// Reasons, in report order.
const NAMES: [&str; 15] = [
    "stage-2 fault",
    "I/O",
    "hypercall",
    "host interrupt",
    "interrupt window",
    "CPUID",
    "RDMSR",
    "WRMSR",
    "HLT",
    "shutdown",
    "forbidden instruction",
    "invalid state",
    "other",
    "XSETBV",
    "WBINVD",
];

/// Exit counts by reason.
#[derive(Debug, Clone, Default)]
pub struct ExitCounts([u64; NAMES.len()]);

impl ExitCounts {
    /// Counts one exit.
    pub fn count(&mut self, exit: &VmExit) {
        let i = match exit {
            VmExit::Stage2Fault(_) => 0,
            VmExit::Io { .. } => 1,
            VmExit::Hypercall => 2,
            VmExit::Interrupt => 3,
            VmExit::InterruptWindow => 4,
            VmExit::Cpuid => 5,
            VmExit::Msr { write: false } => 6,
            VmExit::Msr { write: true } => 7,
            VmExit::Hlt => 8,
            VmExit::Wbinvd => 14,
            VmExit::Shutdown => 9,
            VmExit::Forbidden { what: "XSETBV" } => 13,
            VmExit::Forbidden { .. } => 10,
            VmExit::InvalidState { .. } => 11,
            VmExit::Unknown { .. } => 12,
        };
        self.0[i] += 1;
    }

    /// `reason N, reason N, ...` for the reasons seen, most frequent first.
    pub fn summary(&self) -> String {
        let mut seen: alloc::vec::Vec<(u64, &str)> = self
            .0
            .iter()
            .zip(NAMES)
            .filter(|(n, _)| **n > 0)
            .map(|(n, name)| (*n, name))
            .collect();
        seen.sort_by_key(|&(n, _)| core::cmp::Reverse(n));
        let mut out = String::new();
        for (i, (n, name)) in seen.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}{name} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_orders() {
        let mut c = ExitCounts::default();
        c.count(&VmExit::Hlt);
        for _ in 0..3 {
            c.count(&VmExit::Msr { write: true });
        }
        c.count(&VmExit::Forbidden { what: "XSETBV" });
        assert_eq!(c.summary(), "WRMSR 3, HLT 1, XSETBV 1");
    }
}
