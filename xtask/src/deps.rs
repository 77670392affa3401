//! Host tools the build and the boot tests need, and installing them.

use std::process::Command;

/// A command-line tool and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// Executable name.
    pub program: &'static str,
    /// Debian package.
    pub package: &'static str,
}

/// Tools for building images (objcopy).
pub const BUILD_TOOLS: &[Tool] = &[Tool {
    program: "objcopy",
    package: "binutils",
}];

/// Tools for running under QEMU.
pub const QEMU_TOOLS: &[Tool] = &[Tool {
    program: "qemu-system-x86_64",
    package: "qemu-system-x86",
}];

/// Whether `program` is on the PATH (or, given as an absolute path, exists: a file
/// that stands for its package).
fn found(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes sure every tool is there: installs missing ones with apt-get when running as
/// root, otherwise returns the exact command to run.
pub fn ensure(tools: &[Tool]) -> Result<(), String> {
    let mut missing: Vec<&str> = tools
        .iter()
        .filter(|t| !found(t.program))
        .map(|t| t.package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() || !found("apt-get") {
        return Err(format!(
            "missing tools; install them with:\n    sudo apt-get update && \
             sudo apt-get install -y --no-install-recommends {list}"
        ));
    }
    eprintln!("xtask: installing {list}");
    let update = Command::new("apt-get").arg("update").status();
    let install = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match (update, install) {
        (Ok(u), Ok(i)) if u.success() && i.success() => Ok(()),
        _ => Err(format!("apt-get could not install {list}")),
    }
}
