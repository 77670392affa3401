//! What a boot test checks in the serial log beyond the exit status and the final
//! marker: the details the hypervisor printed (a guest's end, the back-end's names),
//! every stage-2 report's validator verdict, and facts a guest claims that the
//! hypervisor's report must confirm (leaves per size, faults served).

/// A claim checked against one guest's stage-2 report.
#[derive(Debug, Clone, Copy)]
pub struct ReportCheck {
    /// The guest's name.
    pub guest: &'static str,
    /// At least this many 2 MiB leaves at the guest's end.
    pub leaves_2m: u64,
    /// At least this many stage-2 faults served.
    pub faults: u64,
}

/// The numbers of one guest's stage-2 report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// Faults served (from the report's heading).
    pub faults: u64,
    /// Leaves by size: 4 KiB, 2 MiB, 1 GiB.
    pub leaves: [u64; 3],
    /// The report ends with `validator: OK`.
    pub validator_ok: bool,
}

/// The first number in `s`.
fn number(s: &str) -> Option<u64> {
    let s = s.trim_start_matches(|c: char| !c.is_ascii_digit());
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// Every stage-2 report in `log`, by guest name, in order.
pub fn reports(log: &str) -> Vec<(String, Report)> {
    let mut out: Vec<(String, Report)> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("[hv] stage-2 report for ") {
            // `NAME (E exits, F faults served):`
            let (name, counts) = rest.split_once(" (").unwrap_or((rest, ""));
            let faults = counts
                .split_once(" exits, ")
                .and_then(|(_, f)| number(f))
                .unwrap_or(0);
            out.push((
                name.to_string(),
                Report {
                    faults,
                    ..Report::default()
                },
            ));
        } else if let Some((_, r)) = out.last_mut() {
            let body = line.trim_start_matches("[hv]").trim();
            if let Some(leaves) = body.strip_prefix("leaves: ") {
                for (i, part) in leaves.split(", ").take(3).enumerate() {
                    r.leaves[i] = number(part).unwrap_or(0);
                }
            } else if body == "validator: OK" {
                r.validator_ok = true;
            }
        }
    }
    out
}

/// What is wrong with the reports in `log` (empty: nothing): a report without
/// `validator: OK`, or a claim of `checks` that its guest's report does not bear out.
pub fn report_problems(log: &str, checks: &[ReportCheck]) -> Vec<String> {
    let all = reports(log);
    let mut problems: Vec<String> = all
        .iter()
        .filter(|(_, r)| !r.validator_ok)
        .map(|(name, _)| format!("the report of {name} has no `validator: OK`"))
        .collect();
    for c in checks {
        match all.iter().find(|(name, _)| name == c.guest) {
            None => problems.push(format!("no stage-2 report for {}", c.guest)),
            Some((_, r)) => {
                if r.leaves[1] < c.leaves_2m {
                    problems.push(format!(
                        "{}: {} x 2M leaves, at least {} expected",
                        c.guest, r.leaves[1], c.leaves_2m
                    ));
                }
                if r.faults < c.faults {
                    problems.push(format!(
                        "{}: {} faults served, at least {} expected",
                        c.guest, r.faults, c.faults
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[hv] guest ondemand: PASS (ended: exit code 0)
[hv] stage-2 report for ondemand (653 exits, 540 faults served):
[hv] stage-2 NPT space [GPA:0x0, GPA:0x100000000), root 0x2200000, 3 area(s)
[hv]   leaves: 521 x 4K, 27 x 2M, 0 x 1G
[hv]   faults handled: 540 (0 copy-on-write, 0 rights restored, 0 spurious)
[hv]   validator: OK
[hv] stage-2 report for b (5 exits, 1 faults served):
[hv]   leaves: 3 x 4K, 0 x 2M, 0 x 1G
";

    #[test]
    fn parses_reports() {
        let r = reports(LOG);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            (
                "ondemand".to_string(),
                Report {
                    faults: 540,
                    leaves: [521, 27, 0],
                    validator_ok: true
                }
            )
        );
        assert_eq!(r[1].1.leaves, [3, 0, 0]);
        assert!(!r[1].1.validator_ok);
    }

    #[test]
    fn missing_validator_and_unmet_claims_are_problems() {
        let ok = ReportCheck {
            guest: "ondemand",
            leaves_2m: 24,
            faults: 500,
        };
        let p = report_problems(LOG, &[ok]);
        assert_eq!(p, ["the report of b has no `validator: OK`"]);
        let too_many = ReportCheck {
            leaves_2m: 28,
            ..ok
        };
        let log = LOG.replace("[hv] stage-2 report for b (5 exits, 1 faults served):\n[hv]   leaves: 3 x 4K, 0 x 2M, 0 x 1G\n", "");
        assert_eq!(
            report_problems(&log, &[too_many]),
            ["ondemand: 27 x 2M leaves, at least 28 expected"]
        );
        assert_eq!(report_problems(&log, &[ok]), Vec::<String>::new());
        let absent = ReportCheck { guest: "zzz", ..ok };
        assert_eq!(
            report_problems(&log, &[absent]),
            ["no stage-2 report for zzz"]
        );
    }
}
