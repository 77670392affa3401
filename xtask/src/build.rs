//! Building the kernel and the guest images with bare-metal flags, in their own
//! target directory so host builds never see those flags.

use std::path::{Path, PathBuf};
use std::process::Command;

use guest_images::abi::{self, ImageHeader};

/// The target triple both the host and the bare-metal binaries use.
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Rust flags for bare-metal code on the Linux target: no PIC, no red zone (interrupt
/// frames would clobber it), static; `hv_kernel` selects the kernel's bare-metal entry.
const KERNEL_RUSTFLAGS: &[&str] = &[
    "--cfg=hv_kernel",
    "-Crelocation-model=static",
    "-Cno-redzone=yes",
    "-Ctarget-feature=+crt-static",
];

/// Where things are.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Workspace root.
    pub root: PathBuf,
    /// Cargo target directory for bare-metal builds.
    pub kernel_target: PathBuf,
    /// Flat images: `hv.bin` and one `<guest>.bin` per scenario binary.
    pub images: PathBuf,
}

impl Paths {
    /// Paths relative to the workspace root (the parent of xtask's manifest dir).
    pub fn new() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf();
        Self {
            kernel_target: root.join("target/kernel"),
            images: root.join("target/images"),
            root,
        }
    }

    /// The flat hypervisor image.
    pub fn kernel_image(&self) -> PathBuf {
        self.images.join("hv.bin")
    }

    /// The ELF hypervisor (for gdb).
    pub fn kernel_elf(&self) -> PathBuf {
        self.kernel_target.join(TRIPLE).join("release/hv")
    }

    /// The flat image of guest `name`.
    pub fn guest_image(&self, name: &str) -> PathBuf {
        self.images.join(format!("{name}.bin"))
    }
}

/// The guest binaries (from `guest-images/src/bin`).
pub fn guest_names(paths: &Paths) -> Result<Vec<String>, String> {
    let dir = paths.root.join("guest-images/src/bin");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// A `cargo` command (the one running xtask, if any) in the workspace root.
pub fn cargo(paths: &Paths) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&paths.root);
    cmd
}

/// Runs `cmd` to its end; an error names the command and how it failed.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn objcopy(elf: &Path, flat: &Path) -> Result<(), String> {
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(elf)
        .arg(flat))
}

/// Builds the kernel and every guest, and writes the flat images.
pub fn build_all(paths: &Paths) -> Result<(), String> {
    crate::deps::ensure(crate::deps::BUILD_TOOLS)?;
    run(cargo(paths)
        .args(["build", "--release", "--target", TRIPLE, "--target-dir"])
        .arg(&paths.kernel_target)
        .args(["-p", "hv", "--bin", "hv", "-p", "guest-images", "--bins"])
        .env("CARGO_ENCODED_RUSTFLAGS", KERNEL_RUSTFLAGS.join("\u{1f}"))
        .env_remove("RUSTFLAGS"))?;
    std::fs::create_dir_all(&paths.images).map_err(|e| e.to_string())?;
    let out = paths.kernel_target.join(TRIPLE).join("release");
    objcopy(&out.join("hv"), &paths.kernel_image())?;
    for name in guest_names(paths)? {
        let flat = paths.guest_image(&name);
        objcopy(&out.join(&name), &flat)?;
        let mut image = std::fs::read(&flat).map_err(|e| e.to_string())?;
        abi::seal(&mut image).map_err(|e| format!("{name}: {e}"))?;
        ImageHeader::parse(&image).map_err(|e| format!("{name}: {e}"))?;
        std::fs::write(&flat, &image).map_err(|e| e.to_string())?;
    }
    // A deliberately damaged image (one payload byte flipped after sealing) for the
    // boot test that checks the hypervisor refuses it.
    let mut corrupt = std::fs::read(paths.guest_image("hello")).map_err(|e| e.to_string())?;
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x5A;
    std::fs::write(paths.guest_image("corrupt"), &corrupt).map_err(|e| e.to_string())?;
    Ok(())
}
