//! `cargo xtask`: the project's build, run and test driver (std only).
//!
//! ```text
//! cargo xtask build                      build the hypervisor and guest images
//! cargo xtask linux-files                fetch Debian's kernel, build the initramfs
//! cargo xtask run [GUEST [ARGS]]...      boot guests (default: QEMU, the demo set)
//! cargo xtask boot-test [TEST]...        every boot test (or the named ones)
//! cargo xtask test                       host tests, then boot tests
//! cargo xtask bench [--quick] [--check] [--raw] [W1..W7]  benchmarks against the anchor crates
//! options: --emulator qemu|kvm|bochs|bochs-skylake|bochs-sandybridge|all|auto
//!          --log LEVEL   --timeout SECS   --jobs N (boot tests in parallel, default 2)
//!          --gdb (run, QEMU: wait for gdb on :1234)
//! ```
//! `boot-test` and `test` use every emulator unless told otherwise: QEMU (SVM with
//! nested paging), Bochs on two CPU models (VMX with EPT; `bochs` means both), and
//! KVM where the host really offers nested VMX/SVM (reported as skipped otherwise).
//! A guest argument of `run` is one word (`hello`) or a quoted spec with settings
//! (`"ondemand mem=64M"`).

mod bochs;
mod build;
mod checks;
mod deps;
mod emulator;
mod iso;
mod kvm;
mod linux;
mod scenarios;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use build::Paths;
use emulator::{Boot, Emulator, RunEnd, Serial};
use guest_images::abi::RunStatus;

/// Parsed command-line options.
struct Options {
    emulators: Vec<Emulator>,
    log: String,
    timeout: Duration,
    gdb: bool,
    jobs: usize,
    rest: Vec<String>,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        emulators: Vec::new(),
        log: "info".into(),
        timeout: Duration::from_secs(60),
        gdb: false,
        jobs: 2,
        rest: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or(format!("{key} needs a value"))
        };
        match key {
            "--emulator" => o.emulators = Emulator::parse_list(&value()?)?,
            "--log" => o.log = value()?,
            "--timeout" => {
                let v = value()?;
                let secs: u64 = v.parse().map_err(|_| format!("bad --timeout `{v}`"))?;
                o.timeout = Duration::from_secs(secs);
            }
            "--gdb" => o.gdb = true,
            "--jobs" => {
                let v = value()?;
                o.jobs = v.parse().map_err(|_| format!("bad --jobs `{v}`"))?;
            }
            _ if key.starts_with("--") => return Err(format!("unknown option {key}")),
            _ => o.rest.push(arg.clone()),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    };
    if command == "bench" {
        // The benchmark binary parses its own arguments (`--quick`, workload names).
        return match bench(&Paths::new(), rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut options = match parse_options(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    if options.emulators.is_empty() {
        // `run` boots QEMU; the tests use every emulator (KVM skipped where absent).
        options.emulators = match command.as_str() {
            "boot-test" | "test" => Emulator::parse_list("all").unwrap_or_default(),
            _ => vec![Emulator::Qemu],
        };
    }
    let paths = Paths::new();
    let result = match command.as_str() {
        "build" => build::build_all(&paths),
        "linux-files" => linux::prepare(&paths, linux::WORKLOAD_MIB).map(|f| {
            println!(
                "kernel {}\ninitrd {}",
                f.kernel.display(),
                f.initrd.display()
            );
        }),
        "run" => build::build_all(&paths).and_then(|()| run(&paths, &options)),
        "boot-test" => build::build_all(&paths).and_then(|()| boot_tests(&paths, &options)),
        "test" => host_tests(&paths)
            .and_then(|()| build::build_all(&paths))
            .and_then(|()| boot_tests(&paths, &options)),
        _ => Err(format!("unknown command `{command}`\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> &'static str {
    "usage: cargo xtask <build|linux-files|run|boot-test|test|bench> \
     [--emulator qemu|kvm|bochs|bochs-skylake|bochs-sandybridge|all|auto] \
     [--log LEVEL] [--timeout SECS] [--jobs N] [--gdb] [GUESTS or TESTS...]"
}

/// Runs the benchmarks side by side with the anchor crates, every contender built with
/// the `bench-fair` profile (fat LTO, one codegen unit, `panic = "abort"`); `args`
/// (`--quick`, `--check`, workload names such as `W1`) go to the benchmark binary.
/// glibc's `malloc` is told to ask for transparent huge pages on the memory it maps
/// (`glibc.malloc.hugetlb=1`), so the arenas every contender works in sit on 2 MiB
/// pages (bench/README.md, "Huge pages"); the benchmark prints how much of them did.
fn bench(paths: &Paths, args: &[String]) -> Result<(), String> {
    let tunables = match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if t.contains("glibc.malloc.hugetlb") => t,
        Ok(t) if !t.is_empty() => format!("{t}:glibc.malloc.hugetlb=1"),
        _ => "glibc.malloc.hugetlb=1".to_string(),
    };
    build::run(
        build::cargo(paths)
            .args(["run", "--profile", "bench-fair", "--package", "bench", "--"])
            .args(args)
            .env("GLIBC_TUNABLES", tunables),
    )
}

/// Runs every host test of the workspace: the host crates with their doc tests, then
/// the libraries of the bare-metal crates (their binaries cannot run on the host).
fn host_tests(paths: &Paths) -> Result<(), String> {
    for args in [
        &[
            "test",
            "--workspace",
            "--exclude",
            "hv",
            "--exclude",
            "guest-images",
        ][..],
        &["test", "-p", "hv", "-p", "guest-images", "--lib"][..],
    ] {
        build::run(build::cargo(paths).args(args))?;
    }
    Ok(())
}

/// Turns `NAME [settings]` into boot modules: an image path and settings (defaults
/// first). `linux [settings] [-- kernel args]` is Debian's kernel plus our initramfs (a
/// `data` module it names); kernel args are appended to the default command line.
fn guest_modules(paths: &Paths, spec: &str) -> Result<Vec<(std::path::PathBuf, String)>, String> {
    let mut words = spec.split_whitespace();
    let name = words.next().ok_or("empty guest spec")?;
    if name == "linux-truncated" {
        // Debian's kernel cut after 64 KiB: the hypervisor must refuse it.
        let files = linux::prepare(paths, linux::WORKLOAD_MIB)?;
        let kernel = std::fs::read(&files.kernel).map_err(|e| e.to_string())?;
        let cut = files.initrd.with_file_name("vmlinuz-truncated");
        std::fs::write(&cut, &kernel[..kernel.len().min(64 << 10)]).map_err(|e| e.to_string())?;
        let initrd_name = files
            .initrd
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("bad initrd file name")?
            .to_string();
        let args = format!("linux name=linux mem=256M initrd={initrd_name} -- quiet");
        return Ok(vec![(cut, args), (files.initrd, "data".into())]);
    }
    if name == "linux" {
        let rest: Vec<&str> = words.collect();
        let (extra, kernel_args) = match rest.iter().position(|w| *w == "--") {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&rest[..], &[][..]),
        };
        let files = linux::prepare(paths, linux::WORKLOAD_MIB)?;
        let initrd_name = files
            .initrd
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("bad initrd file name")?
            .to_string();
        let args = format!(
            "linux name=linux mem=256M initrd={initrd_name} expect=halt {} -- {} {}",
            extra.join(" "),
            linux::KERNEL_CMDLINE,
            kernel_args.join(" ")
        );
        return Ok(vec![(files.kernel, args), (files.initrd, "data".into())]);
    }
    let image = paths.guest_image(name);
    if !image.exists() {
        let known = build::guest_names(paths)?.join(", ");
        return Err(format!("no guest image `{name}` (known: {known})"));
    }
    let extra: Vec<&str> = words.collect();
    let args = format!("{} {}", scenarios::default_args(name), extra.join(" "));
    Ok(vec![(image, args.trim().to_string())])
}

fn run(paths: &Paths, o: &Options) -> Result<(), String> {
    let emulator = o.emulators[0];
    emulator.available()?;
    let specs: Vec<String> = if o.rest.is_empty() {
        scenarios::DEMO.iter().map(|s| s.to_string()).collect()
    } else {
        o.rest.clone()
    };
    let modules = specs
        .iter()
        .map(|s| guest_modules(paths, s))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    // A Linux guest runs for minutes under an emulator: raise the CPU budget.
    let budget = if specs
        .iter()
        .any(|s| s.split_whitespace().next() == Some("linux"))
    {
        " cpu-budget=100000"
    } else {
        ""
    };
    let boot = Boot {
        cmdline: format!("log={}{budget}", o.log),
        modules,
    };
    let extra: Vec<String> = if o.gdb {
        eprintln!(
            "xtask: QEMU waits for gdb: gdb {} -ex 'target remote :1234'",
            paths.kernel_elf().display()
        );
        vec!["-s".into(), "-S".into()]
    } else {
        Vec::new()
    };
    let timeout = if o.gdb {
        Duration::from_secs(24 * 3600)
    } else {
        o.timeout
    };
    let end = emulator::run(emulator, paths, &boot, Serial::Stdio, timeout, &extra)?;
    match end {
        RunEnd::Exited(code) if code == RunStatus::AllPassed.qemu_exit_status() => Ok(()),
        RunEnd::Exited(code) => Err(match RunStatus::from_qemu_exit_status(code) {
            Some(s) => format!("the hypervisor ended with `{}` (status {code})", s.name()),
            None => format!("QEMU exited with status {code}"),
        }),
        RunEnd::TimedOut => Err(format!("timed out after {:?}", timeout)),
        RunEnd::Killed => Err("QEMU was killed".into()),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The least time a boot test with a Linux guest gets (Bochs on a loaded machine).
const LINUX_TIMEOUT_SECS: u64 = 3600;

/// Boots one test and decides: `Ok((passed, report line(s)))`.
fn boot_test(
    paths: &Paths,
    emulator: Emulator,
    test: &scenarios::BootTest,
    timeout: Duration,
) -> Result<(bool, String), String> {
    let modules = test
        .guests
        .iter()
        .map(|g| guest_modules(paths, g))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let boot = Boot {
        cmdline: test.cmdline.to_string(),
        modules,
    };
    let logs = paths.root.join("target/boot-tests");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let log = logs.join(format!("{}-{}.log", emulator.name(), test.name));
    let _ = std::fs::remove_file(&log);
    let start = Instant::now();
    // A Linux boot takes minutes under an emulator (and longer beside other boots).
    let timeout = if test.guests.iter().any(|g| g.starts_with("linux")) {
        timeout.max(Duration::from_secs(LINUX_TIMEOUT_SECS))
    } else {
        timeout
    };
    let end = emulator::run(emulator, paths, &boot, Serial::File(&log), timeout, &[])?;
    let elapsed = start.elapsed();
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let want = test.status.qemu_exit_status();
    let status_ok = end == RunEnd::Exited(want);
    let marker_ok = output.lines().any(|l| l.trim_end() == test.marker);
    // The back-end line proves which virtualization (and, under Bochs, which EPT
    // capabilities) ran the guests; a refused configuration or a host-fault self-test
    // ends before a back-end is chosen.
    let backend = emulator.backend_line().filter(|_| {
        matches!(
            test.status,
            RunStatus::AllPassed | RunStatus::GuestFailed | RunStatus::Leak
        )
    });
    let mut problems = Vec::new();
    if !marker_ok {
        problems.push(format!("marker `{}` missing", test.marker));
    }
    if let Some(b) = backend.filter(|b| !output.lines().any(|l| l.starts_with(b))) {
        problems.push(format!("back-end line `{b}` missing"));
    }
    // Every stage-2 report ends with the validator's verdict on that guest's table
    // (`validator: OK`), and what guests claim about their memory is checked against
    // their reports.
    if output.contains("validator: FAILED") {
        problems.push("a stage-2 validator FAILED".to_string());
    }
    problems.extend(checks::report_problems(&output, test.reports));
    // The details the test names (under the back-end that ran it).
    let vmx = output.lines().any(|l| l.starts_with("[hv] Intel VMX"));
    let vendor_lines = if vmx {
        test.vendor_lines.1
    } else {
        test.vendor_lines.0
    };
    for want in test.lines.iter().chain(vendor_lines) {
        if !output.lines().any(|l| l.contains(want)) {
            problems.push(format!("no line with `{want}`"));
        }
    }
    let label = format!("[{}] {}", emulator.name(), test.name);
    Ok(if status_ok && problems.is_empty() {
        (
            true,
            format!("boot-test {label}: PASS ({:.2}s)", elapsed.as_secs_f64()),
        )
    } else {
        let report = format!(
            "boot-test {label}: FAIL (ended {end:?}, wanted status {want}; {})\n\
             --- last lines of {} ---\n{}\n---",
            problems.join("; "),
            log.display(),
            tail(&output, 25)
        );
        (false, report)
    })
}

/// Runs the selected boot tests on every selected emulator, `--jobs` at a time.
fn boot_tests(paths: &Paths, o: &Options) -> Result<(), String> {
    let tests: Vec<&scenarios::BootTest> = if o.rest.is_empty() {
        scenarios::BOOT_TESTS.iter().collect()
    } else {
        o.rest
            .iter()
            .map(|n| {
                scenarios::BOOT_TESTS
                    .iter()
                    .find(|t| t.name == n)
                    .ok_or(format!("no boot test `{n}`"))
            })
            .collect::<Result<_, _>>()?
    };
    let mut jobs = Vec::new();
    for &emulator in &o.emulators {
        if let Err(reason) = emulator.available() {
            // KVM needs hardware this machine may lack: that is a skip, with the
            // reason. A missing QEMU or Bochs is an error (deps says what to install).
            if emulator == Emulator::Kvm {
                println!("boot-test [{}]: SKIPPED ({reason})", emulator.name());
                continue;
            }
            return Err(reason);
        }
        for test in &tests {
            if matches!(emulator, Emulator::Bochs(_))
                && o.rest.is_empty()
                && scenarios::NOT_UNDER_BOCHS.contains(&test.name)
            {
                println!(
                    "boot-test [{}] {}: NOT RUN ({})",
                    emulator.name(),
                    test.name,
                    scenarios::LINUX_UNDER_BOCHS
                );
                continue;
            }
            jobs.push((emulator, *test));
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..o.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(emulator, test)) = jobs.get(i) else {
                        break;
                    };
                    let result = boot_test(paths, emulator, test, o.timeout);
                    let label = format!("[{}] {}", emulator.name(), test.name);
                    let outcome = match result {
                        Ok((pass, report)) => {
                            println!("{report}");
                            (pass, label)
                        }
                        Err(e) => {
                            println!("boot-test {label}: ERROR ({e})");
                            (false, label)
                        }
                    };
                    results.lock().expect("no worker panics").push(outcome);
                }
            });
        }
    });
    let results = results.into_inner().expect("no worker panics");
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.0)
        .map(|r| r.1.clone())
        .collect();
    if failed.is_empty() {
        println!("boot-test: all {} passed", results.len());
        Ok(())
    } else {
        Err(format!(
            "{} boot test(s) failed: {}",
            failed.len(),
            failed.join(", ")
        ))
    }
}
