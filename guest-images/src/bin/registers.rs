//! Scenario `registers`: the whole per-vCPU state is the guest's own.
//!
//! 1. A new guest sees the reset state: DR0-DR3 = 0, DR6 = 0xFFFF0FF0, DR7 = 0x400,
//!    CR2 = CR8 = 0, PKRU = 0, and the reset values of every MSR in the hypervisor's
//!    table (SYSCALL/SYSENTER MSRs, FS/GS/KERNEL_GS bases, TSC_AUX, PAT, EFER, APIC
//!    base, MISC_ENABLE, MTRRs; under SVM also TSC_AUX as RDTSCP reads it natively), and
//!    the virtual CPUID (hypervisor leaf, no VMX/SVM).
//!    The boot test runs this scenario twice: the second guest starts after the first
//!    has written its own values into all of it, so a leak shows here.
//! 2. It writes values of its own, clones itself (the child must see them), then parent
//!    and child each write different values and yield to each other several times:
//!    each must find its general-purpose, XMM and all the state above intact.
#![forbid(unsafe_code)]
#![cfg_attr(hv_kernel, no_std)]
#![cfg_attr(hv_kernel, no_main)]

use guest_images::rt::cpu::{self, on_intel};
use guest_images::rt::{clone_guest, yield_keeps_registers, yield_now};
use guest_images::{check, println};

/// MSR numbers (Intel SDM vol. 4 table 2-2).
const APIC_BASE: u32 = 0x1B;
const SYSENTER_CS: u32 = 0x174;
const SYSENTER_ESP: u32 = 0x175;
const SYSENTER_EIP: u32 = 0x176;
const MISC_ENABLE: u32 = 0x1A0;
const PAT: u32 = 0x277;
const MTRR_DEF_TYPE: u32 = 0x2FF;
const MTRR_PHYS_BASE0: u32 = 0x200;
const EFER: u32 = 0xC000_0080;
const STAR: u32 = 0xC000_0081;
const LSTAR: u32 = 0xC000_0082;
const CSTAR: u32 = 0xC000_0083;
const SFMASK: u32 = 0xC000_0084;
const FS_BASE: u32 = 0xC000_0100;
const GS_BASE: u32 = 0xC000_0101;
const KERNEL_GS_BASE: u32 = 0xC000_0102;
const TSC_AUX: u32 = 0xC000_0103;
/// CR4.PKE (SDM vol. 3A 2.5).
const CR4_PKE: u64 = 1 << 22;

/// The state this scenario writes and checks.
#[derive(Clone, Copy)]
struct State {
    dr: [u64; 4],
    dr6: u64,
    dr7: u64,
    cr2: u64,
    cr8: u64,
    pkru: u32,
    /// `(msr, value)`: written with WRMSR and read back with RDMSR.
    msrs: [(u32, u64); 17],
    /// GS.base after the SWAPGS that follows the writes (the KERNEL_GS_BASE written).
    swapped_gs: u64,
    /// KERNEL_GS_BASE after that SWAPGS (the GS_BASE written).
    swapped_kgs: u64,
}

/// The reset state (SDM vol. 3A table 10-1; the hypervisor's MSR table).
const RESET: State = State {
    dr: [0; 4],
    dr6: 0xFFFF_0FF0,
    dr7: 0x400,
    cr2: 0,
    cr8: 0,
    pkru: 0,
    msrs: [
        (STAR, 0),
        (LSTAR, 0),
        (CSTAR, 0),
        (SFMASK, 0),
        (SYSENTER_CS, 0),
        (SYSENTER_ESP, 0),
        (SYSENTER_EIP, 0),
        (FS_BASE, 0),
        (GS_BASE, 0),
        (KERNEL_GS_BASE, 0),
        (TSC_AUX, 0),
        (PAT, 0x0007_0406_0007_0406),
        // LME, LMA, NXE: the long-mode guest's EFER, SVME hidden.
        (EFER, 0xD00),
        (APIC_BASE, 0xFEE0_0100),
        (MISC_ENABLE, 0x1801),
        (MTRR_DEF_TYPE, 0),
        (MTRR_PHYS_BASE0, 0),
    ],
    swapped_gs: 0,
    swapped_kgs: 0,
};

/// Distinct values for guest `k` (1, 2, 3, ...).
fn values(k: u64) -> State {
    let addr = |n: u64| 0xFFFF_8000_0000_0000 | (k << 32) | (n << 12);
    let gs = addr(0x10);
    let kgs = addr(0x11);
    State {
        dr: [addr(1), addr(2), addr(3), addr(4)],
        // B0-B3 (bits 0-3) differ per guest.
        dr6: 0xFFFF_0FF0 | (k & 0xF),
        // R/W and LEN fields of breakpoints 0-3 (bits 16-31), all enables clear.
        dr7: 0x400 | ((k & 0xFFFF) << 16),
        cr2: addr(5),
        cr8: k & 0xF,
        pkru: (k as u32) << 2,
        msrs: [
            (STAR, 0x0023_0010_0000_0000 | k),
            (LSTAR, addr(6)),
            (CSTAR, addr(7)),
            (SFMASK, 0x4700 | k),
            (SYSENTER_CS, 0x10 + k),
            (SYSENTER_ESP, addr(8)),
            (SYSENTER_EIP, addr(9)),
            (FS_BASE, addr(0xA)),
            (GS_BASE, gs),
            (KERNEL_GS_BASE, kgs),
            (TSC_AUX, k),
            // WB, WC, UC-, UC, WT, WP, ... : valid types in another order.
            (PAT, 0x0005_0406_0100_0406 | (k & 1) << 8),
            // SCE toggled by odd guests.
            (EFER, 0xD00 | (k & 1)),
            (APIC_BASE, 0xFEC0_0100 | (k << 12)),
            (MISC_ENABLE, 0x1801 | (k << 32)),
            (MTRR_DEF_TYPE, 0xC00 | if k & 1 == 0 { 6 } else { 4 }),
            (MTRR_PHYS_BASE0, (k << 24) | 6),
        ],
        swapped_gs: kgs,
        swapped_kgs: gs,
    }
}

/// Whether the virtual CPU offers PKU (CPUID.7.0:ECX bit 3).
fn has_pku() -> bool {
    cpu::cpuid(0, 0)[0] >= 7 && cpu::cpuid(7, 0)[2] & (1 << 3) != 0
}

/// Writes `s` into the vCPU, then swaps GS.base and KERNEL_GS_BASE with SWAPGS.
fn write_state(s: &State) {
    cpu::write_dr0(s.dr[0]);
    cpu::write_dr1(s.dr[1]);
    cpu::write_dr2(s.dr[2]);
    cpu::write_dr3(s.dr[3]);
    cpu::write_dr6(s.dr6);
    cpu::write_dr7(s.dr7);
    cpu::write_cr2(s.cr2);
    cpu::write_cr8(s.cr8);
    if has_pku() {
        cpu::set_cr4_bits(CR4_PKE);
        cpu::wrpkru(s.pkru);
    }
    for (msr, v) in s.msrs {
        cpu::wrmsr(msr, v);
    }
    cpu::swapgs();
}

/// Counts (and names) the items of the vCPU that differ from `s` (SWAPGS applied).
fn check_state(who: &str, s: &State) -> u32 {
    let mut errors = 0;
    let mut expect = |what: &str, got: u64, want: u64| {
        if got != want {
            println!("{who}: {what} is {got:#x}, expected {want:#x}");
            errors += 1;
        }
    };
    expect("DR0", cpu::read_dr0(), s.dr[0]);
    expect("DR1", cpu::read_dr1(), s.dr[1]);
    expect("DR2", cpu::read_dr2(), s.dr[2]);
    expect("DR3", cpu::read_dr3(), s.dr[3]);
    expect("DR6", cpu::read_dr6(), s.dr6);
    expect("DR7", cpu::read_dr7(), s.dr7);
    expect("CR2", cpu::read_cr2(), s.cr2);
    expect("CR8", cpu::read_cr8(), s.cr8);
    if has_pku() && cpu::read_cr4() & CR4_PKE != 0 {
        expect("PKRU", u64::from(cpu::rdpkru()), u64::from(s.pkru));
    }
    if !on_intel() {
        // SVM runs RDTSCP natively: the CPU's TSC_AUX must be this guest's.
        let aux = s
            .msrs
            .iter()
            .find(|(m, _)| *m == TSC_AUX)
            .map_or(0, |(_, v)| *v);
        expect("TSC_AUX seen by RDTSCP", u64::from(cpu::rdtscp_aux()), aux);
    }
    for (msr, v) in s.msrs {
        let want = match msr {
            GS_BASE => s.swapped_gs,
            KERNEL_GS_BASE => s.swapped_kgs,
            _ => v,
        };
        expect(msr_name(msr), cpu::rdmsr(msr), want);
    }
    errors
}

/// The name of an MSR this scenario uses.
fn msr_name(msr: u32) -> &'static str {
    match msr {
        APIC_BASE => "APIC_BASE",
        SYSENTER_CS => "SYSENTER_CS",
        SYSENTER_ESP => "SYSENTER_ESP",
        SYSENTER_EIP => "SYSENTER_EIP",
        MISC_ENABLE => "MISC_ENABLE",
        PAT => "PAT",
        MTRR_DEF_TYPE => "MTRR_DEF_TYPE",
        MTRR_PHYS_BASE0 => "MTRR_PHYSBASE0",
        EFER => "EFER",
        STAR => "STAR",
        LSTAR => "LSTAR",
        CSTAR => "CSTAR",
        SFMASK => "SFMASK",
        FS_BASE => "FS_BASE",
        GS_BASE => "GS_BASE",
        KERNEL_GS_BASE => "KERNEL_GS_BASE",
        TSC_AUX => "TSC_AUX",
        _ => "an MSR",
    }
}

/// The virtual CPU: the hypervisor's leaves, no nested virtualization, no host SVM leaf.
fn check_cpuid(who: &str) {
    let [max, b, c, d] = cpu::cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    sig[..4].copy_from_slice(&b.to_le_bytes());
    sig[4..8].copy_from_slice(&c.to_le_bytes());
    sig[8..].copy_from_slice(&d.to_le_bytes());
    check!(
        &sig == b"stage2hv\0\0\0\0",
        "{who}: hypervisor signature {sig:?}"
    );
    check!(
        max >= 0x4000_0001,
        "{who}: highest hypervisor leaf {max:#x}"
    );
    let ecx1 = cpu::cpuid(1, 0)[2];
    check!(ecx1 & (1 << 31) != 0, "{who}: no hypervisor bit");
    check!(ecx1 & (1 << 5) == 0, "{who}: VMX offered");
    check!(
        cpu::cpuid(0x8000_0001, 0)[2] & (1 << 2) == 0,
        "{who}: SVM offered"
    );
    check!(
        cpu::cpuid(0x8000_000A, 0) == [0; 4],
        "{who}: the host's SVM leaf shows"
    );
    // The same leaf through a CS-prefixed CPUID (3 bytes to skip).
    check!(
        cpu::cpuid_cs_prefixed(0x4000_0000) == [max, b, c, d],
        "{who}: CS-prefixed CPUID differs"
    );
    // A REX.W RDMSR reads the same MSR (3 bytes to skip).
    check!(
        cpu::rdmsr_rex_w(0x1B) == cpu::rdmsr(0x1B),
        "{who}: REX.W RDMSR differs"
    );
}

fn scenario() {
    let vendor = if on_intel() { "VMX" } else { "SVM" };
    check_cpuid("first");
    let errors = check_state("fresh guest", &RESET);
    check!(
        errors == 0,
        "a fresh guest saw {errors} item(s) not at reset"
    );
    println!(
        "reset state and virtual CPUID as expected ({vendor}, PKU {})",
        has_pku()
    );
    // The TSC_AUX slot of `values` tells the instances apart: 1 for the parent.
    write_state(&values(1));
    let id = clone_guest();
    check!(id >= 0, "clone failed: {id}");
    let (k, who) = if id == 0 { (3, "child") } else { (2, "parent") };
    let errors = check_state(who, &values(1));
    check!(
        errors == 0,
        "{who}: {errors} item(s) differ right after the clone"
    );
    let mine = values(k);
    write_state(&mine);
    for round in 0..4u64 {
        let errors = yield_keeps_registers((k << 56) ^ (round << 40));
        check!(
            errors == 0,
            "{who}: {errors} register(s) changed across a yield in round {round}"
        );
        let errors = check_state(who, &mine);
        check!(
            errors == 0,
            "{who}: {errors} state item(s) changed across a yield in round {round}"
        );
    }
    yield_now();
    println!("{who}: every register and state item survived 4 switches");
}

guest_images::guest_main!(scenario);
