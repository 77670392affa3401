//! A reference measurement outside the project: summing a 2 MiB array (the size of a
//! 1 GiB table's leaf level) for 10 ms, once after every round of every workload. It
//! runs no contender's code, so its spread is the machine's own over the run: when it
//! is wide, so are the lines bound by memory bandwidth, whatever the code (on this
//! shared VM it measured 2 % in a quiet minute and 23 % half an hour later).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::harness::{Clock, Stat};

/// 2 MiB of `u64`.
const WORDS: usize = (2 << 20) / 8;
/// One sample's length.
const SAMPLE: Duration = Duration::from_millis(10);

/// The array and the samples so far (ns per 8-byte word), by the workload whose rounds
/// they followed.
pub struct Canary {
    words: Vec<u64>,
    samples: BTreeMap<&'static str, Vec<f64>>,
}

impl Canary {
    /// A canary with its array filled (so its pages exist before the first sample).
    pub fn new() -> Canary {
        Canary {
            words: (0..WORDS as u64).map(|i| i.wrapping_mul(7)).collect(),
            samples: BTreeMap::new(),
        }
    }

    /// One sample after a round of `workload` (`W1` ...), on the thread's CPU clock
    /// (time descheduled does not count).
    pub fn sample(&mut self, workload: &'static str) {
        let clock = Clock::ThreadCpu.resolve();
        let words = &self.words;
        let ((passes, sum), ns) = clock.measure(|| {
            let start = std::time::Instant::now();
            let (mut passes, mut sum) = (0u64, 0u64);
            while start.elapsed() < SAMPLE {
                let s: u64 = std::hint::black_box(words)
                    .iter()
                    .copied()
                    .fold(0, u64::wrapping_add);
                sum = sum.wrapping_add(s);
                passes += 1;
            }
            (passes, sum)
        });
        std::hint::black_box(sum);
        self.samples
            .entry(workload)
            .or_default()
            .push(ns as f64 / (passes as f64 * WORDS as f64));
    }

    /// All samples' median and spread, if any were taken.
    pub fn stat(&self) -> Option<Stat> {
        let all: Vec<f64> = self.samples.values().flatten().copied().collect();
        (!all.is_empty()).then(|| Stat::of(&all))
    }

    /// The spread (IQR over median, %) of the samples taken during the rounds of the
    /// workload of measurement `id` (`W4/fault_4k` -> `W4`).
    pub fn spread_during(&self, id: &str) -> Option<f64> {
        let workload = id.split('/').next()?;
        let s = self.samples.get(workload).filter(|s| !s.is_empty())?;
        Some(Stat::of(s).spread_pct())
    }

    /// The header's line.
    pub fn line(&self) -> Option<String> {
        let s = self.stat()?;
        let verdict = if s.spread_pct() > 5.0 {
            "the machine itself varied during this run: lines bound by memory bandwidth \
             vary with it (compare ratios, which are paired by round)"
        } else {
            "the machine was steady"
        };
        Some(format!(
            "bench: machine reference (a 2 MiB array summed for 10 ms after every round, {} \
             samples): {:.3} ns per word ±{:.0}% (column `mach`: its spread during each \
             workload); {verdict}",
            s.rounds,
            s.median,
            s.spread_pct()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_positive_and_reported() {
        let mut c = Canary::new();
        assert_eq!(c.line(), None);
        c.sample("W1");
        c.sample("W1");
        c.sample("W4");
        let s = c.stat().unwrap();
        assert_eq!(s.rounds, 3);
        assert!(s.median > 0.0 && s.median < 100.0, "{}", s.median);
        assert!(c.line().unwrap().contains(", 3 samples)"));
        assert!(c.spread_during("W1/map").is_some() && c.spread_during("W4/x").is_some());
        assert_eq!(c.spread_during("W3/find"), None);
    }
}
