//! The guest scenarios: default settings per guest, and the boot tests.

use guest_images::abi::RunStatus;

/// Default module settings for each guest image (`cargo xtask run NAME` uses them;
/// extra words on the command line are appended and win).
pub const GUEST_DEFAULTS: &[(&str, &str)] = &[("hello", "")];

/// The default settings of guest `name` ("" for an unknown guest).
pub fn default_args(name: &str) -> &'static str {
    GUEST_DEFAULTS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, a)| a)
}

/// The guests `cargo xtask run` boots without arguments.
pub const DEMO: &[&str] = &["hello"];

/// One boot test: guests to boot, and the exact status and marker that mean "pass".
#[derive(Debug, Clone)]
pub struct BootTest {
    /// Test name.
    pub name: &'static str,
    /// Hypervisor command line.
    pub cmdline: &'static str,
    /// Guests, each `NAME [settings...]` (defaults from [`GUEST_DEFAULTS`] first).
    pub guests: &'static [&'static str],
    /// The run status that counts as a pass.
    pub status: RunStatus,
    /// A line the serial log must contain.
    pub marker: &'static str,
}

/// Every boot test.
pub const BOOT_TESTS: &[BootTest] = &[BootTest {
    name: "hello",
    cmdline: "log=info",
    guests: &["hello"],
    status: RunStatus::AllPassed,
    marker: "HV: ALL 1 GUESTS PASSED",
}];
