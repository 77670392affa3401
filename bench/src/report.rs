//! The printed results: a human table and one machine-readable `BENCH` line per measurement:
//! `BENCH <workload>/<phase> ours_ns=<n> anchor=<name> anchor_ns=<n> floor_ns=<n>
//! vs_anchor=<anchor/ours> vs_floor=<ours/floor>` (ns per unit; `-` where there is no value).
//! The anchor named is the fastest anchor of that measurement in this run.

use crate::harness::{Recorder, Stat, Who};

/// A goal from issue 7 or 11, checked on the ratios of one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// `anchor_ns / ours_ns >= x` against the best anchor.
    VsAnchorAtLeast(f64),
    /// `ours_ns / floor_ns <= x`.
    VsFloorAtMost(f64),
}

impl Target {
    /// Whether `row` meets the goal; `None` if a needed value is missing.
    pub fn met(self, row: &Row) -> Option<bool> {
        match self {
            Target::VsAnchorAtLeast(x) => row.vs_anchor().map(|r| r >= x),
            Target::VsFloorAtMost(x) => row.vs_floor().map(|r| r <= x),
        }
    }

    fn describe(self) -> String {
        match self {
            Target::VsAnchorAtLeast(x) => format!("anchor/ours>={x}"),
            Target::VsFloorAtMost(x) => format!("ours/floor<={x}"),
        }
    }
}

/// The goals that apply to measurement `id` (issues 7 and 11).
pub fn targets_for(id: &str) -> Vec<Target> {
    match id {
        "W1/map" => vec![Target::VsAnchorAtLeast(3.0), Target::VsFloorAtMost(2.0)],
        "W1/translate" | "W1/unmap" => vec![Target::VsAnchorAtLeast(1.5)],
        "W1/translate_random" => vec![Target::VsAnchorAtLeast(1.0)],
        "W3/unmap_middle" | "W3/protect" => vec![Target::VsAnchorAtLeast(20.0)],
        id if id.starts_with("W4/") => vec![Target::VsFloorAtMost(1.2)],
        _ => Vec::new(),
    }
}

/// One measurement, all contenders.
#[derive(Clone, Debug)]
pub struct Row {
    /// `workload/phase`.
    pub id: String,
    /// Our statistics.
    pub ours: Option<Stat>,
    /// Every anchor, fastest first.
    pub anchors: Vec<(&'static str, Stat)>,
    /// The floor's statistics.
    pub floor: Option<Stat>,
    /// Best anchor over ours and ours over the floor, each the median over the rounds of
    /// that round's ratio ([`paired`]), or the ratio of the medians when the rounds do
    /// not pair up.
    ratios: (Option<f64>, Option<f64>),
}

/// The median over the rounds of `num[r] / den[r]`: contenders of one round run within
/// a second of each other, so a ratio taken inside the round cancels the drift of the
/// machine between rounds, which a ratio of two medians keeps. `None` when the two did
/// not run the same rounds (`--only`).
pub fn paired(num: &[f64], den: &[f64]) -> Option<f64> {
    if num.is_empty() || num.len() != den.len() {
        return None;
    }
    let r: Vec<f64> = num.iter().zip(den).map(|(a, b)| a / b).collect();
    Some(Stat::of(&r).median)
}

impl Row {
    /// Collects the row of `id` from a recorder.
    pub fn from_recorder(rec: &Recorder, id: &str) -> Row {
        let mut anchors = rec.anchors(id);
        anchors.sort_by(|a, b| a.1.median.total_cmp(&b.1.median));
        let samples = |who| rec.samples(id, who);
        let (ours, floor) = (rec.stat(id, Who::Ours), rec.stat(id, Who::Floor));
        let vs_anchor = anchors.first().and_then(|&(name, best)| {
            paired(samples(Who::Anchor(name)), samples(Who::Ours))
                .or_else(|| Some(best.median / ours?.median))
        });
        let vs_floor = paired(samples(Who::Ours), samples(Who::Floor))
            .or_else(|| Some(ours?.median / floor?.median));
        Row {
            id: id.to_string(),
            ours,
            anchors,
            floor,
            ratios: (vs_anchor, vs_floor),
        }
    }

    /// The fastest anchor.
    pub fn best_anchor(&self) -> Option<(&'static str, Stat)> {
        self.anchors.first().copied()
    }

    /// Best anchor's time over ours (above 1: we are faster): the median of the rounds'
    /// ratios ([`paired`]), or the ratio of the medians when the rounds do not pair up.
    pub fn vs_anchor(&self) -> Option<f64> {
        self.ratios.0
    }

    /// Our time over the floor's (1 is the best possible), like [`Row::vs_anchor`].
    pub fn vs_floor(&self) -> Option<f64> {
        self.ratios.1
    }

    /// The `BENCH ...` line.
    pub fn bench_line(&self) -> String {
        let ns = |s: Option<Stat>| s.map_or("-".to_string(), |s| fmt_ns(s.median));
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        let best = self.best_anchor();
        format!(
            "BENCH {} ours_ns={} anchor={} anchor_ns={} floor_ns={} vs_anchor={} vs_floor={}",
            self.id,
            ns(self.ours),
            best.map_or("-", |b| b.0),
            ns(best.map(|b| b.1)),
            ns(self.floor),
            ratio(self.vs_anchor()),
            ratio(self.vs_floor()),
        )
    }
}

/// A nanosecond figure with precision suited to its size.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.2}")
    }
}

fn cell(s: Option<Stat>) -> String {
    s.map_or("-".into(), |s| {
        format!("{} ±{:.0}%", fmt_ns(s.median), s.spread_pct())
    })
}

/// Prints the table, then every `BENCH` line; returns the targets missed, each as
/// `<id> <goal>`. `machine` gives the spread of the machine reference during a
/// measurement's workload (column `mach`).
pub fn print(
    rec: &Recorder,
    units: &dyn Fn(&str) -> &'static str,
    machine: &dyn Fn(&str) -> Option<f64>,
) -> Vec<String> {
    let rows: Vec<Row> = rec
        .ids()
        .iter()
        .map(|id| Row::from_recorder(rec, id))
        .collect();
    println!(
        "{:<22} {:>9} {:>16} {:<28} {:<28} {:>16} {:>9} {:>8} {:>5}  targets",
        "workload/phase",
        "unit",
        "ours ns",
        "anchor ns (best first)",
        "",
        "floor ns",
        "anc/ours",
        "ours/flr",
        "mach"
    );
    let mut missed = Vec::new();
    for row in &rows {
        let mut anchors = row
            .anchors
            .iter()
            .map(|(n, s)| format!("{n} {}", cell(Some(*s))));
        let a1 = anchors.next().unwrap_or_else(|| "-".into());
        let a2 = anchors.collect::<Vec<_>>().join(", ");
        let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        let goals: Vec<String> = targets_for(&row.id)
            .into_iter()
            .map(|t| {
                let verdict = match t.met(row) {
                    Some(true) => "ok",
                    Some(false) => {
                        missed.push(format!("{} {}", row.id, t.describe()));
                        "MISSED"
                    }
                    None => "n/a",
                };
                format!("{} {verdict}", t.describe())
            })
            .collect();
        println!(
            "{:<22} {:>9} {:>16} {:<28} {:<28} {:>16} {:>9} {:>8} {:>5}  {}",
            row.id,
            units(&row.id),
            cell(row.ours),
            a1,
            if a2.is_empty() { "-".into() } else { a2 },
            cell(row.floor),
            ratio(row.vs_anchor()),
            ratio(row.vs_floor()),
            machine(&row.id).map_or("-".to_string(), |m| format!("±{m:.0}%")),
            goals.join("; ")
        );
    }
    println!();
    for row in &rows {
        println!("{}", row.bench_line());
    }
    missed
}

/// Prints every sample of every measurement, in the order taken (one per round):
/// `RAW <workload>/<phase> <contender> <ns per unit> ...`.
pub fn print_raw(rec: &Recorder) {
    for id in rec.ids() {
        let row = Row::from_recorder(rec, id);
        let whos = std::iter::once(("ours", Who::Ours))
            .chain(row.anchors.iter().map(|(n, _)| (*n, Who::Anchor(n))))
            .chain(std::iter::once(("floor", Who::Floor)));
        for (name, who) in whos {
            let s = rec.samples(id, who);
            if !s.is_empty() {
                let v: Vec<String> = s.iter().map(|&x| fmt_ns(x)).collect();
                println!("RAW {id} {name} {}", v.join(" "));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_line_names_the_fastest_anchor_and_ratios() {
        let mut rec = Recorder::new();
        rec.record("W1/map", Who::Ours, 10.0, 1);
        rec.record("W1/map", Who::Anchor("slow"), 90.0, 1);
        rec.record("W1/map", Who::Anchor("fast"), 40.0, 1);
        rec.record("W1/map", Who::Floor, 5.0, 1);
        let row = Row::from_recorder(&rec, "W1/map");
        assert_eq!(
            row.bench_line(),
            "BENCH W1/map ours_ns=10.00 anchor=fast anchor_ns=40.00 floor_ns=5.00 \
             vs_anchor=4.00 vs_floor=2.00"
        );
        assert_eq!(Target::VsAnchorAtLeast(3.0).met(&row), Some(true));
        assert_eq!(Target::VsFloorAtMost(1.5).met(&row), Some(false));
    }

    #[test]
    fn ratios_pair_the_rounds() {
        let mut rec = Recorder::new();
        // The machine slows down over the rounds; ours is 10 % over the floor in each.
        for (ours, floor) in [(110.0, 100.0), (220.0, 200.0), (330.0, 300.0)] {
            rec.record("W4/x", Who::Ours, ours, 1);
            rec.record("W4/x", Who::Floor, floor, 1);
        }
        let row = Row::from_recorder(&rec, "W4/x");
        assert!((row.vs_floor().unwrap() - 1.1).abs() < 1e-9);
        assert_eq!(paired(&[1.0, 2.0], &[1.0]), None, "rounds that do not pair");
        assert_eq!(paired(&[3.0, 1.0, 8.0], &[1.0, 1.0, 2.0]), Some(3.0));
    }

    #[test]
    fn missing_values_print_as_dash() {
        let mut rec = Recorder::new();
        rec.record("W5/split", Who::Floor, 7.0, 1);
        let row = Row::from_recorder(&rec, "W5/split");
        assert_eq!(
            row.bench_line(),
            "BENCH W5/split ours_ns=- anchor=- anchor_ns=- floor_ns=7.00 vs_anchor=- vs_floor=-"
        );
        assert_eq!(Target::VsFloorAtMost(1.2).met(&row), None);
    }
}
