//! Timing and aggregation: every measurement is a wall-clock sample of one phase of one
//! contender in one round, normalised to nanoseconds per unit (page or operation).
//! Contenders of a workload run interleaved inside each round, so machine noise (the host
//! is shared) hits them alike; the report keeps the median of the rounds and their spread.

use std::collections::BTreeMap;
use std::time::Instant;

/// Who a sample belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Who {
    /// This project's code.
    Ours,
    /// An anchor crate, by a short name.
    Anchor(&'static str),
    /// The memory-bandwidth floor: the minimum work any implementation must do.
    Floor,
}

/// Median, quartiles, minimum and maximum of one contender's samples, in ns per unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// Median over the rounds.
    pub median: f64,
    /// First quartile (nearest rank).
    pub q1: f64,
    /// Third quartile (nearest rank).
    pub q3: f64,
    /// Fastest round.
    pub min: f64,
    /// Slowest round.
    pub max: f64,
    /// Number of rounds.
    pub rounds: usize,
}

impl Stat {
    /// Aggregates samples (at least one).
    pub fn of(samples: &[f64]) -> Stat {
        assert!(!samples.is_empty(), "no samples");
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        let rank = |q: f64| s[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Stat {
            median,
            q1: rank(0.25),
            q3: rank(0.75),
            min: s[0],
            max: s[n - 1],
            rounds: n,
        }
    }

    /// Spread of the rounds: the interquartile range over the median, in percent (robust
    /// against the odd round in which another process took the CPU; `min`/`max` keep
    /// the extremes).
    pub fn spread_pct(&self) -> f64 {
        if self.median > 0.0 {
            (self.q3 - self.q1) / self.median * 100.0
        } else {
            0.0
        }
    }
}

/// Collects samples of every measurement id (`workload/phase`) and contender.
#[derive(Default)]
pub struct Recorder {
    samples: BTreeMap<(String, Who), Vec<f64>>,
    order: Vec<String>,
    /// While false (warm-up rounds) samples are dropped.
    pub recording: bool,
    /// Run only this contender (for profiling): `ours`, `floor` or an anchor's name.
    pub only: Option<String>,
}

impl Recorder {
    /// A recorder that records from the start.
    pub fn new() -> Self {
        Self {
            recording: true,
            ..Self::default()
        }
    }

    /// Whether `who` should run at all.
    pub fn runs(&self, who: Who) -> bool {
        self.only.as_deref().is_none_or(|only| match who {
            Who::Ours => only == "ours",
            Who::Floor => only == "floor",
            Who::Anchor(name) => only == name,
        })
    }

    /// Records that `who` took `ns` nanoseconds for `units` units of measurement `id`.
    pub fn record(&mut self, id: &str, who: Who, ns: f64, units: usize) {
        if !self.order.iter().any(|o| o == id) {
            self.order.push(id.to_string());
        }
        if self.recording {
            self.samples
                .entry((id.to_string(), who))
                .or_default()
                .push(ns / units as f64);
        }
    }

    /// Runs `f` once, timed, and records it as `units` units of `id` by `who`.
    pub fn time<T>(&mut self, id: &str, who: Who, units: usize, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = std::hint::black_box(f());
        let ns = start.elapsed().as_nanos() as f64;
        self.record(id, who, ns, units);
        out
    }

    /// Measurement ids in first-seen order.
    pub fn ids(&self) -> &[String] {
        &self.order
    }

    /// The aggregated samples of `who` for `id`, if any were recorded.
    pub fn stat(&self, id: &str, who: Who) -> Option<Stat> {
        self.samples
            .get(&(id.to_string(), who))
            .filter(|s| !s.is_empty())
            .map(|s| Stat::of(s))
    }

    /// Every anchor that has samples for `id`, with its statistics.
    pub fn anchors(&self, id: &str) -> Vec<(&'static str, Stat)> {
        self.samples
            .iter()
            .filter_map(|((i, who), s)| match who {
                Who::Anchor(name) if i == id && !s.is_empty() => Some((*name, Stat::of(s))),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_spread() {
        let s = Stat::of(&[5.0, 1.0, 3.0]);
        assert_eq!((s.median, s.min, s.max, s.rounds), (3.0, 1.0, 5.0, 3));
        assert_eq!((s.q1, s.q3), (1.0, 5.0));
        assert!((s.spread_pct() - 400.0 / 3.0).abs() < 1e-9);
        assert_eq!(Stat::of(&[4.0, 2.0]).median, 3.0);
        let outlier = Stat::of(&[10.0, 10.0, 11.0, 10.0, 9.0, 10.0, 1000.0, 10.0]);
        assert_eq!((outlier.q1, outlier.median, outlier.q3), (10.0, 10.0, 10.0));
        assert_eq!(
            outlier.spread_pct(),
            0.0,
            "one slow round does not blow the spread"
        );
        assert_eq!(outlier.max, 1000.0);
    }

    #[test]
    fn recorder_normalises_per_unit_and_skips_warmup() {
        let mut r = Recorder::new();
        r.recording = false;
        r.record("w/p", Who::Ours, 1000.0, 10);
        assert_eq!(r.stat("w/p", Who::Ours), None);
        r.recording = true;
        r.record("w/p", Who::Ours, 1000.0, 10);
        r.record("w/p", Who::Anchor("a"), 3000.0, 10);
        assert_eq!(r.stat("w/p", Who::Ours).unwrap().median, 100.0);
        assert_eq!(r.anchors("w/p").len(), 1);
        assert_eq!(r.ids(), ["w/p".to_string()]);
    }
}
