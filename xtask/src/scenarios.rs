//! The guest scenarios: default settings per guest, and the boot tests.

use guest_images::abi::RunStatus;

use crate::checks::ReportCheck;

/// Default module settings for each guest image (`cargo xtask run NAME` uses them;
/// extra words on the command line are appended and win).
pub const GUEST_DEFAULTS: &[(&str, &str)] = &[
    ("hello", ""),
    ("ondemand", "mem=64M area=0x8001000+8M:rw"),
    ("huge", "area=0x4000000+4M:rw"),
    ("readonly", "ro=0x1000000+64K expect=fault:write@0x1000000"),
    ("noexec", "nx=0x1000000+64K expect=fault:exec@0x1000000"),
    ("mmio", "mmio=0x2000000+64K"),
    ("outofrange", "expect=fault:unmapped@0x3000000"),
    ("quota", "mem=64M quota=1M expect=fault:quota"),
    (
        "protect",
        "area=0x1000000+64K:rw expect=fault:write@0x1001000",
    ),
    (
        "unmap",
        "area=0x1000000+64K:rw expect=fault:unmapped@0x1002000",
    ),
    ("clone", "area=0x1000000+64K:rw"),
    ("badcall", "expect=fault:hypercall"),
    ("portio", "expect=fault:io@0xf4"),
    ("triple", "expect=fault:shutdown"),
    ("hostile", "area=0x1000000+64K:rw"),
    ("registers", ""),
    ("populated", "populate area=0x4000000+4M:rwp"),
    ("spin", "expect=fault:timeout"),
    ("realmode", ""),
    ("intercepts", "expect=fault:instruction"),
    ("badmsr", "expect=fault:shutdown"),
    (
        "ceiling",
        "ro=0x1000000+64K nx=0x1100000+64K mmio=0x2000000+64K expect=fault:write@0x1000000",
    ),
    ("hog", "mem=1G expect=fault:quota"),
    ("nibble", "mem=72M"),
    ("areaflood", "area=0x40000000+1G:rw expect=fault:metadata"),
    (
        "cloneflood",
        "area=0x4000000+16M:rw area=0x40000000+1G:rw expect=fault:metadata",
    ),
    ("snapshot", "area=0x1000000+1M:rw"),
    // Issue 13: memory that moves between owners.
    (
        "msgprod",
        "window=1@0x4000000+4K:rw window=2@0x4001000+4K:r",
    ),
    (
        "msgcons",
        "window=1@0x4000000+4K:r window=2@0x4001000+4K:rw",
    ),
    ("balloon", "mem=128M quota=72M"),
    ("zeroscan", "mem=64M"),
];

/// The default settings of guest `name` ("" for an unknown guest).
pub fn default_args(name: &str) -> &'static str {
    GUEST_DEFAULTS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, a)| a)
}

/// The guests `cargo xtask run` (and `./run.sh`) boots without arguments: output,
/// on-demand faults, huge leaves, a copy-on-write clone, a guest stopped at its
/// read-only area while the others go on.
pub const DEMO: &[&str] = &["hello", "ondemand", "huge", "clone", "readonly"];

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
    /// Text that must appear in the serial log (each in some line), under every
    /// back-end: the detail of an expected end, a check the hypervisor made.
    pub lines: &'static [&'static str],
    /// Text that must appear under SVM, and under VMX (`(svm, vmx)`).
    pub vendor_lines: (&'static [&'static str], &'static [&'static str]),
    /// Claims checked against guests' stage-2 reports (every report must also end
    /// with `validator: OK`).
    pub reports: &'static [ReportCheck],
}

/// Boot tests that `boot-test`/`test` do not run under Bochs unless named (only QEMU
/// and KVM), and why: [`LINUX_UNDER_BOCHS`]. `linux-quiet` does run under Bochs.
pub const NOT_UNDER_BOCHS: &[&str] = &["linux", "linux-shared"];

/// Why some Linux boot tests do not run under Bochs.
pub const LINUX_UNDER_BOCHS: &str = "linux-quiet covers Linux under Bochs (3.5-4.5 minutes \
     each on an idle 2-core machine); the verbose runs add minutes of serial exits, name \
     them to run them (see the README)";

/// The Linux guest's final line as the hypervisor prints it.
pub const LINUX_MARKER: &str = "[guest linux] LINUX-INIT: CHECKSUMS MATCH, ALL DONE";

macro_rules! single {
    ($name:literal) => {
        BootTest {
            name: $name,
            cmdline: "log=info",
            guests: &[$name],
            status: RunStatus::AllPassed,
            marker: "HV: ALL 1 GUESTS PASSED",
            lines: &[],
            vendor_lines: (&[], &[]),
            reports: &[],
        }
    };
    ($name:literal, lines: $lines:expr, reports: $reports:expr) => {
        BootTest {
            lines: $lines,
            reports: $reports,
            ..single!($name)
        }
    };
}

/// Every boot test.
pub const BOOT_TESTS: &[BootTest] = &[
    single!("hello"),
    // The guest says it got 2 MiB and 4 KiB leaves on demand; its report must agree:
    // 24 + 3 leaves of 2 MiB (its 48 MiB and the middle of its 8 MiB area), and a fault
    // served for each of them and each of the area's 512 edge pages.
    single!(
        "ondemand",
        lines: &[],
        reports: &[ReportCheck {
            guest: "ondemand",
            leaves_2m: 27,
            faults: 539,
        }]
    ),
    single!(
        "huge",
        lines: &[],
        reports: &[ReportCheck {
            guest: "huge",
            leaves_2m: 2,
            faults: 2,
        }]
    ),
    single!("readonly"),
    single!("noexec"),
    single!("mmio"),
    single!("outofrange"),
    // The running guest hit its quota at an address (not: it could not be created).
    single!("quota", lines: &["guest quota: PASS (ended: fault:quota@0x"], reports: &[]),
    single!("protect"),
    single!("unmap"),
    BootTest {
        name: "clone",
        cmdline: "log=info",
        guests: &["clone"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 2 GUESTS PASSED",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    single!("badcall"),
    single!(
        "portio",
        lines: &["guest portio: PASS (ended: fault:io@0xf4: OUT of 1 byte(s) to port 0xf4 refused)"],
        reports: &[]
    ),
    single!(
        "triple",
        lines: &["guest triple: PASS (ended: fault:shutdown: triple fault (shutdown) at rip 0x"],
        reports: &[]
    ),
    // An unknown MSR gets #GP(0); without an IDT that is a triple fault, which names it.
    single!(
        "badmsr",
        lines: &["after #GP injected for RDMSR of MSR 0xc0011234 (no such MSR on this virtual CPU)"],
        reports: &[]
    ),
    single!("hostile"),
    single!("populated"),
    // A 16-bit real-mode guest (VMX: unrestricted guest; SVM: natively).
    single!("realmode"),
    // 1,000 resets to a snapshot of memory and vCPU (issue 14).
    single!("snapshot"),
    // Host-configured rights are a ceiling; the host's view follows the mapping.
    single!(
        "ceiling",
        lines: &["[guest ceiling] every right above the host's was refused"],
        reports: &[]
    ),
    // A guest without `quota=` gets its RAM, at most half the host's frames: it cannot
    // starve the guest beside it. When the host itself runs out, the guest that asks
    // ends with that reason (not a quota fault), and the others go on.
    BootTest {
        name: "default-quota",
        cmdline: "log=info",
        guests: &["hog", "nibble"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 2 GUESTS PASSED",
        lines: &[
            "guest hog: PASS (ended: fault:quota@",
            "[guest nibble] touched 64 MiB",
        ],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    BootTest {
        name: "host-memory",
        cmdline: "log=info",
        guests: &["hog quota=1G expect=ok", "nibble expect=fault:host-memory"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 2 GUESTS PASSED",
        lines: &[
            "[guest hog] holding 180 MiB",
            "guest nibble: PASS (ended: fault:host-memory@",
            "host frame allocator exhausted",
            "guest hog: PASS (ended: exit code 0)",
        ],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // Guests that grow the hypervisor's bookkeeping (areas; entries for frames shared
    // by clones) end alone at their budget; the guest beside them passes.
    BootTest {
        name: "areaflood",
        cmdline: "log=info",
        guests: &["areaflood", "hello"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 2 GUESTS PASSED",
        lines: &[
            "guest areaflood: PASS (ended: fault:metadata@",
            "area bookkeeping budget exhausted (",
            "of 16384 entries)",
            "guest hello: PASS (ended: exit code 0)",
            "more area(s) totalling",
        ],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    BootTest {
        name: "cloneflood",
        cmdline: "log=info",
        guests: &["cloneflood", "hello"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 4 GUESTS PASSED",
        lines: &[
            "[guest cloneflood] clone 2 made",
            "guest cloneflood: PASS (ended: fault:metadata: area bookkeeping budget exhausted",
            "guest cloneflood.child3: PASS (ended: fault:metadata@",
            "guest cloneflood.child4: PASS (ended: fault:metadata@",
            "guest hello: PASS (ended: exit code 0)",
        ],
        vendor_lines: (&[], &[]),
        // Every touched page came in by a fault of its own (4 KiB pieces).
        reports: &[ReportCheck {
            guest: "cloneflood",
            leaves_2m: 0,
            faults: 4088,
        }],
    },
    // Two guests exchange 10,000 messages through shared windows (per-guest rights),
    // yielding to each other; both reports show the windows.
    BootTest {
        name: "sharedmsg",
        cmdline: "log=info",
        guests: &["msgprod", "msgcons"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 2 GUESTS PASSED",
        lines: &[
            "guest msgprod: shared window 1 at 0x4000000 (4 KiB, rw)",
            "guest msgprod: shared window 2 at 0x4001000 (4 KiB, r)",
            "guest msgcons: shared window 1 at 0x4000000 (4 KiB, r)",
            "guest msgcons: shared window 2 at 0x4001000 (4 KiB, rw)",
            "[guest msgprod] producer: 10000 messages sent and acknowledged",
            "[guest msgcons] consumer: 10000 messages received in order and verified",
            "[0x0004000000, 0x0004001000)         4 KiB rw- WriteBack shared window",
            "[0x0004000000, 0x0004001000)         4 KiB r-- WriteBack shared window",
        ],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // 64 MiB touched, 48 MiB given back, 32 MiB more within a 72 MiB quota: the
    // frames go down at the balloon call and up again in the report. Then 100 more
    // calls: the hypervisor's notices about one guest are bounded.
    BootTest {
        name: "balloon",
        cmdline: "log=info",
        guests: &["balloon"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 1 GUESTS PASSED",
        lines: &[
            "guest balloon: balloon gave back 12288 frames of [0x1000000, 0x4000000)",
            "balloon: 12288 frames given back",
            "[guest balloon] balloon: 64 MiB touched, 48 MiB given back (12288 frames), 32 MiB more touched",
            // 101 balloon notices: 32 logged, the rest counted in the report.
            "[guest balloon] balloon: 100 more calls over a given-back page gave back nothing",
            "guest balloon: more than 32 notices; the rest are counted in its report",
            "[hv] balloon: 69 notices not logged (more than 32)",
        ],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // The same read-mostly scan with and without the zero page: the reports show
    // the read faults served without a frame, and the frames saved.
    BootTest {
        name: "zeroscan",
        cmdline: "log=info",
        guests: &["zeroscan zeropage", "zeroscan name=zeroscan-plain"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 2 GUESTS PASSED",
        lines: &["zero page: 12288 read faults served without a frame"],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // A guest that never exits is preempted by the timer (the others finish first) and
    // stopped after its CPU budget (1 s here; the others need a few ms each).
    BootTest {
        name: "spin",
        cmdline: "log=info cpu-budget=100",
        guests: &["spin", "hello", "clone"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 4 GUESTS PASSED",
        lines: &["guest spin: PASS (ended: fault:timeout: still running after its CPU budget of "],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // Two instances: the second starts after the first (and its clone) wrote their
    // own values into every register and MSR, and must see the reset state.
    // One guest per instruction a guest could use against the host: each ends, named.
    BootTest {
        name: "intercepts",
        cmdline: "log=info",
        guests: &["intercepts"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 10 GUESTS PASSED",
        lines: &[],
        vendor_lines: (
            &[
                "fault:instruction: VMRUN is not allowed",
                "fault:instruction: VMLOAD is not allowed",
                "fault:instruction: VMSAVE is not allowed",
                "fault:instruction: STGI is not allowed",
                "fault:instruction: CLGI is not allowed",
                "fault:instruction: SKINIT is not allowed",
                "fault:instruction: INVLPGA is not allowed",
                "fault:instruction: INVD is not allowed",
                "fault:instruction: XSETBV",
                "fault:instruction: RDPMC is not allowed",
            ],
            &[
                "fault:instruction: VMXON is not allowed",
                "fault:instruction: VMCLEAR is not allowed",
                "fault:instruction: VMPTRLD is not allowed",
                "fault:instruction: VMREAD is not allowed",
                "fault:instruction: VMWRITE is not allowed",
                "fault:instruction: VMLAUNCH is not allowed",
                "fault:instruction: INVEPT is not allowed",
                "fault:instruction: INVVPID is not allowed",
                "fault:instruction: INVD is not allowed",
                "fault:instruction: XSETBV",
            ],
        ),
        reports: &[],
    },
    BootTest {
        name: "registers",
        cmdline: "log=info",
        guests: &["registers", "registers name=registers2"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 4 GUESTS PASSED",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // Every scenario in one boot: each guest has its own address space and ASID, the
    // misbehaving ones end alone and the others go on.
    BootTest {
        name: "all-together",
        cmdline: "log=info",
        guests: &[
            "hello",
            "triple",
            "ondemand",
            "readonly",
            "huge",
            "noexec",
            "mmio",
            "quota",
            "outofrange",
            "protect",
            "unmap",
            "clone",
            "badcall",
            "portio",
            "realmode",
        ],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 16 GUESTS PASSED",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // A guest whose outcome differs from its expectation fails the run (and only it).
    BootTest {
        name: "detects-failure",
        cmdline: "log=info",
        guests: &["hello", "readonly expect=ok", "hello name=hello2"],
        status: RunStatus::GuestFailed,
        marker: "HV: 1 GUEST(S) FAILED",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // More guests than SVM offers ASIDs (15 under QEMU): they are admitted as others end.
    BootTest {
        name: "more-guests-than-asids",
        cmdline: "log=info",
        guests: &[
            "hello name=g01",
            "hello name=g02",
            "hello name=g03",
            "hello name=g04",
            "hello name=g05",
            "hello name=g06",
            "hello name=g07",
            "hello name=g08",
            "hello name=g09",
            "hello name=g10",
            "hello name=g11",
            "hello name=g12",
            "hello name=g13",
            "hello name=g14",
            "hello name=g15",
            "hello name=g16",
            "hello name=g17",
            "hello name=g18",
            "hello name=g19",
            "clone name=g20",
        ],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 21 GUESTS PASSED",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // Debian's stock kernel to our busybox init, whose memory workload must end with
    // equal checksums (its final line); `halt -f` ends it as "halted".
    BootTest {
        name: "linux",
        cmdline: "log=info cpu-budget=100000",
        guests: &["linux"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 1 GUESTS PASSED",
        lines: &[LINUX_MARKER, "guest linux: PASS (ended: halted)"],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // The same with a quiet kernel and a 16 MiB workload: fewer serial exits and less
    // emulated work, so that it also runs under Bochs (both CPU models).
    BootTest {
        name: "linux-quiet",
        cmdline: "log=info cpu-budget=400000",
        guests: &["linux -- quiet workload=16"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 1 GUESTS PASSED",
        lines: &[LINUX_MARKER, "guest linux: PASS (ended: halted)"],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // A truncated bzImage is refused before anything runs.
    BootTest {
        name: "refuses-truncated-linux",
        cmdline: "log=info",
        guests: &["hello", "linux-truncated"],
        status: RunStatus::BadConfig,
        marker: "HV: CONFIGURATION REFUSED",
        lines: &["bzImage truncated: 65536 bytes"],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // Linux and tiny guests share the machine, time-sliced.
    BootTest {
        name: "linux-shared",
        cmdline: "log=info cpu-budget=100000",
        guests: &["hello", "linux", "ondemand", "clone"],
        status: RunStatus::AllPassed,
        marker: "HV: ALL 5 GUESTS PASSED",
        lines: &[LINUX_MARKER, "guest linux: PASS (ended: halted)"],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // The host's own failures end the run with their own status.
    BootTest {
        name: "host-exception",
        cmdline: "log=info selftest=exception",
        guests: &["hello"],
        status: RunStatus::HostFault,
        marker: "HV: HOST FAULT (exception 6), status 37",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    BootTest {
        name: "host-panic",
        cmdline: "log=info selftest=panic",
        guests: &["hello"],
        status: RunStatus::HostFault,
        marker: "HV: HOST FAULT (panic), status 37",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    BootTest {
        name: "leak-check",
        cmdline: "log=info selftest=leak",
        guests: &["hello"],
        status: RunStatus::Leak,
        marker: "HV: FRAME LEAK (1 frames)",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    // A malformed configuration is refused before any guest runs.
    BootTest {
        name: "refuses-bad-settings",
        cmdline: "log=info",
        guests: &["hello mem=3M"],
        status: RunStatus::BadConfig,
        marker: "HV: CONFIGURATION REFUSED",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    BootTest {
        name: "refuses-bad-image",
        cmdline: "log=info",
        guests: &["hello", "corrupt"],
        status: RunStatus::BadConfig,
        marker: "HV: CONFIGURATION REFUSED",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
    BootTest {
        name: "refuses-bad-cmdline",
        cmdline: "log=loud",
        guests: &["hello"],
        status: RunStatus::BadConfig,
        marker: "HV: CONFIGURATION REFUSED",
        lines: &[],
        vendor_lines: (&[], &[]),
        reports: &[],
    },
];
