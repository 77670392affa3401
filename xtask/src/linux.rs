//! The Linux guest's files: Debian's stock kernel (`linux-image-amd64` → its
//! `linux-image-6.1.0-*-amd64` dependency's `vmlinuz`) and an initramfs built from
//! Debian's `busybox-static` with our own `/init`.
//!
//! The packages are fetched once with `apt-get download` into `target/linux/` (as
//! root; as another user the exact commands are printed), unpacked with `dpkg-deb -x`;
//! after that no network is needed. The initramfs is a gzip'd cpio "newc" archive
//! written here (format: the kernel's `Documentation/driver-api/early-userspace/
//! buffer-format.rst`), compressed by `gzip`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::Paths;

/// The line the init prints after both checksums of its memory workload matched: the
/// boot tests' marker (with the guest prefix the hypervisor adds).
pub const FINAL_MARKER: &str = "LINUX-INIT: CHECKSUMS MATCH, ALL DONE";

/// MiB the init's memory workload writes to tmpfs.
pub const WORKLOAD_MIB: u32 = 64;

/// The kernel command line: serial console, no ACPI, no I/O APIC and no local APIC
/// (the virtual platform has an 8259A PIC pair and an 8254 PIT, no APIC; see the
/// README), `panic=-1` reboots at once on a panic, `reboot=k` resets through the
/// i8042 (which ends the guest as "reset requested", never a pass); there is no
/// keyboard or mouse behind the i8042 (`i8042.nokbd i8042.noaux`). `tsc=unstable`:
/// the guest reads the host's TSC but its timer ticks come from the virtual PIT, whose
/// lost periods coalesce when the emulator is starved; Linux would then find the TSC
/// skewed against jiffies after it switched to it and to one-shot ticks, and fall back
/// to the jiffies clocksource, where time stops advancing in one-shot mode (seen under
/// load: soft lockups in idle). With the TSC unstable from the start, Linux keeps the
/// PIT periodic. No commas: QEMU's `-initrd` list is comma-separated.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 earlyprintk=ttyS0 acpi=off noapic nolapic \
     tsc=unstable panic=-1 reboot=k i8042.nokbd i8042.noaux";

/// Our `/init` (busybox `sh`). `MB` MiB of pseudo-random data (default
/// `workload_mib`; the kernel argument `workload=N` overrides it: the kernel hands
/// unknown `name=value` arguments to init as environment variables) go to tmpfs, are
/// checksummed twice and compared; only equal sums print [`FINAL_MARKER`]. `halt -f`
/// then stops the CPU with interrupts off (`HLT` with IF = 0): the hypervisor ends the
/// guest as "halted", which the boot test expects.
fn init_script(workload_mib: u32) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "LINUX-INIT: userspace is up"
uname -a
cat /proc/meminfo
MB=${{workload:-{workload_mib}}}
mount -t tmpfs -o size=$((MB + 16))m tmpfs /mnt
echo "LINUX-INIT: writing $MB MiB of pseudo-random data to tmpfs"
dd if=/dev/urandom of=/mnt/seed bs=64k count=16 2>/dev/null
i=0
while [ $i -lt $MB ]; do echo $i >> /mnt/seed; cat /mnt/seed; i=$((i + 1)); done | head -c $((MB * 1048576)) > /mnt/data
ls -l /mnt/data
A=$(md5sum < /mnt/data)
B=$(md5sum < /mnt/data)
echo "LINUX-INIT: checksum 1 $A"
echo "LINUX-INIT: checksum 2 $B"
grep -E 'MemFree|Shmem:' /proc/meminfo
if [ -n "$A" ] && [ "$A" = "$B" ]; then
  echo "{FINAL_MARKER}"
else
  echo "LINUX-INIT: CHECKSUM MISMATCH"
fi
halt -f
"#
    )
}

/// The kernel and initramfs of the Linux guest.
#[derive(Debug, Clone)]
pub struct LinuxFiles {
    /// The stock bzImage.
    pub kernel: PathBuf,
    /// Our initramfs (cpio newc, gzip).
    pub initrd: PathBuf,
}

fn cache(paths: &Paths) -> PathBuf {
    paths.root.join("target/linux")
}

/// The first file in `dir` whose name starts with `prefix` and ends with `suffix`.
fn find(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found.pop()
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned kernel package `linux-image-amd64` depends on.
fn kernel_package() -> Result<String, String> {
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .map(str::to_string)
        .ok_or_else(|| "apt-cache finds no linux-image-*-amd64 behind linux-image-amd64".into())
}

/// Downloads the two packages into the cache (root only; otherwise says how).
fn download(dir: &Path) -> Result<(), String> {
    let package = kernel_package()?;
    let is_root = output(Command::new("id").arg("-u")).is_ok_and(|o| o.trim() == "0");
    if !is_root {
        return Err(format!(
            "the Linux guest needs Debian's kernel and busybox; fetch them with:\n    \
             mkdir -p {d} && cd {d} && apt-get download {package} busybox-static",
            d = dir.display()
        ));
    }
    eprintln!("xtask: apt-get download {package} busybox-static");
    crate::build::run(
        Command::new("apt-get")
            .args(["download", &package, "busybox-static"])
            .current_dir(dir),
    )
}

/// Fetches (once), unpacks and builds the Linux guest's files; `workload_mib` sizes the
/// init's memory workload.
pub fn prepare(paths: &Paths, workload_mib: u32) -> Result<LinuxFiles, String> {
    // Boot tests run in parallel threads, and the Linux ones all come here: one at a
    // time, so that a fresh checkout downloads, unpacks and packs once (two concurrent
    // `apt-get download`s into one folder both failed).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = cache(paths);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let kernel_deb = find(&dir, "linux-image-6", "-amd64.deb")
        .or_else(|| find(&dir, "linux-image-", ".deb").filter(|p| !is_meta(p)));
    let busybox_deb = find(&dir, "busybox-static_", ".deb");
    let (kernel_deb, busybox_deb) = match (kernel_deb, busybox_deb) {
        (Some(k), Some(b)) => (k, b),
        _ => {
            download(&dir)?;
            (
                find(&dir, "linux-image-", ".deb")
                    .filter(|p| !is_meta(p))
                    .ok_or("no kernel package after apt-get download")?,
                find(&dir, "busybox-static_", ".deb")
                    .ok_or("no busybox-static package after apt-get download")?,
            )
        }
    };
    let kernel_root = dir.join("kernel");
    let busybox_root = dir.join("busybox");
    for (deb, root) in [(&kernel_deb, &kernel_root), (&busybox_deb, &busybox_root)] {
        if !root.exists() {
            crate::build::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
        }
    }
    let kernel = find(&kernel_root.join("boot"), "vmlinuz-", "")
        .ok_or_else(|| format!("no boot/vmlinuz-* in {}", kernel_deb.display()))?;
    let busybox = std::fs::read(busybox_root.join("bin/busybox"))
        .map_err(|e| format!("busybox from {}: {e}", busybox_deb.display()))?;
    let initrd = dir.join(format!("initramfs-{workload_mib}M.cpio.gz"));
    let archive = initramfs(&busybox, &init_script(workload_mib));
    // Boot tests run in parallel and each prepares the files: every writer works on
    // its own temporary files and renames the result into place, so an emulator that
    // is reading the initramfs never sees it half written.
    let unique = unique_suffix();
    let cpio = dir.join(format!("initramfs-{workload_mib}M.cpio.{unique}"));
    std::fs::write(&cpio, &archive).map_err(|e| e.to_string())?;
    let compressed = Command::new("gzip")
        .args(["-9nc"])
        .arg(&cpio)
        .output()
        .map_err(|e| format!("cannot start gzip: {e}"))?;
    let _ = std::fs::remove_file(&cpio);
    if !compressed.status.success() {
        return Err("gzip failed".into());
    }
    let unchanged = std::fs::read(&initrd).is_ok_and(|old| old == compressed.stdout);
    if !unchanged {
        let tmp = initrd.with_extension(format!("gz.{unique}"));
        std::fs::write(&tmp, &compressed.stdout).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &initrd).map_err(|e| e.to_string())?;
    }
    Ok(LinuxFiles { kernel, initrd })
}

/// A suffix no other writer (process or thread) uses for its temporary files.
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// `linux-image-amd64_*.deb` is the meta package (no kernel inside).
fn is_meta(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("linux-image-amd64_"))
}

/// The initramfs: directories, `/dev/console`, busybox and our `/init`.
fn initramfs(busybox: &[u8], init: &str) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for dir in [
        "bin", "sbin", "dev", "proc", "sys", "tmp", "mnt", "usr", "usr/bin", "usr/sbin",
    ] {
        cpio.entry(dir, 0o040_755, (0, 0), &[]);
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    cpio.entry("dev/console", 0o020_600, (5, 1), &[]);
    cpio.entry("bin/busybox", 0o100_755, (0, 0), busybox);
    cpio.entry("init", 0o100_755, (0, 0), init.as_bytes());
    cpio.finish()
}

/// A cpio "newc" writer (magic `070701`, 13 fields of 8 hex digits, name and data each
/// padded to 4 bytes; the `TRAILER!!!` entry ends the archive).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.entry("init", 0o100_755, (0, 0), b"abc");
        let out = c.finish();
        assert_eq!(&out[..6], b"070701");
        // ino 1, mode 0100755, size 3, namesize 5.
        assert_eq!(&out[6..14], b"00000001");
        assert_eq!(&out[14..22], b"000081ED");
        assert_eq!(&out[54..62], b"00000003");
        assert_eq!(&out[94..102], b"00000005");
        // Header 110 bytes + "init\0" = 115, padded to 116; data at 116.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..119], b"abc");
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
