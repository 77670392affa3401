//! `cargo xtask`: the project's build, test and run driver.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => host_tests(),
        _ => {
            eprintln!("usage: cargo xtask test");
            ExitCode::from(2)
        }
    }
}

/// Runs every host test of the workspace.
fn host_tests() -> ExitCode {
    let status = Command::new(env!("CARGO"))
        .args([
            "test",
            "--workspace",
            "--exclude",
            "hv",
            "--exclude",
            "guest-images",
        ])
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
