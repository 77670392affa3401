//! Running the hypervisor in an emulator, with a timeout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bochs::BochsModel;
use crate::build::Paths;

/// Which machine runs the hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulator {
    /// QEMU with TCG: AMD SVM with nested paging, emulated.
    Qemu,
    /// QEMU with KVM, where the host really offers VMX or SVM to guests.
    Kvm,
    /// Bochs: Intel VMX with EPT, on one CPU model.
    Bochs(BochsModel),
}

impl Emulator {
    /// Parses `qemu|kvm|bochs|bochs-skylake|bochs-sandybridge|all|auto` into the
    /// emulators to use (`bochs` is both Bochs CPU models, `auto` KVM where usable).
    pub fn parse_list(s: &str) -> Result<Vec<Emulator>, String> {
        let bochs = BochsModel::ALL.map(Self::Bochs);
        match s {
            "qemu" => Ok(vec![Self::Qemu]),
            "kvm" => Ok(vec![Self::Kvm]),
            "bochs" => Ok(bochs.to_vec()),
            "bochs-skylake" => Ok(vec![Self::Bochs(BochsModel::Skylake)]),
            "bochs-sandybridge" => Ok(vec![Self::Bochs(BochsModel::SandyBridge)]),
            "all" => Ok([&[Self::Qemu][..], &bochs, &[Self::Kvm]].concat()),
            "auto" => Ok(vec![Self::auto()]),
            _ => Err(format!(
                "unknown emulator `{s}` \
                 (qemu|kvm|bochs|bochs-skylake|bochs-sandybridge|all|auto)"
            )),
        }
    }

    /// KVM when the host really offers VMX or SVM to a guest hypervisor (the
    /// hypervisor drives both), QEMU's TCG otherwise.
    pub fn auto() -> Self {
        match crate::kvm::usable(&crate::kvm::HostFacts::read()) {
            Ok(what) => {
                eprintln!("xtask: using KVM ({what})");
                Self::Kvm
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
            Self::Bochs(model) => model.short_name(),
        }
    }

    /// `Err(reason)` when this emulator cannot run here.
    pub fn available(self) -> Result<(), String> {
        match self {
            Self::Qemu => crate::deps::ensure(crate::deps::QEMU_TOOLS),
            Self::Kvm => crate::kvm::check(),
            Self::Bochs(_) => crate::bochs::available(),
        }
    }

    /// The start of the line the hypervisor prints about the back-end it chose, when
    /// this emulator determines it (boot tests that reach the guests check it).
    pub fn backend_line(self) -> Option<&'static str> {
        match self {
            Self::Qemu => Some("[hv] AMD SVM with nested paging"),
            Self::Bochs(model) => Some(model.backend_line()),
            Self::Kvm => None,
        }
    }
}

/// One boot: the hypervisor command line and its guests.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Hypervisor command line.
    pub cmdline: String,
    /// Guest modules: `(image path, settings)`.
    pub modules: Vec<(PathBuf, String)>,
}

impl Boot {
    /// MiB of emulated RAM: 512 when a Linux guest (up to 160 MiB of frames) is in the
    /// boot, else 256 (tests of the host's frame budget assume it).
    pub fn memory_mib(&self) -> u32 {
        if self
            .modules
            .iter()
            .any(|(_, args)| args.starts_with("linux "))
        {
            512
        } else {
            256
        }
    }
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
    cmd.arg("-m").arg(format!("{}M", boot.memory_mib()));
    cmd.args(["-smp", "1", "-display", "none", "-vga", "none"])
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
    if let Emulator::Bochs(model) = emulator {
        if !extra_args.is_empty() {
            return Err("extra emulator arguments (--gdb) are for QEMU only".into());
        }
        return crate::bochs::run(model, paths, boot, serial, timeout);
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
