//! Declares the `hv_kernel` cfg that `cargo xtask build` sets for bare-metal builds
//! (the symbols are exported by their C names only then).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hv_kernel)");
}
