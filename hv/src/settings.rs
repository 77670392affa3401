//! Parsing the hypervisor command line and each guest's module command line.
//!
//! Hypervisor (the multiboot command line): `log=error|warn|info|debug|trace`,
//! `max-exits=N` (exits per guest before it is stopped), `cpu-budget=N` (100 Hz timer
//! ticks a guest may run before it is stopped), `selftest=exception|panic|leak`
//! (a deliberate host failure for the boot tests). The first word may be the kernel's
//! file name and is ignored when it has no `=`.
//!
//! Guest (one boot module each, e.g. QEMU `-initrd "hello.bin name=hello mem=8M"`):
//!
//! | word | meaning |
//! |---|---|
//! | first word | the image file name (the default guest name is its stem) |
//! | `name=NAME` | guest name in messages |
//! | `mem=SIZE` | RAM at GPA 0 (default 4M, at least 2M, at most 1G) |
//! | `populate` / `ondemand` | RAM backed up front, or on first touch (default) |
//! | `quota=SIZE` | most memory the guest and its clones may hold (RAM and stage-2 tables; default: see [`default_quota_frames`]) |
//! | `area=GPA+SIZE:FLAGS` | extra RAM area; FLAGS from `r w x p` (p = populate) |
//! | `ro=GPA+SIZE` | same as `area=GPA+SIZE:r` |
//! | `nx=GPA+SIZE` | same as `area=GPA+SIZE:rw` |
//! | `mmio=GPA+SIZE` | a read-write uncached linear window onto a host buffer |
//! | `window=KEY@GPA+SIZE:r` or `:rw` | a window shared with every guest naming the same KEY (a number): the same frames, these rights here (see `sharing`) |
//! | `zeropage` | read faults on never-written RAM map one shared page of zeros |
//! | `expect=OUTCOME` | `ok` (default), `exit:N`, `halt`, `fault:KIND[@GPA]` |
//!
//! Sizes and addresses: decimal or `0x` hex, optional `K`, `M`, `G` suffix.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::outcome::Expectation;

/// Log verbosity chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Normal progress (default).
    Info,
    /// Every stage-2 fault and hypercall.
    Debug,
    /// Every exit.
    Trace,
}

/// A deliberate host failure, to prove that the boot tests catch each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    /// Take a host exception (#UD) once the host is set up.
    Exception,
    /// Panic once the host is set up.
    Panic,
    /// Keep one frame past the guests' teardown.
    Leak,
}

/// Settings from the hypervisor command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HvSettings {
    /// Log verbosity.
    pub log: LogLevel,
    /// Exits a guest may take before it is stopped (a guard against runaway guests).
    pub max_exits: u64,
    /// A deliberate failure (`selftest=exception|panic|leak`), for the boot tests.
    pub selftest: Option<SelfTest>,
    /// Timer ticks (100 Hz) a guest may run before it is stopped (`cpu-budget=N`).
    pub cpu_budget: u64,
}

impl Default for HvSettings {
    fn default() -> Self {
        Self {
            log: LogLevel::Info,
            max_exits: 50_000_000,
            selftest: None,
            cpu_budget: 3000,
        }
    }
}

/// A refused setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsError {
    /// The key is not known.
    UnknownKey(String),
    /// The value of `key` is malformed; `reason` says why.
    BadValue {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two areas (or an area and RAM) overlap.
    Overlap {
        /// First range, as `start..end`.
        first: (u64, u64),
        /// Second range.
        second: (u64, u64),
    },
    /// The module command line is empty.
    Empty,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKey(k) => write!(f, "unknown setting `{k}`"),
            Self::BadValue { key, value, reason } => {
                write!(f, "bad value `{value}` for `{key}`: {reason}")
            }
            Self::Overlap { first, second } => write!(
                f,
                "areas {:#x}..{:#x} and {:#x}..{:#x} overlap",
                first.0, first.1, second.0, second.1
            ),
            Self::Empty => write!(f, "empty module command line"),
        }
    }
}

/// Parses a size or address: decimal or `0x` hex, optional `K`/`M`/`G` suffix.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let value = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    value.checked_mul(1u64 << shift)
}

fn bad(key: &str, value: &str, reason: &'static str) -> SettingsError {
    SettingsError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    }
}

/// Parses the hypervisor command line.
pub fn parse_hv_cmdline(cmdline: &str) -> Result<HvSettings, SettingsError> {
    let mut settings = HvSettings::default();
    for (i, word) in cmdline.split_whitespace().enumerate() {
        let Some((key, value)) = word.split_once('=') else {
            if i == 0 {
                continue;
            }
            return Err(SettingsError::UnknownKey(word.to_string()));
        };
        match key {
            "log" => {
                settings.log = match value {
                    "error" => LogLevel::Error,
                    "warn" => LogLevel::Warn,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    "trace" => LogLevel::Trace,
                    _ => return Err(bad(key, value, "expected error|warn|info|debug|trace")),
                }
            }
            "max-exits" => {
                settings.max_exits = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(key, value, "expected a positive number"))?;
            }
            "cpu-budget" => {
                settings.cpu_budget = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad(key, value, "expected a positive number of ticks"))?;
            }
            "selftest" => {
                settings.selftest = Some(match value {
                    "exception" => SelfTest::Exception,
                    "panic" => SelfTest::Panic,
                    "leak" => SelfTest::Leak,
                    _ => return Err(bad(key, value, "expected exception|panic|leak")),
                })
            }
            _ => return Err(SettingsError::UnknownKey(key.to_string())),
        }
    }
    Ok(settings)
}

/// Smallest guest RAM.
pub const MIN_MEM: u64 = 2 << 20;
/// Largest guest RAM.
pub const MAX_MEM: u64 = 1 << 30;
/// Default guest RAM.
pub const DEFAULT_MEM: u64 = 4 << 20;
/// Areas must end below this GPA (the guest's identity page tables cover 4 GiB).
pub const GPA_LIMIT: u64 = 4 << 30;

/// What backs an extra area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AreaKind {
    /// Guest RAM with the given rights.
    Ram {
        /// Readable.
        read: bool,
        /// Writable.
        write: bool,
        /// Executable.
        execute: bool,
        /// Backed up front rather than on first touch.
        populate: bool,
    },
    /// A read-write, uncached linear window onto a host buffer.
    Mmio,
    /// A shared window: the frames of window `key`, readable, writable if `write`.
    Window {
        /// Guests naming the same key share the frames.
        key: u32,
        /// Writable in this guest.
        write: bool,
    },
}

/// An extra area of guest-physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaSpec {
    /// First GPA (4 KiB aligned).
    pub gpa: u64,
    /// Size in bytes (4 KiB multiple, not zero).
    pub size: u64,
    /// What backs it.
    pub kind: AreaKind,
}

/// Everything a module command line says about one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSettings {
    /// The image file name.
    pub file: String,
    /// The guest's name in messages.
    pub name: String,
    /// RAM size at GPA 0.
    pub mem: u64,
    /// RAM backed up front.
    pub populate: bool,
    /// Read faults on never-written RAM map the shared zero page.
    pub zero_page: bool,
    /// Most bytes the guest may hold (RAM and tables), if limited.
    pub quota: Option<u64>,
    /// Extra areas, sorted by GPA, not overlapping RAM or each other.
    pub areas: Vec<AreaSpec>,
    /// The outcome that counts as a pass.
    pub expect: Expectation,
}

fn parse_range(key: &str, value: &str) -> Result<(u64, u64), SettingsError> {
    let (gpa, size) = value
        .split_once('+')
        .ok_or_else(|| bad(key, value, "expected GPA+SIZE"))?;
    let gpa = parse_size(gpa).ok_or_else(|| bad(key, value, "bad address"))?;
    let size = parse_size(size).ok_or_else(|| bad(key, value, "bad size"))?;
    if !gpa.is_multiple_of(4096) || !size.is_multiple_of(4096) || size == 0 {
        return Err(bad(
            key,
            value,
            "address and size must be non-zero 4 KiB multiples",
        ));
    }
    match gpa.checked_add(size) {
        Some(end) if end <= GPA_LIMIT => Ok((gpa, size)),
        _ => Err(bad(key, value, "area must end below 4 GiB")),
    }
}

fn ram_kind(key: &str, value: &str, flags: &str) -> Result<AreaKind, SettingsError> {
    if flags.is_empty() || flags.chars().any(|c| !"rwxp".contains(c)) {
        return Err(bad(key, value, "flags are letters from `rwxp`"));
    }
    Ok(AreaKind::Ram {
        read: flags.contains('r'),
        write: flags.contains('w'),
        execute: flags.contains('x'),
        populate: flags.contains('p'),
    })
}

/// The quota, in 4 KiB frames, of a guest whose command line sets none: its RAM (at 0
/// and in `area=` areas, in frames) plus one table frame per 256 of them and 16 more
/// (the stage-2 tables of RAM mapped with 4 KiB leaves, scattered areas included),
/// but never more than half of the host's frames, so that a guest without `quota=`
/// cannot take what the host needs to serve the others. Copy-on-write clones share
/// their parent's quota (see `ept::space::Limits`).
pub fn default_quota_frames(settings: &GuestSettings, host_frames: usize) -> usize {
    let area_bytes: u64 = settings
        .areas
        .iter()
        .filter(|a| matches!(a.kind, AreaKind::Ram { .. }))
        .map(|a| a.size)
        .sum();
    let ram = usize::try_from((settings.mem + area_bytes) / 4096).unwrap_or(usize::MAX);
    let tables = ram / 256 + 16;
    ram.saturating_add(tables).min(host_frames / 2)
}

/// Parses one module command line.
pub fn parse_guest_cmdline(cmdline: &str) -> Result<GuestSettings, SettingsError> {
    let mut words = cmdline.split_whitespace();
    let file = words.next().ok_or(SettingsError::Empty)?;
    let stem = file.rsplit('/').next().unwrap_or(file);
    let stem = stem.split_once('.').map_or(stem, |(s, _)| s);
    let mut settings = GuestSettings {
        file: file.to_string(),
        name: stem.to_string(),
        mem: DEFAULT_MEM,
        populate: false,
        zero_page: false,
        quota: None,
        areas: Vec::new(),
        expect: Expectation::Ok,
    };
    for word in words {
        match word {
            "populate" => {
                settings.populate = true;
                continue;
            }
            "ondemand" => {
                settings.populate = false;
                continue;
            }
            "zeropage" => {
                settings.zero_page = true;
                continue;
            }
            _ => {}
        }
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| SettingsError::UnknownKey(word.to_string()))?;
        match key {
            "name" => {
                if value.is_empty() || value.len() > 32 || !value.is_ascii() {
                    return Err(bad(key, value, "1 to 32 ASCII characters"));
                }
                settings.name = value.to_string();
            }
            "mem" => {
                let mem = parse_size(value).ok_or_else(|| bad(key, value, "bad size"))?;
                if !(MIN_MEM..=MAX_MEM).contains(&mem) || !mem.is_multiple_of(2 << 20) {
                    return Err(bad(key, value, "a multiple of 2M between 2M and 1G"));
                }
                settings.mem = mem;
            }
            "quota" => {
                let quota = parse_size(value).ok_or_else(|| bad(key, value, "bad size"))?;
                if quota < 4096 {
                    return Err(bad(key, value, "at least 4K"));
                }
                settings.quota = Some(quota);
            }
            "area" => {
                let (range, flags) = value
                    .split_once(':')
                    .ok_or_else(|| bad(key, value, "expected GPA+SIZE:FLAGS"))?;
                let (gpa, size) = parse_range(key, range)?;
                let kind = ram_kind(key, value, flags)?;
                settings.areas.push(AreaSpec { gpa, size, kind });
            }
            "ro" | "nx" | "mmio" => {
                let (gpa, size) = parse_range(key, value)?;
                let kind = match key {
                    "ro" => ram_kind(key, value, "r")?,
                    "nx" => ram_kind(key, value, "rw")?,
                    _ => AreaKind::Mmio,
                };
                settings.areas.push(AreaSpec { gpa, size, kind });
            }
            "window" => {
                let syntax = || bad(key, value, "expected KEY@GPA+SIZE:r|rw");
                let (key_text, rest) = value.split_once('@').ok_or_else(syntax)?;
                let (range, flags) = rest.split_once(':').ok_or_else(syntax)?;
                let window_key = key_text
                    .parse()
                    .map_err(|_| bad(key, value, "the key is a number"))?;
                let write = match flags {
                    "r" => false,
                    "rw" => true,
                    _ => return Err(bad(key, value, "rights are `r` or `rw`")),
                };
                let (gpa, size) = parse_range(key, range)?;
                let kind = AreaKind::Window {
                    key: window_key,
                    write,
                };
                settings.areas.push(AreaSpec { gpa, size, kind });
            }
            "expect" => {
                settings.expect = value.parse().map_err(|reason| bad(key, value, reason))?;
            }
            _ => return Err(SettingsError::UnknownKey(key.to_string())),
        }
    }
    settings.areas.sort_by_key(|a| a.gpa);
    let mut previous = (0, settings.mem);
    for area in &settings.areas {
        let range = (area.gpa, area.gpa + area.size);
        if range.0 < previous.1 {
            return Err(SettingsError::Overlap {
                first: previous,
                second: range,
            });
        }
        previous = range;
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{Expectation, FaultKind};

    #[test]
    fn windows_and_the_zero_page() {
        let g =
            parse_guest_cmdline("a.bin zeropage window=3@0x4000000+4K:rw window=4@0x4001000+8K:r")
                .unwrap();
        assert!(g.zero_page);
        assert_eq!(
            g.areas[0].kind,
            AreaKind::Window {
                key: 3,
                write: true
            }
        );
        assert_eq!(
            (g.areas[1].gpa, g.areas[1].size, g.areas[1].kind),
            (
                0x400_1000,
                0x2000,
                AreaKind::Window {
                    key: 4,
                    write: false
                }
            )
        );
        for bad in [
            "a.bin window=0x4000000+4K:rw",
            "a.bin window=x@0x4000000+4K:rw",
            "a.bin window=1@0x4000000+4K:rx",
            "a.bin window=1@0x4000000+4K",
            "a.bin window=1@0x4000001+4K:r",
        ] {
            assert!(parse_guest_cmdline(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0x1000"), Some(4096));
        assert_eq!(parse_size("8M"), Some(8 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("0xZZ"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
        assert_eq!(parse_size("17179869184G"), None);
    }

    #[test]
    fn hv_cmdline() {
        assert_eq!(parse_hv_cmdline("").unwrap(), HvSettings::default());
        let s = parse_hv_cmdline("/boot/hv.bin log=debug max-exits=10").unwrap();
        assert_eq!(s.log, LogLevel::Debug);
        assert_eq!(s.max_exits, 10);
        assert!(matches!(
            parse_hv_cmdline("log=loud"),
            Err(SettingsError::BadValue { .. })
        ));
        assert_eq!(
            parse_hv_cmdline("x log=info bogus"),
            Err(SettingsError::UnknownKey("bogus".into()))
        );
        assert!(parse_hv_cmdline("max-exits=0").is_err());
        assert_eq!(
            parse_hv_cmdline("selftest=leak").unwrap().selftest,
            Some(SelfTest::Leak)
        );
        assert!(parse_hv_cmdline("selftest=boom").is_err());
        assert_eq!(parse_hv_cmdline("cpu-budget=7").unwrap().cpu_budget, 7);
        assert!(parse_hv_cmdline("cpu-budget=0").is_err());
    }

    #[test]
    fn guest_defaults_and_full_line() {
        let g = parse_guest_cmdline("/tmp/x/hello.bin").unwrap();
        assert_eq!(g.name, "hello");
        assert_eq!(g.mem, DEFAULT_MEM);
        assert!(!g.populate);
        assert_eq!(g.expect, Expectation::Ok);
        let g = parse_guest_cmdline(
            "ro.bin name=ro mem=8M populate quota=1M ro=0x1000000+0x1000 \
             nx=0x2000000+8K mmio=0x3000000+64K area=0x4000000+2M:rwxp \
             expect=fault:write@0x1000000",
        )
        .unwrap();
        assert_eq!(g.name, "ro");
        assert_eq!(g.mem, 8 << 20);
        assert!(g.populate);
        assert_eq!(g.quota, Some(1 << 20));
        assert_eq!(g.areas.len(), 4);
        assert_eq!(
            g.areas[0].kind,
            AreaKind::Ram {
                read: true,
                write: false,
                execute: false,
                populate: false
            }
        );
        assert_eq!(g.areas[2].kind, AreaKind::Mmio);
        assert_eq!(
            g.areas[3].kind,
            AreaKind::Ram {
                read: true,
                write: true,
                execute: true,
                populate: true
            }
        );
        assert_eq!(
            g.expect,
            Expectation::Fault {
                kind: FaultKind::Write,
                gpa: Some(0x100_0000)
            }
        );
    }

    #[test]
    fn guest_errors() {
        assert_eq!(parse_guest_cmdline("  "), Err(SettingsError::Empty));
        assert!(matches!(
            parse_guest_cmdline("a.bin mem=3M"),
            Err(SettingsError::BadValue { .. })
        ));
        assert!(matches!(
            parse_guest_cmdline("a.bin mem=4G"),
            Err(SettingsError::BadValue { .. })
        ));
        assert!(matches!(
            parse_guest_cmdline("a.bin ro=0x1001+4K"),
            Err(SettingsError::BadValue { .. })
        ));
        assert!(matches!(
            parse_guest_cmdline("a.bin ro=0xFFFFF000+8K"),
            Err(SettingsError::BadValue { .. })
        ));
        assert!(matches!(
            parse_guest_cmdline("a.bin area=0x1000000+4K:rwz"),
            Err(SettingsError::BadValue { .. })
        ));
        assert_eq!(
            parse_guest_cmdline("a.bin colour=blue"),
            Err(SettingsError::UnknownKey("colour".into()))
        );
        assert_eq!(
            parse_guest_cmdline("a.bin mem=4M ro=0x200000+4K"),
            Err(SettingsError::Overlap {
                first: (0, 4 << 20),
                second: (0x200000, 0x201000)
            })
        );
        assert!(matches!(
            parse_guest_cmdline("a.bin ro=0x1000000+8K nx=0x1001000+4K"),
            Err(SettingsError::Overlap { .. })
        ));
        assert!(matches!(
            parse_guest_cmdline("a.bin expect=maybe"),
            Err(SettingsError::BadValue { .. })
        ));
    }
}
