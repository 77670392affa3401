//! Links the guest binaries at their load address with `guest.ld` (only binaries: the
//! library stays usable by host crates), and only in the bare-metal build
//! (`--cfg hv_kernel` from `cargo xtask build`): a host build of a binary is an
//! ordinary program, as for the hypervisor kernel. The real-mode guest (`realmode`)
//! links with `realmode.ld` instead, below 1 MiB.

/// Binaries linked with `realmode.ld` rather than `guest.ld`.
const REAL_MODE_BINS: &[&str] = &["realmode"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hv_kernel)");
    if std::env::var_os("CARGO_CFG_HV_KERNEL").is_none() {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=guest.ld");
    println!("cargo:rerun-if-changed=realmode.ld");
    println!("cargo:rerun-if-changed=src/bin");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    let bins = std::fs::read_dir(format!("{dir}/src/bin")).expect("guest-images/src/bin exists");
    for entry in bins {
        let path = entry.expect("readable src/bin entry").path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let script = if REAL_MODE_BINS.contains(&name) {
            "realmode.ld"
        } else {
            "guest.ld"
        };
        println!("cargo:rustc-link-arg-bin={name}=-Wl,-T,{dir}/{script}");
    }
}
