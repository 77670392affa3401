//! Running the hypervisor in an emulator, with a timeout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::build::Paths;

/// Which machine runs the hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulator {
    /// QEMU with TCG: AMD SVM with nested paging, emulated.
    Qemu,
    /// QEMU with KVM, where the host really offers VMX or SVM to guests.
    Kvm,
    /// Bochs: Intel VMX with EPT.
    Bochs,
}

impl Emulator {
    /// Parses `qemu|kvm|bochs|all` into the emulators to use.
    pub fn parse_list(s: &str) -> Result<Vec<Emulator>, String> {
        match s {
            "qemu" => Ok(vec![Self::Qemu]),
            "kvm" => Ok(vec![Self::Kvm]),
            "bochs" => Ok(vec![Self::Bochs]),
            "all" => Ok(vec![Self::Qemu, Self::Bochs, Self::Kvm]),
            "auto" => Ok(vec![Self::auto()]),
            _ => Err(format!("unknown emulator `{s}` (qemu|kvm|bochs|all|auto)")),
        }
    }

    /// KVM when the host really offers a virtualization extension the hypervisor
    /// drives (today SVM: `kvm_usable` and an `svm` CPU flag), QEMU's TCG otherwise.
    pub fn auto() -> Self {
        let svm = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "svm"));
        match kvm_usable() {
            Ok(()) if svm => Self::Kvm,
            Ok(()) => {
                eprintln!(
                    "xtask: KVM offers VMX, which the hypervisor does not drive yet: using TCG"
                );
                Self::Qemu
            }
            Err(reason) => {
                eprintln!("xtask: not using KVM ({reason}): using QEMU's TCG");
                Self::Qemu
            }
        }
    }

    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Qemu => "qemu",
            Self::Kvm => "kvm",
            Self::Bochs => "bochs",
        }
    }

    /// `Err(reason)` when this emulator cannot run here.
    pub fn available(self) -> Result<(), String> {
        match self {
            Self::Qemu => crate::deps::ensure(crate::deps::QEMU_TOOLS),
            Self::Kvm => kvm_usable(),
            Self::Bochs => Err("the Bochs (VMX/EPT) path is not built yet".into()),
        }
    }
}

/// Whether `/dev/kvm` offers real hardware virtualization to a guest hypervisor:
/// the host CPU must show `vmx` or `svm`, `/dev/kvm` must exist, and it must not be
/// the paravirtual `kvm_pvm` (which cannot run SSE or VMX guests).
pub fn kvm_usable() -> Result<(), String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    if !flags.split_whitespace().any(|f| f == "vmx" || f == "svm") {
        return Err("the host CPU offers neither vmx nor svm".into());
    }
    if !Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm does not exist".into());
    }
    let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
    if Path::new("/sys/module/kvm_pvm").exists() || modules.contains("kvm_pvm") {
        return Err("/dev/kvm is backed by kvm_pvm (paravirtual, no nested VMX/SVM)".into());
    }
    Ok(())
}

/// One boot: the hypervisor command line and its guests.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Hypervisor command line.
    pub cmdline: String,
    /// Guest modules: `(image path, settings)`.
    pub modules: Vec<(PathBuf, String)>,
}

/// Where the serial console goes.
pub enum Serial<'a> {
    /// The terminal.
    Stdio,
    /// A log file.
    File(&'a Path),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The emulator exited with this status.
    Exited(i32),
    /// It was killed after the timeout.
    TimedOut,
    /// It was killed by a signal.
    Killed,
}

fn qemu_command(emulator: Emulator, paths: &Paths, boot: &Boot, serial: &Serial<'_>) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    match emulator {
        Emulator::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        _ => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.args([
        "-m", "256M", "-smp", "1", "-display", "none", "-vga", "none",
    ])
    .args(["-monitor", "none", "-no-reboot"])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    match serial {
        Serial::Stdio => cmd.args(["-serial", "stdio"]),
        Serial::File(p) => cmd.arg("-serial").arg(format!("file:{}", p.display())),
    };
    cmd.arg("-kernel").arg(paths.kernel_image());
    cmd.arg("-append").arg(&boot.cmdline);
    if !boot.modules.is_empty() {
        let initrd: Vec<String> = boot
            .modules
            .iter()
            .map(|(path, args)| format!("{} {args}", path.display()).trim_end().to_string())
            .collect();
        cmd.arg("-initrd").arg(initrd.join(","));
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Boots `boot` under `emulator`, waiting at most `timeout`.
pub fn run(
    emulator: Emulator,
    paths: &Paths,
    boot: &Boot,
    serial: Serial<'_>,
    timeout: Duration,
    extra_args: &[String],
) -> Result<RunEnd, String> {
    if emulator == Emulator::Bochs {
        return Err("Bochs runs are not supported yet".into());
    }
    let mut cmd = qemu_command(emulator, paths, boot, &serial);
    cmd.args(extra_args);
    if let Serial::File(log) = serial {
        let stderr = std::fs::File::create(log.with_extension("stderr"))
            .map_err(|e| format!("cannot create the stderr log: {e}"))?;
        cmd.stdout(Stdio::null()).stderr(stderr);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => {
                return Ok(status.code().map_or(RunEnd::Killed, RunEnd::Exited));
            }
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(RunEnd::TimedOut);
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
