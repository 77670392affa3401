//! Links the kernel binary at 1 MiB with `linker.ld`, without any C runtime. Only the
//! binary of the bare-metal build gets these arguments; the library builds normally
//! for host tests.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hv_kernel)");
    // Only the bare-metal build (`--cfg hv_kernel` from `cargo xtask build`) links the
    // kernel image; a host build of the binary is an ordinary program.
    if std::env::var_os("CARGO_CFG_HV_KERNEL").is_none() {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=linker.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        &format!("-Wl,-T,{dir}/linker.ld"),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
