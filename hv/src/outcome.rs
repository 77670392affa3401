//! How a guest ends, what was expected, and whether the two agree.

use alloc::string::String;
use core::fmt;
use core::str::FromStr;

/// The kind of a stage-2 or guest fault, as named in `expect=fault:KIND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Access to a GPA no area covers.
    Unmapped,
    /// Read from an area without read rights.
    Read,
    /// Write to an area without write rights.
    Write,
    /// Instruction fetch from an area without execute rights.
    Exec,
    /// The guest's frame quota ran out.
    Quota,
    /// The host frame allocator itself ran out while serving this guest (within its
    /// quota): the host is short, not the guest over its limit.
    HostMemory,
    /// The guest's bookkeeping budget (areas, shared-frame entries) or the host's
    /// bookkeeping pool ran out.
    Metadata,
    /// Triple fault / shutdown.
    Shutdown,
    /// Unknown or malformed hypercall.
    Hypercall,
    /// Access to an I/O port the hypervisor refuses (the port is the fault's address,
    /// `expect=fault:io@PORT`).
    Io,
    /// An instruction the guest may not execute (VMRUN, ...), or invalid guest state.
    Instruction,
    /// The guest used up its CPU budget (timer ticks) without ending.
    Timeout,
}

impl FaultKind {
    /// The name used in settings and messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unmapped => "unmapped",
            Self::Read => "read",
            Self::Write => "write",
            Self::Exec => "exec",
            Self::Quota => "quota",
            Self::HostMemory => "host-memory",
            Self::Metadata => "metadata",
            Self::Shutdown => "shutdown",
            Self::Hypercall => "hypercall",
            Self::Io => "io",
            Self::Instruction => "instruction",
            Self::Timeout => "timeout",
        }
    }

    const ALL: [FaultKind; 12] = [
        Self::Unmapped,
        Self::Read,
        Self::Write,
        Self::Exec,
        Self::Quota,
        Self::HostMemory,
        Self::Metadata,
        Self::Shutdown,
        Self::Hypercall,
        Self::Io,
        Self::Instruction,
        Self::Timeout,
    ];
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEnd {
    /// The guest called the EXIT hypercall with this code.
    Exited(u64),
    /// The guest executed HLT with nothing to wake it.
    Halted,
    /// The guest faulted: `kind` at `gpa` (when known); `detail` explains.
    Fault {
        /// Kind of fault.
        kind: FaultKind,
        /// Faulting guest-physical address, if the fault has one.
        gpa: Option<u64>,
        /// Human-readable explanation (the address space's error, the exit, ...).
        detail: String,
    },
    /// The guest took more exits than allowed.
    ExitLimit(u64),
    /// The guest was never started (its memory, image or vCPU could not be set up).
    /// No expectation matches it: `expect=fault:quota` means the running guest hit its
    /// quota, not that it could not be created.
    NotStarted {
        /// The kind of the set-up failure.
        kind: FaultKind,
        /// Why, in words.
        detail: String,
    },
}

impl fmt::Display for GuestEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "exit code {code}"),
            Self::Halted => write!(f, "halted"),
            Self::Fault {
                kind,
                gpa: Some(gpa),
                detail,
            } => {
                write!(f, "fault:{}@{gpa:#x}: {detail}", kind.name())
            }
            Self::Fault {
                kind,
                gpa: None,
                detail,
            } => {
                write!(f, "fault:{}: {detail}", kind.name())
            }
            Self::ExitLimit(n) => write!(f, "stopped after {n} exits"),
            Self::NotStarted { kind, detail } => {
                write!(f, "never started ({}): {detail}", kind.name())
            }
        }
    }
}

/// The outcome a guest's settings expect (`expect=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    /// Exit code 0.
    Ok,
    /// This exit code.
    Exit(u64),
    /// HLT.
    Halt,
    /// A fault of this kind, at this GPA if given.
    Fault {
        /// Kind of fault.
        kind: FaultKind,
        /// The GPA it must hit, if given.
        gpa: Option<u64>,
    },
}

impl FromStr for Expectation {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const HELP: &str = "expected ok, halt, exit:N or fault:KIND[@GPA]";
        if s == "ok" {
            return Ok(Self::Ok);
        }
        if s == "halt" {
            return Ok(Self::Halt);
        }
        if let Some(code) = s.strip_prefix("exit:") {
            return code.parse().map(Self::Exit).map_err(|_| HELP);
        }
        let fault = s.strip_prefix("fault:").ok_or(HELP)?;
        let (kind, gpa) = match fault.split_once('@') {
            Some((kind, gpa)) => (
                kind,
                Some(crate::settings::parse_size(gpa).ok_or("bad fault address")?),
            ),
            None => (fault, None),
        };
        let kind = FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == kind)
            .ok_or("unknown fault kind")?;
        Ok(Self::Fault { kind, gpa })
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => write!(f, "ok"),
            Self::Exit(code) => write!(f, "exit:{code}"),
            Self::Halt => write!(f, "halt"),
            Self::Fault {
                kind,
                gpa: Some(gpa),
            } => write!(f, "fault:{}@{gpa:#x}", kind.name()),
            Self::Fault { kind, gpa: None } => write!(f, "fault:{}", kind.name()),
        }
    }
}

impl Expectation {
    /// Whether `end` is the expected outcome.
    pub fn matches(&self, end: &GuestEnd) -> bool {
        match (self, end) {
            (Self::Ok, GuestEnd::Exited(0)) => true,
            (Self::Exit(want), GuestEnd::Exited(got)) => want == got,
            (Self::Halt, GuestEnd::Halted) => true,
            (
                Self::Fault { kind, gpa },
                GuestEnd::Fault {
                    kind: got, gpa: at, ..
                },
            ) => kind == got && (gpa.is_none() || gpa == at),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn fault(kind: FaultKind, gpa: Option<u64>) -> GuestEnd {
        GuestEnd::Fault {
            kind,
            gpa,
            detail: "x".to_string(),
        }
    }

    #[test]
    fn parse_and_print_round_trip() {
        for s in [
            "ok",
            "halt",
            "exit:3",
            "fault:write@0x400000",
            "fault:quota",
        ] {
            let e: Expectation = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
        assert!("fault:bogus".parse::<Expectation>().is_err());
        assert!("exit:x".parse::<Expectation>().is_err());
        assert!("fine".parse::<Expectation>().is_err());
        assert!("fault:write@zz".parse::<Expectation>().is_err());
    }

    #[test]
    fn matching() {
        assert!(Expectation::Ok.matches(&GuestEnd::Exited(0)));
        assert!(!Expectation::Ok.matches(&GuestEnd::Exited(1)));
        assert!(!Expectation::Ok.matches(&fault(FaultKind::Write, None)));
        assert!(Expectation::Exit(7).matches(&GuestEnd::Exited(7)));
        assert!(Expectation::Halt.matches(&GuestEnd::Halted));
        let w = Expectation::Fault {
            kind: FaultKind::Write,
            gpa: Some(0x5000),
        };
        assert!(w.matches(&fault(FaultKind::Write, Some(0x5000))));
        assert!(!w.matches(&fault(FaultKind::Write, Some(0x6000))));
        assert!(!w.matches(&fault(FaultKind::Exec, Some(0x5000))));
        assert!(!w.matches(&GuestEnd::Exited(0)));
        let any = Expectation::Fault {
            kind: FaultKind::Quota,
            gpa: None,
        };
        assert!(any.matches(&fault(FaultKind::Quota, Some(1))));
        assert!(!any.matches(&GuestEnd::ExitLimit(5)));
        // A guest that could not even be created did not hit its quota while running.
        let never = GuestEnd::NotStarted {
            kind: FaultKind::Quota,
            detail: "x".to_string(),
        };
        assert!(!any.matches(&never));
        assert!(!Expectation::Ok.matches(&never));
    }

    #[test]
    fn end_reasons_print_kind_and_address() {
        assert_eq!(
            fault(FaultKind::Exec, Some(0x3000)).to_string(),
            "fault:exec@0x3000: x"
        );
        assert_eq!(GuestEnd::Exited(0).to_string(), "exit code 0");
        assert_eq!(
            GuestEnd::NotStarted {
                kind: FaultKind::Quota,
                detail: "no frames".to_string()
            }
            .to_string(),
            "never started (quota): no frames"
        );
    }
}
