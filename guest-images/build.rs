//! Links the guest binaries at their load address with `guest.ld` (only binaries: the
//! library stays usable by host crates).

fn main() {
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
