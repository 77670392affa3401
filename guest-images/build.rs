//! Links the guest binaries at their load address with `guest.ld` (only binaries: the
//! library stays usable by host crates), and only in the bare-metal build
//! (`--cfg hv_kernel` from `cargo xtask build`): a host build of a binary is an
//! ordinary program, as for the hypervisor kernel.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hv_kernel)");
    if std::env::var_os("CARGO_CFG_HV_KERNEL").is_none() {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=guest.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        &format!("-Wl,-T,{dir}/guest.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
