//! Passes the name of the cargo profile the benchmark is built with to the binary, which
//! prints it in the table's header (`cargo xtask bench` uses `bench-fair`).

use std::path::Path;

fn main() {
    // OUT_DIR is `<target dir>/[<triple>/]<profile dir>/build/<package>-<hash>/out`.
    let out = std::env::var("OUT_DIR").unwrap_or_default();
    let profile = Path::new(&out)
        .ancestors()
        .nth(3)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("unknown")
        .to_string();
    println!("cargo:rustc-env=BENCH_PROFILE={profile}");
    println!("cargo:rerun-if-changed=build.rs");
}
