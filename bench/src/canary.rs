//! A reference measurement outside the project: summing a 2 MiB array (the size of a
//! 1 GiB table's leaf level) for 10 ms, once after every round of every workload. It
//! runs no contender's code, so its spread is the machine's own over the run: when it
//! is wide, so are the lines bound by memory bandwidth, whatever the code (on this
//! shared VM it measured 2 % in a quiet minute and 23 % half an hour later).

use std::time::Duration;

use crate::harness::{Clock, Stat};

/// 2 MiB of `u64`.
const WORDS: usize = (2 << 20) / 8;
/// One sample's length.
const SAMPLE: Duration = Duration::from_millis(10);

/// The array and the samples so far (ns per 8-byte word).
pub struct Canary {
    words: Vec<u64>,
    samples: Vec<f64>,
}

impl Canary {
    /// A canary with its array filled (so its pages exist before the first sample).
    pub fn new() -> Canary {
        Canary {
            words: (0..WORDS as u64).map(|i| i.wrapping_mul(7)).collect(),
            samples: Vec::new(),
        }
    }

    /// One sample on the thread's CPU clock (time descheduled does not count).
    pub fn sample(&mut self) {
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
            .push(ns as f64 / (passes as f64 * WORDS as f64));
    }

    /// The samples' median and spread, if any were taken.
    pub fn stat(&self) -> Option<Stat> {
        (!self.samples.is_empty()).then(|| Stat::of(&self.samples))
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
             samples): {:.3} ns per word ±{:.0}%; {verdict}",
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
        c.sample();
        c.sample();
        let s = c.stat().unwrap();
        assert_eq!(s.rounds, 2);
        assert!(s.median > 0.0 && s.median < 100.0, "{}", s.median);
        assert!(c.line().unwrap().contains(", 2 samples)"));
    }
}
