#![doc = include_str!("../README.md")]
//!
//! Benchmarks of the stage-2 manager side by side with the anchor crates (issues 7, 11),
//! run by `cargo xtask bench [--quick] [--check]` (= `cargo run --profile bench-fair -p
//! bench -- ...`).
//!
//! Every workload runs all contenders (ours, the anchors, the floor) interleaved inside
//! each round; one warm-up round is dropped; the table gives the median over the rounds,
//! the spread (interquartile range over median) and the ratios; then one `BENCH` line per
//! measurement. Arguments: `--quick` (fewer rounds and shorter samples), `--check` (exit
//! with a failure when a target is missed), `--raw` (every sample, round by round), `--wall`
//! (wall-clock instead of thread CPU time), `--rounds N`,
//! `--only ours|floor|<anchor name>[,...]` (run only those contenders, for profiling) and workload names (`W1` .. `W7`) to run only those.

mod anchors;
mod arena;
mod canary;
mod harness;
mod ours;
mod report;
mod rng;
mod w1;
mod w3;
mod w4;
mod w5;
mod w6;
mod w7;

use std::process::ExitCode;
use std::time::Instant;

use arena::Arena;
use canary::Canary;
use harness::Recorder;

struct Options {
    rounds: usize,
    /// Exit with a failure status when a target is missed.
    check: bool,
    /// A phase repeats inside its sample until it has taken this long.
    min_sample_ns: u64,
    large_searches: usize,
    only: Vec<String>,
    only_contender: Option<String>,
    clock: harness::Clock,
    /// Print every sample, round by round.
    raw: bool,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut quick = false;
        let mut check = false;
        let mut raw = false;
        let mut rounds = None;
        let mut only = Vec::new();
        let mut only_contender = None;
        let mut clock = harness::Clock::ThreadCpu;
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--check" => check = true,
                "--raw" => raw = true,
                "--wall" => clock = harness::Clock::Wall,
                "--only" => only_contender = Some(args.next().ok_or("--only needs a name")?),
                "--rounds" => {
                    let n = args.next().ok_or("--rounds needs a number")?;
                    rounds = Some(n.parse().map_err(|_| format!("bad round count {n:?}"))?);
                }
                w if w.len() == 2 && w.starts_with(['W', 'w']) => only.push(w.to_uppercase()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Options {
            rounds: rounds.unwrap_or(if quick { 5 } else { 9 }).max(1),
            check,
            min_sample_ns: if quick { 5_000_000 } else { 20_000_000 },
            large_searches: if quick { 200 } else { 1000 },
            only,
            only_contender,
            clock,
            raw,
        })
    }

    fn runs(&self, w: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == w)
    }
}

fn unit(id: &str) -> &'static str {
    w1::unit(id)
        .or_else(|| w3::unit(id))
        .or_else(|| w4::unit(id))
        .or_else(|| w5::unit(id))
        .or_else(|| w6::unit(id))
        .or_else(|| w7::unit(id))
        .unwrap_or("op")
}

fn main() -> ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "bench: {e}\nusage: bench [--quick] [--check] [--raw] [--wall] [--rounds N] [--only ours|floor|<anchor>[,...]] [W1 .. W7]"
            );
            return ExitCode::from(2);
        }
    };
    if cfg!(debug_assertions) {
        eprintln!("bench: warning: debug build, numbers are meaningless (use --release)");
    }
    let started = Instant::now();
    let mut rec = Recorder::new();
    let mut canary = Canary::new();
    rec.only = opts.only_contender.clone();
    rec.min_sample_ns = opts.min_sample_ns;
    rec.use_clock(opts.clock);
    // Each workload runs its rounds back to back (contenders interleaved inside every
    // round), so the slow drift of this machine's memory bandwidth over a run (10-20 %
    // over a minute, measured) widens no line's spread; its memory lives only as long.
    if opts.runs("W1") || opts.runs("W2") || opts.runs("W5") {
        let table_arena = Arena::new(4);
        let lookup_order: Vec<u32> = rng::permutation(w1::PAGES, 0x100c)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        for (w, leaf) in [("W1", w1::Leaf::Small), ("W2", w1::Leaf::Huge)] {
            if opts.runs(w) {
                let (arena, order) = (&table_arena, &lookup_order);
                rounds(&mut rec, &mut canary, w, opts.rounds, |rec, r| {
                    w1::round(rec, arena, leaf, order, r)
                });
            }
        }
        if opts.runs("W5") {
            let arena = &table_arena;
            rounds(&mut rec, &mut canary, "W5", opts.rounds, |rec, r| {
                w5::round(rec, arena, r)
            });
        }
    }
    if opts.runs("W3") {
        let large = opts.large_searches;
        rounds(&mut rec, &mut canary, "W3", opts.rounds, |rec, r| {
            let inputs = w3::Inputs::new(r, large);
            w3::round(rec, &inputs, r);
        });
    }
    if opts.runs("W4") {
        let arena = Arena::new(w4::ARENA_BLOCKS);
        let order = rng::permutation(w1::PAGES, 0xfa17);
        for mode in [w4::Mode::Small, w4::Mode::Huge] {
            let (arena, order) = (&arena, &order);
            rounds(
                &mut rec,
                &mut canary,
                "W4",
                opts.rounds * w4::ROUNDS_FACTOR,
                |rec, r| w4::round(rec, arena, mode, order, r),
            );
        }
    }
    let mut w6_guests = Vec::new();
    if opts.runs("W6") {
        w6_guests = w6::guests();
        for (guest, ks) in &mut w6_guests {
            rounds(&mut rec, &mut canary, "W6", opts.rounds, |rec, r| {
                guest.round(rec, ks, r)
            });
        }
    }
    if opts.runs("W7") {
        let mut setup = w7::Setup::new();
        rounds(&mut rec, &mut canary, "W7", opts.rounds, |rec, r| {
            setup.round(rec, r)
        });
    }
    let (clock, overhead) = rec.clock();
    println!(
        "bench: {} rounds ({} for W4; +1 warm-up dropped), {} (clock cost {} ns, {} ns for \
         the wall clock, subtracted), ns per unit, median ±IQR/median; ratios: median over \
         the rounds of each round's ratio; {:.1} s",
        opts.rounds,
        opts.rounds * w4::ROUNDS_FACTOR,
        clock.name(),
        overhead,
        rec.wall_overhead,
        started.elapsed().as_secs_f64()
    );
    if rec.repeated > 0 {
        println!(
            "bench: {} repeated samples; {} retaken because the thread was descheduled, {} \
             kept after {} disturbed attempts",
            rec.repeated,
            rec.retaken,
            rec.kept_disturbed,
            harness::ATTEMPTS
        );
    }
    println!("{}", build_line());
    if let Some(line) = canary.line() {
        println!("{line}");
    }
    let (arena_kib, huge_kib) = arena::huge_page_share();
    if arena_kib > 0 {
        println!(
            "bench: arenas {} MiB, {} MiB of them on 2 MiB pages{}",
            arena_kib >> 10,
            huge_kib >> 10,
            if huge_kib * 10 < arena_kib * 9 {
                " (WARNING: most on 4 KiB pages, whose TLB misses weigh on every contender \
                 and vary on a VM; run `cargo xtask bench`, or set \
                 GLIBC_TUNABLES=glibc.malloc.hugetlb=1)"
            } else {
                ""
            }
        );
    }
    let mut missed = report::print(&rec, &unit, &|id| canary.spread_during(id));
    if opts.raw {
        report::print_raw(&rec);
    }
    let w6_missed = w6::summary(&rec, &w6_guests);
    if w6_missed > 0 {
        missed.push(format!("{w6_missed} W6 target(s) (see the W6 lines)"));
    }
    if missed.is_empty() {
        println!("bench: 0 targets missed");
    } else {
        println!("bench: targets missed: {}", missed.join("; "));
    }
    if opts.check && !missed.is_empty() {
        eprintln!("bench: --check: {} target(s) missed", missed.len());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs `one` for a dropped warm-up round and `n` recorded rounds, each recorded round
/// followed by a sample of the machine reference.
fn rounds(
    rec: &mut Recorder,
    canary: &mut Canary,
    workload: &'static str,
    n: usize,
    mut one: impl FnMut(&mut Recorder, usize),
) {
    for round in 0..=n {
        rec.recording = round > 0;
        one(rec, round);
        if round > 0 {
            canary.sample(workload);
        }
    }
}

/// The build every contender was compiled with, for the table's header.
fn build_line() -> String {
    let profile = env!("BENCH_PROFILE");
    let panic = if cfg!(panic = "abort") {
        "abort"
    } else {
        "unwind"
    };
    if profile == "bench-fair" {
        format!(
            "bench: every contender built with profile bench-fair: fat LTO, codegen-units=1, \
             panic={panic}"
        )
    } else {
        format!(
            "bench: WARNING: built with profile {profile}, not bench-fair (fat LTO, \
             codegen-units=1, panic=abort for every contender): ratios are not the fair ones; \
             use `cargo xtask bench`"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn quick_means_fewer_rounds_and_names_select_workloads() {
        let full = parse(&[]).unwrap();
        let quick = parse(&["--quick", "w3"]).unwrap();
        assert!(quick.rounds < full.rounds && quick.large_searches < full.large_searches);
        assert!(full.runs("W1") && full.runs("W5"));
        assert!(quick.runs("W3") && !quick.runs("W1"));
        assert_eq!(parse(&["--rounds", "2"]).unwrap().rounds, 2);
        assert!(parse(&["--check"]).unwrap().check && !full.check);
        assert!(parse(&["--raw"]).unwrap().raw && !full.raw);
        assert_eq!(
            parse(&["--only", "floor"])
                .unwrap()
                .only_contender
                .as_deref(),
            Some("floor")
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--rounds"]).is_err());
        assert!(parse(&["--rounds", "x"]).is_err());
        assert!(parse(&["--fast"]).is_err());
        assert_eq!(parse(&["--wall"]).unwrap().clock, harness::Clock::Wall);
        assert_eq!(parse(&[]).unwrap().clock, harness::Clock::ThreadCpu);
    }
}
