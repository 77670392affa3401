//! A bootable GRUB ISO for one boot (Bochs has no `-kernel`): the hypervisor as a
//! multiboot kernel, every guest as a module whose command line is `FILE SETTINGS`,
//! exactly what QEMU's `-initrd "PATH SETTINGS"` hands the hypervisor.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::Paths;
use crate::deps::Tool;
use crate::emulator::Boot;

/// Tools (and the files that stand for packages) `grub-mkrescue` needs for a BIOS ISO.
pub const ISO_TOOLS: &[Tool] = &[
    Tool {
        program: "grub-mkrescue",
        package: "grub-common",
    },
    Tool {
        program: "/usr/lib/grub/i386-pc/multiboot.mod",
        package: "grub-pc-bin",
    },
    Tool {
        program: "xorriso",
        package: "xorriso",
    },
    Tool {
        program: "mformat",
        package: "mtools",
    },
];

/// Whether `word` can stand unquoted in grub.cfg (GRUB script splits on blanks and
/// treats quotes, `$`, `;`, `|`, `&`, `<`, `>`, braces and `#` specially).
fn plain_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "=:@+,._-/".contains(c))
}

/// A grub.cfg word: as is when plain, single-quoted otherwise (a word with a single
/// quote or a control character is refused).
fn grub_word(word: &str) -> Result<String, String> {
    if plain_word(word) {
        Ok(word.to_string())
    } else if word.contains('\'') || word.chars().any(|c| c.is_control()) {
        Err(format!("`{word}` cannot be passed through grub.cfg"))
    } else {
        Ok(format!("'{word}'"))
    }
}

/// The grub.cfg of a boot: serial console, no menu delay, the kernel and its modules.
/// `files` are the module file names inside `/boot`, in the order of `boot.modules`.
pub fn grub_cfg(boot: &Boot, files: &[String]) -> Result<String, String> {
    let mut cfg = String::from(
        "set timeout=0\nserial --unit=0 --speed=115200\nterminal_input serial\n\
         terminal_output serial\nmenuentry \"stage-2 hypervisor\" {\n",
    );
    let words =
        |s: &str| -> Result<Vec<String>, String> { s.split_whitespace().map(grub_word).collect() };
    let _ = writeln!(
        cfg,
        "  multiboot /boot/hv.bin {}",
        words(&boot.cmdline)?.join(" ")
    );
    for ((_, args), file) in boot.modules.iter().zip(files) {
        let mut line = format!("  module /boot/{file} {file}");
        for w in words(args)? {
            line.push(' ');
            line.push_str(&w);
        }
        let _ = writeln!(cfg, "{}", line.trim_end());
    }
    cfg.push_str("  boot\n}\n");
    Ok(cfg)
}

/// Builds `<dir>/hv.iso` for `boot` (staging in `<dir>/iso`) and returns its path.
pub fn make_iso(paths: &Paths, boot: &Boot, dir: &Path) -> Result<PathBuf, String> {
    let stage = dir.join("iso");
    let _ = std::fs::remove_dir_all(&stage);
    let boot_dir = stage.join("boot");
    std::fs::create_dir_all(boot_dir.join("grub")).map_err(|e| e.to_string())?;
    let copy = |from: &Path, name: &str| {
        std::fs::copy(from, boot_dir.join(name))
            .map(|_| ())
            .map_err(|e| format!("copying {}: {e}", from.display()))
    };
    copy(&paths.kernel_image(), "hv.bin")?;
    let mut files = Vec::new();
    for (image, _) in &boot.modules {
        let name = image
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("bad module path {}", image.display()))?
            .to_string();
        if !plain_word(&name) {
            return Err(format!("module file name `{name}` is not plain"));
        }
        copy(image, &name)?;
        files.push(name);
    }
    let cfg = grub_cfg(boot, &files)?;
    std::fs::write(boot_dir.join("grub/grub.cfg"), cfg).map_err(|e| e.to_string())?;
    let iso = dir.join("hv.iso");
    let output = Command::new("grub-mkrescue")
        .args([
            "-d",
            "/usr/lib/grub/i386-pc",
            "--locales=",
            "--fonts=",
            "--themes=",
        ])
        .arg("-o")
        .arg(&iso)
        .arg(&stage)
        .output()
        .map_err(|e| format!("cannot start grub-mkrescue: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "grub-mkrescue failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    // The ISO holds everything; the staging copy is not needed to re-run it.
    let _ = std::fs::remove_dir_all(&stage);
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_passes_settings_like_initrd() {
        let boot = Boot {
            cmdline: "log=info".into(),
            modules: vec![
                ("/x/hello.bin".into(), String::new()),
                (
                    "/x/readonly.bin".into(),
                    "ro=0x1000000+64K expect=fault:write@0x1000000".into(),
                ),
            ],
        };
        let cfg = grub_cfg(&boot, &["hello.bin".into(), "readonly.bin".into()]).unwrap();
        assert!(cfg.contains("  multiboot /boot/hv.bin log=info\n"));
        assert!(cfg.contains("  module /boot/hello.bin hello.bin\n"));
        assert!(cfg.contains(
            "  module /boot/readonly.bin readonly.bin ro=0x1000000+64K \
             expect=fault:write@0x1000000\n"
        ));
        assert!(cfg.contains("terminal_output serial"));
        assert!(cfg.starts_with("set timeout=0\n"));
    }

    #[test]
    fn special_words_are_quoted_or_refused() {
        assert_eq!(grub_word("name=a$b").unwrap(), "'name=a$b'");
        assert!(grub_word("it's").is_err());
        assert!(grub_word("a\u{7}").is_err());
        assert_eq!(grub_word("mem=64M").unwrap(), "mem=64M");
    }
}
