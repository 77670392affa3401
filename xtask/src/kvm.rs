//! Whether QEMU with KVM (`-accel kvm -cpu host`) can run the hypervisor: the host
//! must really offer VMX (or SVM) to a guest, i.e. a hardware-backed `/dev/kvm` with
//! nested virtualization enabled. A paravirtual `kvm_pvm` (as on this project's CI
//! machines) cannot: it is detected and reported with the reason.

use std::path::Path;

/// The facts the decision is made from (read from `/proc` and `/sys`, or given by
/// tests).
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The `flags` line of `/proc/cpuinfo`.
    pub cpu_flags: String,
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// `/dev/kvm` can be opened read-write by this user.
    pub dev_kvm_usable: bool,
    /// The loaded module list (`/proc/modules`).
    pub modules: String,
    /// `/sys/module/kvm_intel/parameters/nested`, if present.
    pub nested_intel: Option<String>,
    /// `/sys/module/kvm_amd/parameters/nested`, if present.
    pub nested_amd: Option<String>,
}

impl HostFacts {
    /// Reads the facts of this machine.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        Self {
            cpu_flags: cpuinfo
                .lines()
                .find(|l| l.starts_with("flags"))
                .unwrap_or("")
                .to_string(),
            dev_kvm: Path::new("/dev/kvm").exists(),
            dev_kvm_usable: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
            modules: std::fs::read_to_string("/proc/modules").unwrap_or_default()
                + if Path::new("/sys/module/kvm_pvm").exists() {
                    "kvm_pvm (sysfs)\n"
                } else {
                    ""
                },
            nested_intel: read("/sys/module/kvm_intel/parameters/nested"),
            nested_amd: read("/sys/module/kvm_amd/parameters/nested"),
        }
    }
}

fn enabled(param: &Option<String>) -> bool {
    matches!(param.as_deref(), Some("Y" | "y" | "1"))
}

fn has_module(modules: &str, name: &str) -> bool {
    modules
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// `Ok(what)` when KVM can run the hypervisor (`what` names the virtualization it
/// will see), `Err(reason)` otherwise.
pub fn usable(f: &HostFacts) -> Result<&'static str, String> {
    let flags: Vec<&str> = f.cpu_flags.split_whitespace().collect();
    let vmx = flags.contains(&"vmx");
    let svm = flags.contains(&"svm");
    if has_module(&f.modules, "kvm_pvm") || f.modules.contains("kvm_pvm (sysfs)") {
        return Err(
            "/dev/kvm is backed by kvm_pvm (paravirtual KVM: no VMX or SVM for \
                    its guests, and QEMU aborts on its MSRs)"
                .into(),
        );
    }
    if !vmx && !svm {
        return Err("the host CPU offers neither vmx nor svm".into());
    }
    if !f.dev_kvm {
        return Err("/dev/kvm does not exist".into());
    }
    if !f.dev_kvm_usable {
        return Err("/dev/kvm cannot be opened read-write by this user".into());
    }
    if vmx {
        if !enabled(&f.nested_intel) {
            return Err("kvm_intel does not allow nested VMX (parameter `nested` is not Y)".into());
        }
        Ok("VMX with EPT (nested KVM on Intel)")
    } else {
        if !enabled(&f.nested_amd) {
            return Err("kvm_amd does not allow nested SVM (parameter `nested` is not 1)".into());
        }
        Ok("SVM with nested paging (nested KVM on AMD)")
    }
}

/// [`usable`] on this machine, as `emulator.rs` wants it.
pub fn check() -> Result<(), String> {
    usable(&HostFacts::read()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intel_host() -> HostFacts {
        HostFacts {
            cpu_flags: "flags : fpu vme sse2 vmx ept".into(),
            dev_kvm: true,
            dev_kvm_usable: true,
            modules: "kvm_intel 385024 0 - Live 0x0\nkvm 1138688 1 kvm_intel\n".into(),
            nested_intel: Some("Y".into()),
            nested_amd: None,
        }
    }

    #[test]
    fn nested_intel_host_is_usable() {
        assert_eq!(
            usable(&intel_host()),
            Ok("VMX with EPT (nested KVM on Intel)")
        );
    }

    #[test]
    fn each_missing_piece_is_named() {
        let mut f = intel_host();
        f.nested_intel = Some("N".into());
        assert!(usable(&f).unwrap_err().contains("nested"));
        let mut f = intel_host();
        f.dev_kvm_usable = false;
        assert!(usable(&f).unwrap_err().contains("read-write"));
        let mut f = intel_host();
        f.dev_kvm = false;
        assert!(usable(&f).unwrap_err().contains("does not exist"));
        let mut f = intel_host();
        f.cpu_flags = "flags : fpu sse2".into();
        assert!(usable(&f).unwrap_err().contains("neither vmx nor svm"));
    }

    #[test]
    fn pvm_is_refused_even_with_flags() {
        // This project's CI machine: an AMD guest whose /dev/kvm is kvm_pvm.
        let f = HostFacts {
            cpu_flags: "flags : fpu sse2 svm".into(),
            dev_kvm: true,
            dev_kvm_usable: true,
            modules: "kvm_pvm 61440 0 - Live 0x0\nkvm 1138688 1 kvm_pvm\n".into(),
            nested_intel: None,
            nested_amd: None,
        };
        assert!(usable(&f).unwrap_err().contains("kvm_pvm"));
    }

    #[test]
    fn nested_amd_host_is_usable() {
        let f = HostFacts {
            cpu_flags: "flags : fpu sse2 svm npt".into(),
            dev_kvm: true,
            dev_kvm_usable: true,
            modules: "kvm_amd 1 0\n".into(),
            nested_intel: None,
            nested_amd: Some("1".into()),
        };
        assert_eq!(usable(&f), Ok("SVM with nested paging (nested KVM on AMD)"));
    }
}
