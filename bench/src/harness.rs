//! Timing and aggregation: every measurement is one sample of one phase of one contender
//! in one round, normalised to nanoseconds per unit (page or operation).
//! A phase shorter than a few milliseconds repeats inside its sample ([`Recorder::repeat`]):
//! one sample is then the total time of the repetitions over their total units, after a
//! dropped warm-up, timed with the wall clock and checked against the thread's CPU time
//! (a sample during which the thread was descheduled is taken again). Unrepeated phases
//! are timed with the thread's CPU time (Linux `CLOCK_THREAD_CPUTIME_ID`), so time spent
//! descheduled on this shared machine does not count; `--wall` uses wall-clock time
//! everywhere. Each clock's own cost (calibrated at start) is subtracted.
//! Contenders of a workload run interleaved inside each round, so machine noise (the host
//! is shared) hits them alike; the report keeps the median of the rounds and their spread.

use std::collections::BTreeMap;
use std::time::Instant;

/// Which clock samples are taken with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// CPU time of this thread (Linux); falls back to wall time elsewhere.
    ThreadCpu,
    /// Wall-clock time.
    Wall,
}

#[cfg(target_os = "linux")]
mod cpu {
    /// `struct timespec` on x86_64 / aarch64 Linux.
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }

    /// Linux `CLOCK_THREAD_CPUTIME_ID`.
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

    unsafe extern "C" {
        /// POSIX `clock_gettime` from the C library std already links.
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }

    /// CPU time of the calling thread in nanoseconds, if the clock answers.
    pub fn thread_ns() -> Option<u64> {
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock_gettime` writes one `struct timespec` (layout matched by the
        // `repr(C)` type) through the valid pointer it is given and keeps no reference.
        let r = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (r == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }
}

#[cfg(not(target_os = "linux"))]
mod cpu {
    pub fn thread_ns() -> Option<u64> {
        None
    }
}

impl Clock {
    /// The clock actually used: thread CPU time only where it works.
    pub fn resolve(self) -> Clock {
        match self {
            Clock::ThreadCpu if cpu::thread_ns().is_some() => Clock::ThreadCpu,
            _ => Clock::Wall,
        }
    }

    /// A short name for the report.
    pub fn name(self) -> &'static str {
        match self {
            Clock::ThreadCpu => {
                "wall-clock intervals in samples checked against the thread's CPU time, \
                 thread CPU time for unrepeated phases"
            }
            Clock::Wall => "wall-clock time",
        }
    }

    /// Runs `f` and returns its result and the nanoseconds it took on this clock.
    pub fn measure<T>(self, f: impl FnOnce() -> T) -> (T, u64) {
        match self {
            Clock::ThreadCpu => {
                let start = cpu::thread_ns().unwrap_or(0);
                let out = std::hint::black_box(f());
                let end = cpu::thread_ns().unwrap_or(start);
                (out, end.saturating_sub(start))
            }
            Clock::Wall => {
                let start = Instant::now();
                let out = std::hint::black_box(f());
                (out, start.elapsed().as_nanos() as u64)
            }
        }
    }

    /// The median cost of measuring nothing, to subtract from every sample.
    pub fn overhead(self) -> u64 {
        let mut v: Vec<u64> = (0..101).map(|_| self.measure(|| ()).1).collect();
        v.sort_unstable();
        v[v.len() / 2]
    }
}

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

/// Time and units of one phase accumulated over the passes of a [`Recorder::repeat`].
type Pending = BTreeMap<(String, Who), (u64, usize)>;

/// At most this many passes make one sample (a phase of a microsecond reaches
/// [`Recorder::min_sample_ns`] of 20 ms well before).
const MAX_PASSES: usize = 100_000;

/// Collects samples of every measurement id (`workload/phase`) and contender.
#[derive(Default)]
pub struct Recorder {
    samples: BTreeMap<(String, Who), Vec<f64>>,
    order: Vec<String>,
    /// While false (warm-up rounds) samples are dropped.
    pub recording: bool,
    /// Run only these contenders (comma-separated, for profiling): `ours`, `floor` or an
    /// anchor's name.
    pub only: Option<String>,
    /// [`Recorder::repeat`] runs its passes until every phase in them has taken at
    /// least this long (ns, on the sampling clock).
    pub min_sample_ns: u64,
    clock: Option<(Clock, u64)>,
    /// The wall clock's calibrated overhead (ns), for intervals inside checked samples.
    pub wall_overhead: u64,
    pending: Option<Pending>,
    /// Samples taken again because the thread was descheduled during them.
    pub retaken: usize,
    /// Samples kept although every attempt was disturbed.
    pub kept_disturbed: usize,
    /// Samples recorded by [`Recorder::repeat`].
    pub repeated: usize,
}

/// Attempts at a sample of [`Recorder::repeat`] before a disturbed one is kept.
pub const ATTEMPTS: usize = 4;

/// Whether a sample that took `wall_ns` of wall time but only `cpu_ns` of this thread's
/// CPU time was disturbed: the thread was off the CPU for more than 2 % of it (and
/// 20 us, about a context switch's worth). Timer ticks and page faults count as the
/// thread's CPU time, so an undisturbed sample keeps the two within a fraction of that.
pub fn disturbed(wall_ns: u64, cpu_ns: u64) -> bool {
    wall_ns > cpu_ns + wall_ns / 50 + 20_000
}

impl Recorder {
    /// A recorder that records from the start.
    pub fn new() -> Self {
        Self {
            recording: true,
            ..Self::default()
        }
    }

    /// Runs `pass` (which times one or more phases with [`Recorder::time`]) again and
    /// again until every phase timed in it has taken at least [`Recorder::min_sample_ns`]
    /// in total, then records one sample per phase: the total time over the total units.
    /// The passes of the first tenth of that time only warm up and are not counted
    /// ([`Recorder::warm_up`]). Returns the last pass's result. Passes cannot nest.
    ///
    /// With [`Clock::ThreadCpu`], the phases inside are timed with the wall clock
    /// (`CLOCK_MONOTONIC` through the vDSO: 20 ns a reading here, where the thread CPU
    /// clock is a 410 ns system call, too coarse for a phase of a few hundred
    /// nanoseconds such as W2's map or W6's one-page reset), and the whole sample is
    /// checked against the thread's CPU time: a sample during which the thread was
    /// descheduled ([`disturbed`]) is taken again, up to [`ATTEMPTS`] times; when every
    /// attempt was disturbed, the least disturbed one is kept (and counted).
    pub fn repeat<T>(&mut self, mut pass: impl FnMut(&mut Recorder) -> T) -> T {
        assert!(self.pending.is_none(), "Recorder::repeat cannot nest");
        self.warm_up(self.min_sample_ns / 10, &mut pass);
        let checked = self.clock().0 == Clock::ThreadCpu;
        // The least disturbed attempt so far: time off the CPU, and what it timed.
        let mut best: Option<(u64, Pending)> = None;
        let mut attempt = 1;
        let out = loop {
            self.pending = Some(Pending::new());
            let cpu0 = cpu::thread_ns().unwrap_or(0);
            let wall0 = Instant::now();
            let out = self.run_passes(self.min_sample_ns, &mut pass);
            let wall = wall0.elapsed().as_nanos() as u64;
            let cpu = cpu::thread_ns().unwrap_or(0).saturating_sub(cpu0);
            if !checked || !disturbed(wall, cpu) {
                break out;
            }
            let off = wall.saturating_sub(cpu);
            let this = self.pending.take().expect("inside repeat");
            if best.as_ref().is_none_or(|(b, _)| off < *b) {
                best = Some((off, this));
            }
            if attempt == ATTEMPTS {
                self.kept_disturbed += 1;
                self.pending = best.take().map(|(_, p)| p);
                break out;
            }
            attempt += 1;
            self.retaken += 1;
        };
        self.repeated += 1;
        for ((id, who), (ns, units)) in self.pending.take().expect("inside repeat") {
            self.record(&id, who, ns as f64, units);
        }
        out
    }

    /// Runs passes (at least one) until every phase in them has taken `ns`, and drops
    /// what they timed. The passes of a sample follow another contender's, whose data
    /// filled the caches and TLBs: on this machine the first passes of a phase of a
    /// few hundred microseconds take up to three times the later ones, for about two
    /// milliseconds (measured in W7), which would weigh on the sample by how many
    /// passes it holds rather than by the code measured.
    fn warm_up<T>(&mut self, ns: u64, pass: &mut impl FnMut(&mut Recorder) -> T) {
        self.pending = Some(Pending::new());
        self.run_passes(ns, pass);
        self.pending = None;
    }

    /// Runs passes (at least one, at most [`MAX_PASSES`]) into the pending sample until
    /// every phase timed in it has taken `ns`; returns the last pass's result.
    fn run_passes<T>(&mut self, ns: u64, pass: &mut impl FnMut(&mut Recorder) -> T) -> T {
        let mut passes = 0;
        loop {
            let out = pass(self);
            passes += 1;
            let pending = self.pending.as_ref().expect("inside repeat");
            if passes >= MAX_PASSES || pending.values().all(|&(t, _)| t >= ns) {
                return out;
            }
        }
    }

    /// Takes samples with `clock` (resolved, with its overhead calibrated).
    pub fn use_clock(&mut self, clock: Clock) {
        let clock = clock.resolve();
        self.clock = Some((clock, clock.overhead()));
        self.wall_overhead = Clock::Wall.overhead();
    }

    /// The clock in use and its calibrated overhead in ns.
    pub fn clock(&self) -> (Clock, u64) {
        self.clock.unwrap_or((Clock::Wall, 0))
    }

    /// Whether `who` should run at all.
    pub fn runs(&self, who: Who) -> bool {
        let name = match who {
            Who::Ours => "ours",
            Who::Floor => "floor",
            Who::Anchor(name) => name,
        };
        self.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|o| o == name))
    }

    /// Remembers `id` in first-seen order.
    fn note(&mut self, id: &str) {
        if !self.order.iter().any(|o| o == id) {
            self.order.push(id.to_string());
        }
    }

    /// Records that `who` took `ns` nanoseconds for `units` units of measurement `id`.
    pub fn record(&mut self, id: &str, who: Who, ns: f64, units: usize) {
        self.note(id);
        if self.recording {
            self.samples
                .entry((id.to_string(), who))
                .or_default()
                .push(ns / units as f64);
        }
    }

    /// Runs `f` once, timed, and records it as `units` units of `id` by `who` (inside
    /// [`Recorder::repeat`]: adds it to that sample).
    pub fn time<T>(&mut self, id: &str, who: Who, units: usize, f: impl FnOnce() -> T) -> T {
        let (clock, overhead) = match (self.clock(), &self.pending) {
            // Inside a checked sample of `repeat`: the cheap clock (see there).
            ((Clock::ThreadCpu, _), Some(_)) => (Clock::Wall, self.wall_overhead),
            (c, _) => c,
        };
        let (out, ns) = clock.measure(f);
        let ns = ns.saturating_sub(overhead);
        self.note(id);
        match &mut self.pending {
            Some(pending) => {
                let slot = pending.entry((id.to_string(), who)).or_default();
                slot.0 += ns;
                slot.1 += units;
            }
            None => self.record(id, who, ns as f64, units),
        }
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

    /// The samples of `who` for `id` in the order they were taken (one per round).
    pub fn samples(&self, id: &str, who: Who) -> &[f64] {
        self.samples
            .get(&(id.to_string(), who))
            .map_or(&[], Vec::as_slice)
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
    fn both_clocks_see_work_and_cpu_time_skips_sleep() {
        // Work measured by the clock under test itself, so a busy machine cannot make it
        // look shorter: spin until this thread has used 5 ms of CPU (or, without a CPU
        // clock, 5 ms of wall time).
        let spin = || {
            let start_cpu = cpu::thread_ns();
            let start_wall = Instant::now();
            loop {
                std::hint::spin_loop();
                let done = match (start_cpu, cpu::thread_ns()) {
                    (Some(a), Some(b)) => b - a >= 5_000_000,
                    _ => start_wall.elapsed().as_millis() >= 5,
                };
                if done {
                    break;
                }
            }
        };
        for clock in [Clock::ThreadCpu.resolve(), Clock::Wall] {
            let (_, ns) = clock.measure(spin);
            assert!(ns >= 5_000_000, "{clock:?} saw only {ns} ns of a 5 ms spin");
            assert!(clock.overhead() < 1_000_000);
        }
        if Clock::ThreadCpu.resolve() == Clock::ThreadCpu {
            let (_, ns) = Clock::ThreadCpu
                .measure(|| std::thread::sleep(std::time::Duration::from_millis(50)));
            assert!(ns < 25_000_000, "a 50 ms sleep cost {ns} ns of CPU time");
        }
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

    #[test]
    fn a_sample_off_the_cpu_is_taken_again_then_kept_and_counted() {
        assert!(!disturbed(10_000_000, 9_900_000), "1 % off the CPU");
        assert!(disturbed(10_000_000, 9_000_000), "10 % off the CPU");
        assert!(!disturbed(15_000, 0), "less than a context switch");
        let mut r = Recorder::new();
        r.use_clock(Clock::ThreadCpu);
        if r.clock().0 != Clock::ThreadCpu {
            panic!("this test needs the thread CPU clock (Linux)");
        }
        r.min_sample_ns = 2_000_000;
        let mut passes = 0;
        r.repeat(|r| {
            passes += 1;
            // Sleeping is time off the CPU: every attempt is disturbed.
            r.time("w/sleep", Who::Ours, 1, || {
                std::thread::sleep(std::time::Duration::from_millis(1))
            });
        });
        assert_eq!(
            (r.retaken, r.kept_disturbed, r.repeated),
            (ATTEMPTS - 1, 1, 1)
        );
        assert!(
            passes > 2 * ATTEMPTS,
            "a warm-up pass, two per attempt: {passes}"
        );
        let s = r.stat("w/sleep", Who::Ours).unwrap();
        assert!(
            s.median >= 1_000_000.0,
            "timed on the wall clock: {}",
            s.median
        );
        // A busy pass is not disturbed.
        r.repeat(|r| {
            r.time("w/spin", Who::Ours, 1, || {
                let t = Instant::now();
                while t.elapsed().as_micros() < 500 {
                    std::hint::spin_loop();
                }
            })
        });
        assert_eq!(r.repeated, 2);
        assert!(r.kept_disturbed <= 2);
    }

    #[test]
    fn repeat_warms_up_then_runs_until_every_phase_is_long_enough() {
        let mut r = Recorder::new();
        r.use_clock(Clock::Wall);
        r.min_sample_ns = 20_000_000;
        let ms = std::time::Duration::from_micros;
        let mut passes = 0;
        let out = r.repeat(|r| {
            // The first pass is cold: 100 ms. Warm-up (2 ms of every phase) drops it.
            let fast = if passes == 0 { ms(100_000) } else { ms(200) };
            r.time("w/fast", Who::Ours, 10, || std::thread::sleep(fast));
            if passes % 10 == 0 {
                r.time("w/slow", Who::Ours, 2, || std::thread::sleep(ms(3_000)));
            }
            passes += 1;
            passes
        });
        assert_eq!(out, passes, "the last pass's result");
        assert!(
            (2..=102).contains(&passes),
            "one warm-up pass, then at most 100 for the fast phase: {passes}"
        );
        assert_eq!(r.ids(), ["w/fast".to_string(), "w/slow".to_string()]);
        let fast = r.stat("w/fast", Who::Ours).unwrap();
        assert_eq!(fast.rounds, 1, "one sample for all passes");
        assert!(
            (20_000.0..80_000.0).contains(&fast.median),
            "200 us over 10 units, the cold pass dropped (else above 130 us): {}",
            fast.median
        );
        let slow = r.stat("w/slow", Who::Ours).unwrap();
        assert!(slow.median >= 1_500_000.0, "per unit: {}", slow.median);
    }
}
